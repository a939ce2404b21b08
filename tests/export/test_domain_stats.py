"""`capbatch export` ships domain statistics (and says so), `capbatch info` reports them,
and export prints what it validated: through the CLI, on the tiny trained model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import needs_torch

pytestmark = needs_torch


def _run_cli(capsys, *args) -> tuple[int, str, str]:
    from capbatch.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _write_images(directory: Path, count: int, seed: int) -> Path:
    """`count` distinct blocky PNGs, like the tiny model's training images."""
    from capbatch.export.validate import generated_images

    directory.mkdir(parents=True)
    for index, pixels in enumerate(generated_images(64, count, seed=seed)):
        Image.fromarray(pixels).save(directory / f"img_{index:03d}.png")
    return directory


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    from tests.bundles import make_tiny_bundle, tiny_checkpoint_of

    return tiny_checkpoint_of(make_tiny_bundle())


@pytest.fixture(scope="module")
def domain_images(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("domain")
    return _write_images(root / "train", 30, seed=1), _write_images(root / "val", 6, seed=2)


def _stats(bundle: Path):
    from capbatch.domain import DomainCheck

    return DomainCheck.from_bundle(bundle)


def test_export_fits_statistics_for_every_variant_and_info_shows_them(
    tmp_path, capsys, checkpoint, domain_images
):
    from capbatch.manifest import verify_bundle

    train, val = domain_images
    # The fit images as a list file of relative paths, the calibration images as a folder.
    listing = train.parent / "train.txt"
    listing.write_text("".join(f"train/{p.name}\n" for p in sorted(train.iterdir())))
    out = tmp_path / "tiny"
    code, stdout, err = _run_cli(
        capsys, "export", "--ckpt", checkpoint, "--out", out, "--fp16", "--int8",
        "--domain-images", listing, "--domain-calibration", val,
    )  # fmt: skip
    assert code == 0, err
    checks = {}
    for variant in ("", "-fp16", "-int8"):
        bundle = tmp_path / f"tiny{variant}"
        manifest = verify_bundle(bundle)  # the statistics are hashed with every other file
        assert manifest["domain"]["file"] in manifest["files"]
        checks[variant] = _stats(bundle)
        facts = checks[variant].describe()
        assert (facts["fit_images"], facts["calibration_images"]) == (30, 6)
        assert f"wrote {bundle} (" in stdout
    # Each variant is fitted with its own encoder: fp16 features differ from fp32's.
    assert not np.array_equal(checks[""].mean, checks["-fp16"].mean)
    assert stdout.count("domain statistics: fitted on 30 images") == 3
    assert "domain_distance" not in stdout + err  # no "columns will be empty" note

    code, stdout, _ = _run_cli(capsys, "info", "--model", tmp_path / "tiny-int8")
    assert code == 0
    line = next(x for x in stdout.splitlines() if x.startswith("domain check"))
    threshold = checks["-int8"].describe()["threshold"]
    assert f"threshold {threshold:.2f}" in line
    assert "fitted on 30 images" in line and "of 6 calibration images" in line
    assert "mahalanobis-ledoit-wolf" in line


def test_export_without_images_says_the_columns_will_be_empty_and_info_agrees(
    tmp_path, capsys, checkpoint
):
    out = tmp_path / "plain"
    code, stdout, err = _run_cli(
        capsys, "export", "--ckpt", checkpoint, "--out", out, "--no-validate"
    )
    assert code == 0, err
    notes = [x for x in stdout.splitlines() if x.startswith("no domain statistics")]
    assert len(notes) == 1, stdout
    assert "the checkpoint names no dataset" in notes[0]
    assert "domain_distance and in_domain columns will be empty" in notes[0]
    assert "--domain-images" in notes[0]
    assert "validation: skipped (--no-validate)" in stdout
    assert _stats(out) is None
    assert not (out / "domain_stats.npz").exists()

    code, stdout, _ = _run_cli(capsys, "info", "--model", out)
    assert code == 0
    line = next(x for x in stdout.splitlines() if x.startswith("domain check"))
    assert "none" in line and "columns will be empty" in line


def _checkpoint_with_dataset(checkpoint: Path, dataset: Path, target: Path) -> Path:
    """The tiny checkpoint, recorded as trained on `dataset` (as `capbatch-train fit` does)."""
    import torch

    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    payload["extra"] = {**payload["extra"], "dataset": {"path": str(dataset), "layout": "csv"}}
    torch.save(payload, target)
    return target


def test_export_defaults_to_the_checkpoints_train_and_val_splits(tmp_path, capsys, checkpoint):
    from capbatch.training.data import read_dataset
    from capbatch.training.scenes import generate_dataset

    data = tmp_path / "scenes"
    generate_dataset(data, n=40, seed=3, image_size=64, val_fraction=0.1)
    splits = read_dataset(data).splits
    ckpt = _checkpoint_with_dataset(checkpoint, data, tmp_path / "best.pt")
    out = tmp_path / "bundle"
    code, stdout, err = _run_cli(capsys, "export", "--ckpt", ckpt, "--out", out, "--no-validate")
    assert code == 0, err
    facts = _stats(out).describe()
    assert facts["fit_images"] == len(splits["train"]) >= 20
    assert facts["calibration_images"] == len(splits["val"]) >= 1
    assert "no domain statistics" not in stdout

    # --no-domain-stats opts out even when the dataset is known, and says so.
    out2 = tmp_path / "bundle2"
    code, stdout, err = _run_cli(
        capsys, "export", "--ckpt", ckpt, "--out", out2, "--no-validate", "--no-domain-stats"
    )
    assert code == 0, err
    assert _stats(out2) is None
    assert "no domain statistics (--no-domain-stats)" in stdout

    # A recorded dataset that has gone away: no statistics, one line saying why.
    gone = _checkpoint_with_dataset(checkpoint, tmp_path / "moved", tmp_path / "gone.pt")
    out3 = tmp_path / "bundle3"
    code, stdout, err = _run_cli(capsys, "export", "--ckpt", gone, "--out", out3, "--no-validate")
    assert code == 0, err
    assert _stats(out3) is None
    notes = [x for x in stdout.splitlines() if x.startswith("no domain statistics")]
    assert len(notes) == 1 and "moved" in notes[0] and "will be empty" in notes[0]


@pytest.mark.parametrize("problem", ["calibration alone", "missing listed image", "too few"])
def test_unusable_domain_images_are_refused_before_any_work(
    tmp_path, capsys, checkpoint, domain_images, problem
):
    train, val = domain_images
    listing = tmp_path / "list.txt"
    if problem == "calibration alone":
        options = ["--domain-calibration", val]
        expected = "--domain-calibration needs --domain-images"
    elif problem == "missing listed image":
        listing.write_text(f"{train}/img_000.png\n{tmp_path}/nope.png\n")
        options = ["--domain-images", listing, "--domain-calibration", val]
        expected = "1 domain images not found"
    else:
        options = ["--domain-images", val]  # 6 images: 5 to fit, 1 to calibrate
        expected = "need at least 20 fit images, got 5"
    out = tmp_path / "bundle"
    code, _, err = _run_cli(capsys, "export", "--ckpt", checkpoint, "--out", out, *options)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], err
    assert list(tmp_path.iterdir()) in ([], [listing])  # no bundle, no staging directory


