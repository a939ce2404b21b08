"""How right a shipped model is on each scenes split: the old generator, v2, the other renderer.

Draws the evaluation splits only (no training set): the old test and
test_novel splits of the default model's dataset (style v1, seed 0, the same
bytes its training run saw), the same splits drawn in style v2 (same facts,
domain-randomised drawing) and test_renderer (test-like facts drawn by the
independent renderer). Captions them through the runtime (capbatch.Captioner,
greedy unless --beam) and scores each caption with the scenes parser:
semantic accuracy (every stated fact right), the first error of the wrong ones,
accuracy per kind of scene, and counts on single-object scenes.

    python benchmarks/scene_splits_eval.py --work /tmp/scene-splits --out-json splits.json

Torch-free (onnxruntime, numpy, Pillow). --tiny draws 5 scenes per split.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from capbatch.training.scenes import (
    RENDERER_SPLIT,
    generate_dataset,
    load_scene_records,
    load_splits,
)
from capbatch.training.scenes_grammar import SceneFacts
from capbatch.training.scenes_parse import explain_mismatch, parse_caption

from capbatch.captioner import Captioner

# (label, style, split): v1 is what the shipped model was trained on.
EVAL_SPLITS = (
    ("v1 test", "v1", "test"),
    ("v1 test_novel", "v1", "test_novel"),
    ("v2 test", "v2", "test"),
    ("v2 test_novel", "v2", "test_novel"),
    ("test_renderer", "v2", RENDERER_SPLIT),
)
SPLIT_FRACTION = 0.05  # each evaluation split is 5 % of the dataset it belongs to


def draw_splits(work: Path, per_split: int, seed: int, workers: int) -> dict[str, Path]:
    """The evaluation splits' scenes, one folder per style (reused when already drawn)."""
    n = round(per_split / SPLIT_FRACTION)
    folders = {}
    for style in ("v1", "v2"):
        out = work / f"{style}-n{n}-seed{seed}"
        if not (out / "splits.json").is_file():
            generate_dataset(
                out,
                n=n,
                seed=seed,
                workers=workers,
                overwrite=True,
                style=style,
                renderer_scenes=per_split if style == "v2" else 0,
                only=("test", "test_novel") + ((RENDERER_SPLIT,) if style == "v2" else ()),
            )
        folders[style] = out
    return folders


def score(captions: list[str], records: list[dict]) -> dict:
    """Semantic accuracy, error kinds, accuracy per kind, and counts on single objects."""
    errors: Counter = Counter()
    per_kind: dict[str, list[int]] = {}
    single_counts: Counter = Counter()
    for caption, record in zip(captions, records, strict=True):
        reason = explain_mismatch(caption, SceneFacts.from_dict(record["facts"]))
        errors[reason or "ok"] += 1
        per_kind.setdefault(record["kind"], []).append(reason is None)
        if record["kind"] == "single":
            stated = parse_caption(caption)
            single_counts["unparsable" if stated is None else str(stated.count)] += 1
    singles = sum(single_counts.values())
    return {
        "images": len(records),
        "semantic_accuracy": errors["ok"] / len(records),
        "errors": dict(sorted(errors.items())),
        "accuracy_by_kind": {k: sum(v) / len(v) for k, v in sorted(per_kind.items())},
        "single_object_scenes": singles,
        "single_count_right": single_counts["1"] / singles if singles else None,
        "single_stated_counts": dict(sorted(single_counts.items())),
    }


def evaluate_split(captioner: Captioner, folder: Path, split: str) -> dict:
    records_by_name = {r["image"]: r for r in load_scene_records(folder)}
    names = load_splits(folder)[split]
    records = [records_by_name[name] for name in names]
    results = captioner.caption([folder / "images" / name for name in names])
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} images failed to caption: {failed[:3]}")
    result = score([r.caption for r in results], records)
    result["examples"] = [
        {"image": n, "caption": r.caption, "truth": rec["captions"][0]}
        for n, r, rec in list(zip(names, results, records))[:3]
    ]
    return result


def print_table(report: dict) -> None:
    print(f"{'split':<15} {'images':>6} {'semantic':>9} {'single=1':>9}  errors")
    for label, row in report["splits"].items():
        errors = ", ".join(f"{k} {v}" for k, v in row["errors"].items() if k != "ok")
        single = row["single_count_right"]
        single_text = "-" if single is None else f"{100 * single:.1f} %"
        print(
            f"{label:<15} {row['images']:>6} {100 * row['semantic_accuracy']:>7.1f} % "
            f"{single_text:>9}  {errors}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/scene-splits"))
    parser.add_argument("--model", default=None, help="bundle directory (default: the shipped one)")
    parser.add_argument("--per-split", type=int, default=500, help="scenes per split")
    parser.add_argument("--seed", type=int, default=0, help="0: the default model's dataset")
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="processes drawing scenes")
    parser.add_argument("--out-json", type=Path, default=None)
    parser.add_argument("--tiny", action="store_true", help="5 scenes per split (smoke test)")
    args = parser.parse_args(argv)
    per_split = 5 if args.tiny else args.per_split
    started = time.perf_counter()
    folders = draw_splits(args.work, per_split, args.seed, args.workers)
    drawn = time.perf_counter()
    captioner = Captioner(args.model, device="cpu", beam_size=args.beam)
    report = {
        "model_id": captioner.model_id,
        "beam": args.beam,
        "seed": args.seed,
        "per_split": per_split,
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "splits": {
            label: evaluate_split(captioner, folders[style], split)
            for label, style, split in EVAL_SPLITS
        },
    }
    report["seconds"] = {
        "draw": round(drawn - started, 1),
        "caption": round(time.perf_counter() - drawn, 1),
    }
    report["load_average"] = [round(v, 2) for v in os.getloadavg()]
    print_table(report)
    print(
        f"model {report['model_id']}, beam {args.beam}; {report['seconds']}; load {report['load_average']}"
    )
    if args.out_json:
        args.out_json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
