"""Gate reduced-precision encoders on measured caption agreement (torch-free).

Agreement = greedy tokens identical to the reference (onnxruntime f32 running the
same bundle) image by image, on held-out images of every split: the scenes'
val, test and test_novel splits (`python -m capbatch.training.scenes`) and
samples/. Thresholds are issue 17's goals: >= 99 % on test, >= 97 % (export's
VARIANT_MIN_AGREEMENT) on every other split.

A runtime precision of the same graph (OpenVINO f32/bf16) is recorded in the
bundle's manifest under `runtime_agreement` and checked by the loader
(capbatch/encoder_runtime.py); a variant graph (export/int8_static.py) is its
own bundle whose manifest records the same per-split figures.

    python -m capbatch.export.precision --bundle capbatch/models/default \\
        --scenes /tmp/pv/scenes --samples samples --runtime openvino --precision bf16 --record
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from capbatch.bundle import Bundle, load_bundle
from capbatch.close_calls import caption_batch
from capbatch.decoding import DecodingOptions, Hypothesis
from capbatch.encoder_runtime import AGREEMENT_KEY, agreement_key
from capbatch.errors import CapbatchError, ExportError, UsageError
from capbatch.manifest import MANIFEST_FILE, read_manifest
from capbatch.output.durable import write_file
from capbatch.preprocess import PreprocessSpec, preprocess_image
from capbatch.providers import parse_encoder_runtime
from capbatch.sources import IMAGE_EXTENSIONS

from .specs import VARIANT_MIN_AGREEMENT

HELD_OUT_SPLITS = ("val", "test", "test_novel")
MIN_AGREEMENT = {"test": 0.99}  # every other split: VARIANT_MIN_AGREEMENT
EXAMPLES = 5  # disagreements kept in a record, to read what changed
BATCH = 32


class AgreementError(ExportError):
    """A variant or runtime precision changes too many captions."""


def min_agreement(split: str) -> float:
    return MIN_AGREEMENT.get(split, VARIANT_MIN_AGREEMENT)


@dataclass(frozen=True)
class ImageSet:
    """One split's images, decoded and resized once, shared by every runtime measured."""

    name: str
    files: tuple[str, ...]
    pixels: np.ndarray  # (N, S, S, 3) uint8


def load_images(paths: Sequence[Path], spec: PreprocessSpec) -> np.ndarray:
    arrays = []
    for path in paths:
        with Image.open(path) as image:
            arrays.append(preprocess_image(image, spec))
    return np.stack(arrays) if arrays else np.zeros((0, spec.size, spec.size, 3), np.uint8)