def test_export_prints_its_validation_summary(tmp_path, capsys, checkpoint):
    out = tmp_path / "tiny"
    code, stdout, err = _run_cli(
        capsys, "export", "--ckpt", checkpoint, "--out", out, "--int8", "--no-domain-stats"
    )
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    validation = manifest["validation"]
    lines = stdout.splitlines()
    # One line per output: its max difference against its tolerance, in the manifest's figures.
    for output, diff in validation["max_abs_diff"].items():
        row = next(x for x in lines if x.strip().startswith(f"{output} "))
        assert f"{diff:.2e} <= {validation['tolerance'][output]:.2e} ok" in row
    assert len(validation["max_abs_diff"]) == 8  # 4 encoder + 4 step outputs
    assert "greedy captions identical to PyTorch on 100% of 8 images (0 near ties)" in stdout
    assert "greedy captions identical to fp32 on" in stdout and "(minimum 97%)" in stdout
    # Sizes: each graph and the whole bundle, from the files on disk.
    head = next(x for x in lines if x.startswith(f"wrote {out} (fp32)"))
    total = sum(p.stat().st_size for p in out.iterdir())
    assert f"{total / 2**20:.2f} MiB ({total:,} bytes) in all" in head
    for graph in ("encoder.onnx", "decoder_step.onnx"):
        assert f"{graph} {(out / graph).stat().st_size / 2**20:.2f} MiB" in head
    assert any(x.startswith(f"wrote {out}-int8 (int8)") for x in lines)
