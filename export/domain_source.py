"""Which images `capbatch export` fits a bundle's domain check on, and fitting it.

Torch-free: the checkpoint is read by the caller; only its `extra` mapping
(where `capbatch-train fit` records the dataset it trained on) comes here.

The images are chosen once per export, before any graph is traced, so a bad
`--domain-images` fails fast; every bundle written (fp32 and each variant) is
then fitted with its own encoder, since fp16 and int8 encoders give slightly
different features and a threshold belongs to one encoder.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from capbatch.domain import DomainCheck
from capbatch.errors import CapbatchError, UsageError

from .domain_stats import (
    MIN_FIT_IMAGES,
    check_image_counts,
    image_paths,
    split_calibration,
)

# The default bundle's statistics were fitted on 2000 training scenes (docs/domain-check.md):
# enough for a 128-direction covariance, about 2 minutes of encoder time on 2 CPU cores.
DEFAULT_MAX_IMAGES = 2000
EMPTY_COLUMNS = "the rows' domain_distance and in_domain columns will be empty"


@dataclass(frozen=True)
class DomainOptions:
    """What the export command was told about domain statistics."""

    images: Path | None = None  # training images: a directory or a list file
    calibration: Path | None = None  # held-out in-domain images that set the threshold
    max_images: int = DEFAULT_MAX_IMAGES  # a seeded subset of each set above this
    enabled: bool = True  # False: --no-domain-stats

    def __post_init__(self) -> None:
        if self.max_images < MIN_FIT_IMAGES:
            raise UsageError(f"--domain-max-images must be >= {MIN_FIT_IMAGES}")
        if self.calibration is not None and self.images is None:
            raise UsageError("--domain-calibration needs --domain-images")
        if not self.enabled and self.images is not None:
            raise UsageError("--no-domain-stats contradicts --domain-images")


@dataclass(frozen=True)
class DomainImages:
    """The images a domain check is fitted and calibrated on, and where they came from."""

    fit: tuple[Path, ...]
    calibration: tuple[Path, ...]
    origin: str  # for the export summary: "--domain-images ...", "dataset ... (train/val)"


@dataclass(frozen=True)
class DomainPlan:
    """Images to fit on, or None with the one line that says why there are none."""

    images: DomainImages | None
    note: str = ""


def plan_domain(options: DomainOptions, checkpoint_extra: dict | None) -> DomainPlan:
    """Resolve the options (and, without --domain-images, the checkpoint's dataset).

    Explicit images that cannot be used are an error (exit 2 before any work);
    a recorded dataset that is gone or too small only means no statistics.
    """
    if not options.enabled:
        return DomainPlan(None, f"no domain statistics (--no-domain-stats): {EMPTY_COLUMNS}")
    if options.images is not None:
        return DomainPlan(_explicit_images(options))
    return _dataset_images(options, checkpoint_extra or {})


def _explicit_images(options: DomainOptions) -> DomainImages:
    fit = _subset(image_paths(options.images), options.max_images)
    if options.calibration is None:
        fit, calibration = split_calibration(fit)
        origin = f"--domain-images {options.images} (a seeded fifth held out for the threshold)"
    else:
        calibration = _subset(image_paths(options.calibration), options.max_images)
        origin = f"--domain-images {options.images}, --domain-calibration {options.calibration}"
    _check_files(fit + calibration)
    check_image_counts(fit, calibration)
    return DomainImages(tuple(fit), tuple(calibration), origin)


def _dataset_images(options: DomainOptions, extra: dict) -> DomainPlan:
    hint = "pass --domain-images TRAIN [--domain-calibration VAL] to add them"
    recorded = (extra.get("dataset") or {}).get("path")
    if not recorded:
        return DomainPlan(
            None,
            f"no domain statistics: the checkpoint names no dataset; {EMPTY_COLUMNS} ({hint})",
        )
    from capbatch.training.data import read_dataset  # torch-free, but training's own reader

    group_by = (extra.get("options") or {}).get("group_by") or ""
    try:
        dataset = read_dataset(recorded, group_by=group_by)
        train, val = dataset.splits.get("train", []), dataset.splits.get("val", [])
        fit = _subset([image.path for image in train], options.max_images)
        calibration = _subset([image.path for image in val], options.max_images)
        check_image_counts(fit, calibration)
    except CapbatchError as exc:
        return DomainPlan(
            None,
            f"no domain statistics: the checkpoint's dataset {recorded} cannot give "
            f"train/val images ({exc}); {EMPTY_COLUMNS} ({hint})",
        )
    origin = f"dataset {recorded} (train and val splits, recorded in the checkpoint)"
    return DomainPlan(DomainImages(tuple(fit), tuple(calibration), origin))


def _check_files(paths: Sequence[Path]) -> None:
    """A list file naming images that are not there is refused before any work."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise UsageError(f"{len(missing)} domain images not found: {shown}")


def _subset(paths: list[Path], limit: int, seed: int = 0) -> list[Path]:
    """A seeded subset (the same images every run), as domain_stats does."""
    paths = sorted(paths)
    if len(paths) <= limit:
        return paths
    return sorted(random.Random(seed).sample(paths, limit))


def fit_bundle_domain(bundle_dir: Path, images: DomainImages) -> DomainCheck:
    """Fit the check with this bundle's own encoder and write it into the bundle."""
    from capbatch.bundle import load_bundle

    from .domain_stats import compute_domain_check, write_domain_check

    bundle = load_bundle(bundle_dir, "cpu", warn=lambda message: None)
    check = compute_domain_check(bundle, images.fit, images.calibration)
    write_domain_check(bundle_dir, check)
    return check
