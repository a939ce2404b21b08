"""`python -m capbatch.training.scenes` (and `capbatch-train scenes`): generate the
seeded scenes dataset (training/scenes.py) from the command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from capbatch.errors import UsageError

from .scenes import CAPTION_MODES, STYLES, generate_dataset, load_splits
from .scenes_draw import REFERENCE_SIZE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m capbatch.training.scenes",
        description="Generate the seeded scenes dataset (Flickr8k layout).",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--n", type=int, default=10_000, help="number of scenes (images)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes drawing images")
    parser.add_argument("--image-size", type=int, default=REFERENCE_SIZE)
    parser.add_argument("--format", choices=("jpg", "png"), default="jpg", dest="image_format")
    parser.add_argument("--overwrite", action="store_true", help="replace existing scene images")
    parser.add_argument(
        "--style", choices=STYLES, default="v1", help="v2: domain-randomised (docs/scenes.md)"
    )
    parser.add_argument(
        "--test-renderer",
        type=int,
        default=0,
        dest="renderer_scenes",
        help="also draw N test_renderer scenes with the independent renderer",
    )
    parser.add_argument(
        "--only",
        type=lambda text: tuple(part for part in text.split(",") if part),
        default=None,
        help="write only these comma-separated splits (e.g. test,test_renderer)",
    )
    parser.add_argument(
        "--captions",
        choices=CAPTION_MODES,
        default="varied",
        help="varied: 5 phrasings per image; canonical: one, the left or upper object first",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        out = generate_dataset(
            args.out,
            n=args.n,
            seed=args.seed,
            image_size=args.image_size,
            workers=args.workers,
            image_format=args.image_format,
            overwrite=args.overwrite,
            style=args.style,
            renderer_scenes=args.renderer_scenes,
            only=args.only,
            captions=args.captions,
        )
    except (UsageError, ValueError) as exc:
        print(f"scenes: error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    splits = load_splits(out)
    sizes = ", ".join(f"{name} {len(images)}" for name, images in splits.items())
    written = sum(len(images) for images in splits.values())
    print(
        f"wrote {written} scenes to {out} in {elapsed:.1f} s "
        f"({written / max(elapsed, 1e-9):.0f} images/s); {sizes}"
    )
    return 0

