"""Fit a bundle's domain check on images and write it into the bundle.

The features come from the bundle's own ONNX encoder after the runtime's own
decoding and resizing (capbatch.image_decode), so the statistics describe exactly
what `capbatch caption` will score. Torch-free: onnxruntime, numpy, Pillow.

    python -m capbatch.export.domain_stats BUNDLE --images TRAIN [--calibration-images VAL]

TRAIN and VAL are image directories (searched recursively) or text files
listing one image path per line (relative paths are taken from the list's
folder). Without --calibration-images, a seeded fifth of TRAIN is held out to
set the threshold. The statistics file is added to the manifest's hashed files
and named by its `domain` entry; the rest of the manifest is kept as it is.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from capbatch.bundle import Bundle, Encoded, load_bundle
from capbatch.domain import (
    DEFAULT_POOLING,
    DEFAULT_QUANTILE,
    DEFAULT_RANK,
    MANIFEST_KEY,
    METHOD,
    POOLINGS,
    STATS_FILE,
    DomainCheck,
    fit_domain_check,
    pool,
)
from capbatch.errors import CapbatchError, InputDecodeError, UsageError
from capbatch.image_decode import decode_image
from capbatch.manifest import sha256_file, verify_bundle
from capbatch.output.durable import write_file

from .manifest import write_manifest

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
BATCH = 16  # the runtime's CPU encoder chunk (capbatch.bundle.ENCODER_CHUNK)
CALIBRATION_FRACTION = 0.2
MIN_FIT_IMAGES = 20


def image_paths(source: Path | str) -> list[Path]:
    """A directory (recursively, sorted) or a text file listing image paths."""
    source = Path(source)
    if source.is_dir():
        return sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if source.is_file():
        lines = source.read_text(encoding="utf-8").splitlines()
        return [source.parent / line.strip() for line in lines if line.strip()]
    raise UsageError(f"{source} is neither an image directory nor a list file")


def encoded_batches(
    bundle: Bundle, paths: Sequence[Path], batch: int = BATCH
) -> Iterator[tuple[list[Path], Encoded]]:
    """(paths that decoded, their encoder outputs) per batch; undecodable files are skipped."""
    for start in range(0, len(paths), batch):
        kept, pixels = [], []
        for path in paths[start : start + batch]:
            try:
                pixels.append(decode_image(Path(path).read_bytes(), bundle.preprocess).pixels)
                kept.append(Path(path))
            except (OSError, InputDecodeError) as exc:
                print(f"domain_stats: skipping {path}: {exc}", file=sys.stderr)
        if kept:
            yield kept, bundle.encode(np.stack(pixels))  # (B, S, S, 3) uint8 in


def pooled_features(
    bundle: Bundle, paths: Sequence[Path], pooling: str = DEFAULT_POOLING
) -> np.ndarray:
    """(N, P) pooled encoder features of the images that decode."""
    parts = [pool(encoded.features, pooling) for _, encoded in encoded_batches(bundle, paths)]
    if not parts:
        raise UsageError("none of the images could be decoded")
    return np.concatenate(parts)


def split_calibration(
    paths: Sequence[Path], fraction: float = CALIBRATION_FRACTION, seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """A seeded (fit, calibration) split of one image list."""
    shuffled = list(paths)
    random.Random(seed).shuffle(shuffled)
    held = max(1, round(len(shuffled) * fraction))
    return sorted(shuffled[held:]), sorted(shuffled[:held])


def check_image_counts(fit_paths: Sequence[Path], calibration_paths: Sequence[Path]) -> None:
    if len(fit_paths) < MIN_FIT_IMAGES:
        raise UsageError(f"need at least {MIN_FIT_IMAGES} fit images, got {len(fit_paths)}")
    if not calibration_paths:
        raise UsageError("need at least one calibration image")


def compute_domain_check(
    bundle: Bundle,
    fit_paths: Sequence[Path],
    calibration_paths: Sequence[Path],
    *,
    pooling: str = DEFAULT_POOLING,
    quantile: float = DEFAULT_QUANTILE,
    rank: int = DEFAULT_RANK,
) -> DomainCheck:
    check_image_counts(fit_paths, calibration_paths)
    fit = pooled_features(bundle, fit_paths, pooling)
    calibration = pooled_features(bundle, calibration_paths, pooling)
    try:
        return fit_domain_check(fit, calibration, pooling=pooling, quantile=quantile, rank=rank)
    except ValueError as exc:
        raise UsageError(f"cannot fit domain statistics: {exc}") from None


def write_domain_check(bundle_dir: Path | str, check: DomainCheck) -> dict:
    """Write the stats file into an intact bundle and list it, hashed, in its manifest.

    The bundle is verified first, so a tampered bundle is never re-blessed with
    fresh hashes. Returns the new manifest.
    """
    bundle_dir = Path(bundle_dir)
    manifest = verify_bundle(bundle_dir)
    write_file(bundle_dir / STATS_FILE, check.to_bytes())
    files = dict(manifest["files"])
    files[STATS_FILE] = sha256_file(bundle_dir / STATS_FILE)
    manifest["files"] = dict(sorted(files.items()))
    manifest[MANIFEST_KEY] = {"file": STATS_FILE, "method": METHOD}
    write_manifest(bundle_dir, manifest)
    return manifest


def add_domain_stats(
    bundle_dir: Path | str,
    images: Path | str,
    calibration_images: Path | str | None = None,
    *,
    max_images: int | None = None,
    pooling: str = DEFAULT_POOLING,
    quantile: float = DEFAULT_QUANTILE,
    rank: int = DEFAULT_RANK,
    seed: int = 0,
    device: str = "cpu",
) -> DomainCheck:
    """Fit the check on `images` (calibrated on `calibration_images` or a held-out
    fifth of `images`) with the bundle's encoder, and write it into the bundle."""
    fit_paths = _subset(image_paths(images), max_images, seed)
    if calibration_images is None:
        fit_paths, calibration_paths = split_calibration(fit_paths, seed=seed)
    else:
        calibration_paths = _subset(image_paths(calibration_images), max_images, seed)
    check_image_counts(fit_paths, calibration_paths)  # before the model loads
    bundle = load_bundle(bundle_dir, device, warn=lambda message: None)
    check = compute_domain_check(
        bundle, fit_paths, calibration_paths, pooling=pooling, quantile=quantile, rank=rank
    )
    write_domain_check(bundle_dir, check)
    return check