def held_out_sets(
    spec: PreprocessSpec,
    scenes: Path | None,
    samples: Path | None = None,
    *,
    splits: Sequence[str] = HELD_OUT_SPLITS,
    limit: int | None = None,
) -> list[ImageSet]:
    """The held-out images: each scenes split (first `limit` of each), then samples/."""
    sets = []
    if scenes is not None:
        listed = json.loads((Path(scenes) / "splits.json").read_text(encoding="utf-8"))
        for split in splits:
            names = tuple(listed[split][:limit])
            paths = [Path(scenes) / "images" / name for name in names]
            sets.append(ImageSet(split, names, load_images(paths, spec)))
    if samples is not None:
        paths = sorted(p for p in Path(samples).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        sets.append(ImageSet("samples", tuple(p.name for p in paths), load_images(paths, spec)))
    return sets


def greedy_hypotheses(
    bundle: Bundle, pixels: np.ndarray, *, track_margins: bool = False, batch: int = BATCH
) -> tuple[list[Hypothesis], int]:
    """Greedy captions as the Captioner makes them (close calls redone when the bundle
    has a fallback margin); also returns how many were redone."""
    options = DecodingOptions(
        max_len=bundle.max_len, track_margins=track_margins or bool(bundle.fallback_margin)
    )
    hypotheses: list[Hypothesis] = []
    redone = 0
    for start in range(0, pixels.shape[0], batch):
        found, _, count = caption_batch(bundle, pixels[start : start + batch], options)
        hypotheses += found
        redone += count
    return hypotheses, redone


def greedy_tokens(bundle: Bundle, pixels: np.ndarray, batch: int = BATCH) -> list[tuple[int, ...]]:
    return [tuple(h.tokens) for h in greedy_hypotheses(bundle, pixels, batch=batch)[0]]


def choose_fallback_margin(margins: Sequence[float], budget: float) -> float:
    """The margin that sends at most `budget` of these captions (val's) back to f32.

    0.0 (no fallback) when the budget allows none. The captions redone are those
    strictly below the margin, so it is the next margin after the budget's share.
    """
    if not 0 <= budget < 1:
        raise UsageError(f"--fallback-budget must be in [0, 1), got {budget}")
    ordered = sorted(float(m) for m in margins)
    allowed = int(budget * len(ordered))
    if allowed == 0 or not ordered:
        return 0.0
    return ordered[allowed] if allowed < len(ordered) else ordered[-1]


def facts_right(bundle: Bundle, tokens: Sequence[tuple[int, ...]], files, truth) -> int:
    """How many captions state their scene's true facts (capbatch.training.scenes' parser)."""
    from capbatch.training.scenes import explain_mismatch

    return sum(
        explain_mismatch(bundle.vocab.text(t), truth[name]) is None
        for t, name in zip(tokens, files)
    )


def measure_agreement(
    reference: Bundle, candidate: Bundle, sets: Sequence[ImageSet], truth: Mapping | None = None
) -> dict:
    """Per split: images, identical captions, agreement, its threshold, a few differences.

    With truth (image name -> scene facts) also how many captions of each state the
    facts right: whether the changed captions are paraphrases or errors.
    """
    splits = {}
    for image_set in sets:
        ref = greedy_tokens(reference, image_set.pixels)
        found, redone = greedy_hypotheses(candidate, image_set.pixels)
        got = [tuple(h.tokens) for h in found]
        differ = [i for i, (a, b) in enumerate(zip(ref, got)) if a != b]
        n = len(ref)
        agreement = (n - len(differ)) / n if n else 0.0
        facts = {}
        if truth is not None and all(name in truth for name in image_set.files):
            facts["facts_right"] = {
                "reference": facts_right(reference, ref, image_set.files, truth),
                "candidate": facts_right(candidate, got, image_set.files, truth),
            }
        splits[image_set.name] = {
            **facts,
            "images": n,
            "same": n - len(differ),
            "agreement": round(agreement, 4),
            "min_agreement": min_agreement(image_set.name),
            "passed": n > 0 and agreement >= min_agreement(image_set.name),
            "close_calls": redone,  # captions redone by the reference encoder
            "examples": [
                {
                    "image": image_set.files[i],
                    "reference": reference.vocab.text(ref[i]),
                    "candidate": candidate.vocab.text(got[i]),
                }
                for i in differ[:EXAMPLES]
            ],
        }
    return splits


def failing_splits(splits: Mapping[str, Mapping]) -> list[str]:
    return [name for name, split in splits.items() if not split["passed"]]


def gate(what: str, splits: Mapping[str, Mapping], force: bool) -> bool:
    """True when every split passes; AgreementError naming the failures unless force."""
    if not splits:  # nothing measured is no evidence, forced or not
        raise AgreementError(f"{what}: no held-out images were measured")
    failing = failing_splits(splits)
    if failing and not force:
        detail = ", ".join(
            f"{name} {splits[name]['agreement']:.1%} < {splits[name]['min_agreement']:.0%}"
            for name in failing
        )
        raise AgreementError(f"{what} changes greedy captions: {detail}; refused")
    return not failing


def write_manifest_atomic(bundle_dir: Path, manifest: dict) -> None:
    """Replace manifest.json whole: a crash leaves the old or the new one, never half."""
    write_file(Path(bundle_dir) / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")


def check_runtime_precision(
    bundle_dir: Path,
    runtime: str,
    precision: str,
    sets: Sequence[ImageSet],
    *,
    record: bool = False,
    force: bool = False,
    threads: int | None = None,
    truth: Mapping | None = None,
    fallback_budget: float = 0.0,
) -> dict:
    """Measure (runtime, precision) on bundle_dir against onnxruntime f32; record it if asked.

    fallback_budget > 0: the share of val's captions (the first set when there is no
    val) that may be redone at f32 sets the fallback margin (capbatch/close_calls.py),
    and the agreement is measured with it, as the Captioner will run. Without force a
    failing measurement raises AgreementError and records nothing; with force it is
    recorded as failing ("passed": false), which the loader refuses.
    """
    choice = parse_encoder_runtime(runtime, precision, "cpu")
    if not sets or not all(len(s.files) for s in sets):
        raise UsageError("no held-out images to measure on: pass --scenes and/or --samples")
    key = agreement_key(*choice)

    def candidate_bundle(margin: float) -> Bundle:
        return load_bundle(
            bundle_dir,
            device="cpu",
            intra_op_threads=threads,
            encoder_runtime=choice[0],
            precision=choice[1],
            require_agreement=False,
            fallback_margin=margin,
        )

    reference = load_bundle(bundle_dir, device="cpu", intra_op_threads=threads)
    plain = candidate_bundle(0.0)
    splits = measure_agreement(reference, plain, sets, truth)
    without = {name: split["agreement"] for name, split in splits.items()}
    margin = 0.0
    if fallback_budget:
        chooser = next((s for s in sets if s.name == "val"), sets[0])
        found, _ = greedy_hypotheses(plain, chooser.pixels, track_margins=True)
        margin = choose_fallback_margin([h.margin for h in found], fallback_budget)
    if margin:
        splits = measure_agreement(reference, candidate_bundle(margin), sets, truth)
    result = {
        "reference": "onnxruntime-f32",
        "encoder_sha256": reference.manifest.files[reference.manifest.encoder.file],
        "runtime_version": getattr(plain.encoder, "version", None),
        "effective_precision": getattr(plain.encoder, "effective_precision", None),
        "device": getattr(plain.encoder, "device_name", None),
        "fallback_budget": fallback_budget,
        "fallback_margin": margin,
        "agreement_without_fallback": without,
        "splits": splits,
        "passed": bool(splits) and not failing_splits(splits),
        "forced": bool(force and failing_splits(splits)),
    }
    if record:
        gate(f"the {key} encoder", splits, force)
        record_runtime_agreement(bundle_dir, key, result)
    return result


def record_runtime_agreement(bundle_dir: Path, key: str, result: Mapping) -> None:
    """Add or replace runtime_agreement[key] in the manifest; every other key kept."""
    manifest = dict(read_manifest(bundle_dir).raw)
    manifest[AGREEMENT_KEY] = {**manifest.get(AGREEMENT_KEY, {}), key: dict(result)}
    write_manifest_atomic(bundle_dir, manifest)


def table(splits: Mapping[str, Mapping], without: Mapping[str, float] | None = None) -> str:
    """The per-split agreement; with `without`, also the agreement with no fallback."""
    rows = [
        "| split | images | identical | agreement | min | passed | facts right (ref / cand) "
        "| redone at f32 | without fallback |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in splits.items():
        facts = s.get("facts_right")
        right = f"{facts['reference']} / {facts['candidate']}" if facts else "-"
        plain = f"{without[name]:.1%}" if without and name in without else "-"
        rows.append(
            f"| {name} | {s['images']} | {s['same']} | {s['agreement']:.1%} "
            f"| {s['min_agreement']:.0%} | {'yes' if s['passed'] else 'NO'} | {right} "
            f"| {s.get('close_calls', 0)} | {plain} |"
        )
    return "\n".join(rows)


def scene_truth(scenes: Path | None, samples: Path | None) -> dict | None:
    """image name -> true facts, where the folders are scenes (scenes.jsonl beside them)."""
    from capbatch.training.scenes import load_scene_facts

    truth = {}
    for folder in (scenes, samples):
        if folder is not None and (Path(folder) / "scenes.jsonl").is_file():
            truth.update(load_scene_facts(folder))
    return truth or None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--scenes", type=Path, help="scenes directory (splits.json, images/)")
    parser.add_argument("--samples", type=Path, help="a folder of held-out images")
    parser.add_argument("--runtime", default="openvino", choices=["onnxruntime", "openvino"])
    parser.add_argument("--precision", default="bf16", choices=["f32", "bf16"])
    parser.add_argument("--limit", type=int, help="images per scenes split (default all)")
    parser.add_argument("--threads", type=int, help="threads per session (default all cores)")
    parser.add_argument("--record", action="store_true", help="write it into the manifest")
    parser.add_argument("--force", action="store_true", help="record a failing measurement")
    parser.add_argument("--json", type=Path, help="also write the measurement here")
    parser.add_argument(
        "--fallback-budget",
        type=float,
        default=0.0,
        help="share of val captions that may be redone at f32 (close calls); 0 = none",
    )
    args = parser.parse_args(argv)
    try:
        spec = read_manifest(args.bundle).preprocess
        sets = held_out_sets(spec, args.scenes, args.samples, limit=args.limit)
        truth = scene_truth(args.scenes, args.samples)
        result = check_runtime_precision(
            args.bundle,
            args.runtime,
            args.precision,
            sets,
            record=args.record,
            force=args.force,
            threads=args.threads,
            truth=truth,
            fallback_budget=args.fallback_budget,
        )
    except CapbatchError as exc:
        print(f"capbatch: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, KeyError, ValueError) as exc:  # a scenes folder without its files
        print(f"capbatch: error: held-out images: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    margin = result["fallback_margin"]
    fallback = f", close calls below margin {margin:.4g} redone at f32" if margin else ""
    print(
        f"{args.runtime} {args.precision} vs onnxruntime f32 (greedy tokens identical{fallback}):"
    )
    print(table(result["splits"], result["agreement_without_fallback"]))
    for name, split in result["splits"].items():
        for example in split["examples"]:
            print(
                f"  {name} {example['image']}: {example['reference']!r} -> {example['candidate']!r}"
            )
    if args.json:
        write_file(args.json, json.dumps(result, indent=1) + "\n")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
