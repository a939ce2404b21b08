"""The domain check measured: held-out scenes vs real photos, and what a flag says about captions.

    python -m capbatch.training.scenes --out /tmp/dc/scenes10k --n 10000 --seed 0
    python benchmarks/domain_check.py lists --scenes /tmp/dc/scenes10k --out /tmp/dc/lists
    python benchmarks/domain_check.py study --scenes /tmp/dc/scenes10k --lists /tmp/dc/lists \
        --out-json benchmarks/results/domain_study.json
    python benchmarks/domain_check.py measure --scenes /tmp/dc/scenes10k --lists /tmp/dc/lists \
        --out-json benchmarks/results/domain_check.json

`lists` writes the image lists (train: a seeded subset the statistics are fitted
on; val: sets the threshold; test, test_novel: held out). With the default
model's own dataset (--n 10000 --seed 0) these are its own splits, so test and
test_novel were never trained on. `study` compares poolings and ranks by
fitting on train and calibrating on val (docs/domain-check.md); `measure`
scores every set with the BUNDLE's shipped statistics and relates the flag to
caption correctness (facts_match against scenes.jsonl). Every image goes
through the runtime's decoding and the bundle's ONNX encoder; encoder outputs
are cached per set under --cache so reruns are cheap.

Real photographs come from tests/data and the sample images bundled inside
scikit-image (never downloaded); `drawn` are simple shape pictures drawn here
with Pillow, unlike the scenes generator's.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from capbatch.training.scenes import (
    explain_mismatch,
    load_scene_facts,
    load_splits,
    parse_caption,
)
from PIL import Image, ImageDraw

from capbatch.bundle import load_bundle
from capbatch.decoding import DecodingOptions, search
from capbatch.domain import DomainCheck, fit_domain_check
from capbatch.errors import InputDecodeError
from capbatch.image_decode import decode_image

REPO = Path(__file__).resolve().parents[1]
FIT_IMAGES = 2000
# Real photographs scikit-image ships in its wheel (no download); `cat` is chelsea again.
SKIMAGE_PHOTOS = (
    "astronaut", "camera", "chelsea", "coffee", "rocket", "brick", "grass", "gravel", "coins",
    "moon", "clock", "page", "text", "cell", "immunohistochemistry", "hubble_deep_field",
    "retina", "microaneurysms",
)  # fmt: skip
# Synthetic pictures scikit-image ships: not photos, reported apart.
SKIMAGE_GRAPHICS = (
    "checkerboard", "binary_blobs", "horse", "colorwheel", "logo", "shepp_logan_phantom",
)  # fmt: skip
CROPS_PER_PHOTO = 4
CAPTIONED_SETS = ("test", "test_novel", "samples", "drawn")
STUDY_POOLINGS = ("mean", "max", "mean_max", "mean_std", "h0", "mean_h0")
STUDY_RANKS = (32, 64, 128, 256)  # and every direction (the exact shrunk covariance) for "mean"


# --------------------------------------------------------------------------- image sets


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _as_uint8(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    array = array.astype(np.float64)
    span = array.max() - array.min()
    return np.round((array - array.min()) / (span or 1.0) * 255).astype(np.uint8)


def skimage_arrays(names) -> dict[str, np.ndarray]:
    import skimage.data

    arrays = {}
    for name in names:
        value = getattr(skimage.data, name)()
        arrays[name] = _as_uint8(value)
    left, right, _ = skimage.data.stereo_motorcycle()
    if names is SKIMAGE_PHOTOS:
        arrays["motorcycle_left"], arrays["motorcycle_right"] = left, right
    return arrays


def photo_items() -> dict[str, bytes]:
    items = {"tests/data/cat_chelsea.jpg": (REPO / "tests/data/cat_chelsea.jpg").read_bytes()}
    items.update({name: _png(a) for name, a in skimage_arrays(SKIMAGE_PHOTOS).items()})
    return items


def photo_crop_items(seed: int = 0) -> dict[str, bytes]:
    """Seeded crops (40-80 % of each side) of every photo: more photo-like inputs."""
    rng = random.Random(seed)
    items = {}
    for name, array in skimage_arrays(SKIMAGE_PHOTOS).items():
        height, width = array.shape[:2]
        for i in range(CROPS_PER_PHOTO):
            h, w = int(height * rng.uniform(0.4, 0.8)), int(width * rng.uniform(0.4, 0.8))
            top, left = rng.randrange(height - h + 1), rng.randrange(width - w + 1)
            items[f"{name}#crop{i}"] = _png(np.ascontiguousarray(array[top : top + h, left : left + w]))
    return items


def face_items() -> dict[str, bytes]:
    """Labeled Faces in the Wild: 200 small grey face photos bundled with scikit-image."""
    import skimage.data

    return {f"lfw_{i:03d}": _png(_as_uint8(face)) for i, face in enumerate(skimage.data.lfw_subset())}


def graphic_items() -> dict[str, bytes]:
    return {name: _png(a) for name, a in skimage_arrays(SKIMAGE_GRAPHICS).items()}


DRAWN_STYLES = ("white", "muted", "outline", "wide")
_PURE = {
    "red": (220, 20, 20), "green": (20, 150, 40), "blue": (30, 60, 220),
    "yellow": (240, 220, 30), "orange": (250, 130, 10), "black": (20, 20, 20),
}  # fmt: skip


def draw_shapes(rng: random.Random, style: str) -> tuple[Image.Image, list[tuple[str, str]]]:
    """1-3 circles/squares/triangles drawn plainly (not the scenes generator's code);
    returns the picture and its (colour, shape) objects. Shapes may overlap."""
    size = (480, 320) if style == "wide" else (256, 256)
    background = (255, 255, 255) if style in ("white", "outline", "wide") else (190, 175, 150)
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    objects = []
    for _ in range(rng.randint(1, 3)):
        r = rng.randint(18, 50)
        x, y = rng.randint(r, size[0] - r), rng.randint(r, size[1] - r)
        name = rng.choice(sorted(_PURE))
        fill, outline = (None, _PURE[name]) if style == "outline" else (_PURE[name], None)
        shape = rng.choice(("circle", "square", "triangle"))
        if shape == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill, outline=outline, width=4)
        elif shape == "square":
            draw.rectangle((x - r, y - r, x + r, y + r), fill=fill, outline=outline, width=4)
        else:
            points = [(x, y - r), (x + r, y + r), (x - r, y + r)]
            draw.polygon(points, fill=fill, outline=outline, width=4)
        objects.append((name, shape))
    return image, sorted(objects)


def drawn_pictures(per_style: int = 20, seed: int = 0) -> dict[str, tuple[bytes, list]]:
    rng = random.Random(seed)
    pictures = {}
    for style in DRAWN_STYLES:
        for i in range(per_style):
            image, objects = draw_shapes(rng, style)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            pictures[f"drawn_{style}_{i:02d}"] = (buffer.getvalue(), objects)
    return pictures


def drawn_items() -> dict[str, bytes]:
    return {key: data for key, (data, _) in drawn_pictures().items()}


def drawn_objects_right(keys, captions, distances: np.ndarray, threshold: float) -> dict:
    """Per style: in-domain share, and how often the caption names exactly the drawn
    colours and shapes (sizes and relations are not checked)."""
    truth = {key: objects for key, (_, objects) in drawn_pictures().items()}
    result = {}
    for style in DRAWN_STYLES:
        rows = [(k, c, d) for k, c, d in zip(keys, captions, distances) if f"_{style}_" in str(k)]
        right = [
            (stated := parse_caption(str(c))) is not None
            and list(stated.kinds) == [tuple(o) for o in truth[str(k)]]
            for k, c, _ in rows
        ]
        result[style] = {
            "images": len(rows),
            "in_domain": round(float(np.mean([d <= threshold for *_, d in rows])), 4),
            "objects_right": round(float(np.mean(right)), 4),
            "examples": [str(c) for _, c, _ in rows[:3]],
        }
    return result


def scene_items(scenes: Path, lists: Path, split: str) -> dict[str, bytes]:
    names = (lists / f"{split}.txt").read_text(encoding="utf-8").split()
    return {Path(name).name: (lists / name).read_bytes() for name in names}


# --------------------------------------------------------------------------- encoding


def encode_set(bundle, items: dict[str, bytes], with_captions: bool, batch: int = 16) -> dict:
    """Encoder outputs pooled every way the study compares (+ greedy captions if asked)."""
    keys, parts, captions = [], [], []
    options = DecodingOptions(beam_size=1, max_len=bundle.max_len)
    names = list(items)
    for start in range(0, len(names), batch):
        chunk, pixels = [], []
        for name in names[start : start + batch]:
            try:
                pixels.append(decode_image(items[name], bundle.preprocess).pixels)
                chunk.append(name)
            except InputDecodeError as exc:
                print(f"skipping {name}: {exc}", file=sys.stderr)
        encoded = bundle.encode(np.stack(pixels))
        f = encoded.features.astype(np.float64)  # (B, L, D)
        parts.append(
            {"mean": f.mean(1), "max": f.max(1), "std": f.std(1), "h0": encoded.h0.astype(np.float64)}
        )
        keys += chunk
        if with_captions:
            hypotheses = search(bundle.step_model(encoded), options)
            captions += [bundle.vocab.text(h.tokens) for h in hypotheses]
    pooled = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    return {"keys": keys, "captions": captions, **pooled}


def study_pooled(data: dict, pooling: str) -> np.ndarray:
    combos = {
        "mean": ("mean",), "max": ("max",), "mean_max": ("mean", "max"),
        "mean_std": ("mean", "std"), "h0": ("h0",), "mean_h0": ("mean", "h0"),
    }  # fmt: skip
    return np.concatenate([data[part] for part in combos[pooling]], axis=1)


def load_sets(args, names: list[str]) -> dict[str, dict]:
    """Encoded sets, from the cache when present (keyed by bundle model id)."""
    bundle = load_bundle(args.bundle, "cpu", warn=lambda message: None)
    cache = Path(args.cache) / bundle.model_id
    cache.mkdir(parents=True, exist_ok=True)
    builders: dict[str, Callable[[], dict[str, bytes]]] = {
        "photos": photo_items,
        "photo_crops": photo_crop_items,
        "faces": face_items,
        "graphics": graphic_items,
        "drawn": drawn_items,
        "samples": lambda: {p.name: p.read_bytes() for p in sorted((REPO / "samples").glob("*.jpg"))},
    }
    sets = {}
    for name in names:
        items = builders[name]() if name in builders else scene_items(args.scenes, args.lists, name)
        # Keyed by the images' bytes too: a changed set is encoded again, never mixed up.
        digest = hashlib.sha256()
        for key, data in items.items():
            digest.update(key.encode() + hashlib.sha256(data).digest())
        path = cache / f"{name}-{digest.hexdigest()[:12]}.npz"
        if not path.is_file():
            print(f"encoding {name}: {len(items)} images", file=sys.stderr, flush=True)
            data = encode_set(bundle, items, with_captions=name in CAPTIONED_SETS)
            np.savez(path, **{k: np.asarray(v) for k, v in data.items()})
        with np.load(path, allow_pickle=False) as stored:
            sets[name] = {k: stored[k] for k in stored.files}
    return sets


# --------------------------------------------------------------------------- reports

SCORED_SETS = ("test", "test_novel", "samples", "photos", "photo_crops", "faces", "graphics", "drawn")


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(an outside distance > an inside distance), ties counting half."""
    both = np.concatenate([inside, outside])
    ranks = np.argsort(np.argsort(both, kind="stable"), kind="stable") + 1.0
    # Average ranks over ties so equal distances count half.
    for value in np.unique(both):
        tied = both == value
        ranks[tied] = ranks[tied].mean()
    outside_ranks = ranks[len(inside) :].sum()
    n_out, n_in = len(outside), len(inside)
    return float((outside_ranks - n_out * (n_out + 1) / 2) / (n_out * n_in))


def flag_rates(distances: dict[str, np.ndarray], threshold: float) -> dict[str, float]:
    return {name: round(float((d > threshold).mean()), 4) for name, d in distances.items()}


def drawn_rates(keys, distances: np.ndarray, threshold: float) -> dict[str, float]:
    """Share flagged per drawing style (keys are drawn_<style>_<i>)."""
    styles = np.array([str(k).split("_")[1] for k in keys])
    return {s: round(float((distances[styles == s] > threshold).mean()), 4) for s in DRAWN_STYLES}


def photo_margin(distances: dict[str, np.ndarray], threshold: float) -> float:
    """The closest real photo's distance over the threshold (> 1: every photo flagged)."""
    photos = np.concatenate([distances[n] for n in ("photos", "photo_crops", "faces")])
    return round(float(photos.min() / threshold), 3)


def study(args) -> dict:
    sets = load_sets(args, ["train", "val", *SCORED_SETS])
    rows = []
    for pooling in STUDY_POOLINGS:
        fit, val = study_pooled(sets["train"], pooling), study_pooled(sets["val"], pooling)
        ranks = STUDY_RANKS + ((fit.shape[1],) if pooling == "mean" else ())
        for rank in ranks:
            check = fit_domain_check(fit, val, pooling="mean", rank=rank)
            d = {name: check.distances(study_pooled(sets[name], pooling)) for name in SCORED_SETS}
            photos = np.concatenate([d["photos"], d["photo_crops"], d["faces"]])
            rows.append(
                {
                    "pooling": pooling,
                    "width": fit.shape[1],
                    "rank": check.basis.shape[1],
                    "stats_kib": round(len(check.to_bytes()) / 1024),
                    "shrinkage": round(check.shrinkage, 4),
                    "flagged": flag_rates(d, check.threshold),
                    "drawn": drawn_rates(sets["drawn"]["keys"], d["drawn"], check.threshold),
                    "photo_margin": photo_margin(d, check.threshold),
                    "auroc_test_vs_photos": round(auroc(d["test"], photos), 4),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return {"fit_images": len(sets["train"]["keys"]), "rows": rows}


def caption_accuracy(data: dict, facts: dict, distances: np.ndarray, threshold: float) -> dict:
    right = np.array([explain_mismatch(c, facts[k]) is None for k, c in zip(data["keys"], data["captions"])])
    flagged = distances > threshold
    quintiles = np.quantile(distances, [0.2, 0.4, 0.6, 0.8])
    bins = np.digitize(distances, quintiles)
    return {
        "images": int(len(right)),
        "accuracy": round(float(right.mean()), 4),
        "in_domain": {"n": int((~flagged).sum()), "accuracy": _mean(right[~flagged])},
        "flagged": {"n": int(flagged.sum()), "accuracy": _mean(right[flagged])},
        "accuracy_by_distance_quintile": [_mean(right[bins == q]) for q in range(5)],
        "flagged_keys": [str(k) for k, f in zip(data["keys"], flagged) if f],
    }


def _mean(values: np.ndarray) -> float | None:
    return round(float(values.mean()), 4) if len(values) else None


def measure(args) -> dict:
    check = DomainCheck.from_bundle(args.bundle or _default_bundle())
    if check is None:
        raise SystemExit("the bundle carries no domain statistics")
    sets = load_sets(args, list(SCORED_SETS))
    distances = {}
    for name in SCORED_SETS:
        features_pooled = study_pooled(sets[name], check.pooling)
        distances[name] = check.distances(features_pooled)
    facts = load_scene_facts(args.scenes)
    facts.update(load_scene_facts(REPO / "samples"))
    photos = np.concatenate([distances["photos"], distances["photo_crops"], distances["faces"]])
    result = {
        "check": check.describe(),
        "images": {name: len(d) for name, d in distances.items()},
        "flagged": flag_rates(distances, check.threshold),
        "drawn": drawn_objects_right(
            sets["drawn"]["keys"], sets["drawn"]["captions"], distances["drawn"], check.threshold
        ),
        "photo_margin": photo_margin(distances, check.threshold),
        "auroc_test_vs_photos": round(auroc(distances["test"], photos), 4),
        "distance_quantiles": {
            name: [round(float(q), 1) for q in np.quantile(d, [0.0, 0.5, 0.99, 1.0])]
            for name, d in distances.items()
        },
        "unflagged": {
            name: [str(k) for k, d in zip(sets[name]["keys"], distances[name]) if d <= check.threshold]
            for name in ("photos", "photo_crops", "faces", "graphics")
        },
        "captions": {
            name: caption_accuracy(sets[name], facts, distances[name], check.threshold)
            for name in ("test", "test_novel", "samples")
        },
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    return result


def _default_bundle() -> Path:
    from capbatch.bundle import DEFAULT_BUNDLE_DIR

    return DEFAULT_BUNDLE_DIR


def write_lists(args) -> dict:
    """train (a seeded FIT_IMAGES subset), val, test, test_novel as image-path lists."""
    splits = load_splits(args.scenes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = dict(splits)
    chosen["train"] = sorted(random.Random(0).sample(splits["train"], min(FIT_IMAGES, len(splits["train"]))))
    images = Path(args.scenes).resolve() / "images"
    for name, files in chosen.items():
        text = "".join(f"{images / f}\n" for f in files)
        (out / f"{name}.txt").write_text(text, encoding="utf-8")
    return {name: len(files) for name, files in chosen.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("lists", "study", "measure"))
    parser.add_argument("--scenes", type=Path, required=True, help="a scenes dataset directory")
    parser.add_argument("--lists", type=Path, help="where `lists` wrote the image lists")
    parser.add_argument("--out", type=Path, help="lists: output directory")
    parser.add_argument("--bundle", type=Path, help="bundle directory (default: the embedded one)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/capbatch-domain-cache"))
    parser.add_argument("--out-json", type=Path)
    args = parser.parse_args(argv)
    commands = {"lists": write_lists, "study": study, "measure": measure}
    result = commands[args.command](args)
    text = json.dumps(result, indent=1)
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