def _subset(paths: list[Path], limit: int | None, seed: int) -> list[Path]:
    if limit is None or len(paths) <= limit:
        return paths
    return sorted(random.Random(seed).sample(paths, limit))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m capbatch.export.domain_stats",
        description="Fit a domain check on training images and add it to a bundle.",
    )
    parser.add_argument("bundle", type=Path, help="bundle directory (rewritten in place)")
    parser.add_argument("--images", type=Path, required=True, help="training images: dir or list")
    parser.add_argument(
        "--calibration-images", type=Path, help="held-out in-domain images that set the threshold"
    )
    parser.add_argument("--max-images", type=int, help="seeded subset of each image set")
    parser.add_argument("--pooling", choices=sorted(POOLINGS), default=DEFAULT_POOLING)
    parser.add_argument("--quantile", type=float, default=DEFAULT_QUANTILE)
    parser.add_argument("--rank", type=int, default=DEFAULT_RANK, help="principal directions kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        check = add_domain_stats(
            args.bundle,
            args.images,
            args.calibration_images,
            max_images=args.max_images,
            pooling=args.pooling,
            quantile=args.quantile,
            rank=args.rank,
            seed=args.seed,
            device=args.device,
        )
    except CapbatchError as exc:
        print(f"domain_stats: error: {exc}", file=sys.stderr)
        return 2
    facts = check.describe()
    print(
        f"wrote {args.bundle / STATS_FILE}: {facts['pooling']} pooling, rank {facts['rank']}, "
        f"fitted on {facts['fit_images']} images, threshold {facts['threshold']} "
        f"(quantile {facts['quantile']} of {facts['calibration_images']} calibration images) "
        f"in {time.perf_counter() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
