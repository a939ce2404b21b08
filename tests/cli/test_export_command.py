"""What `capbatch export`'s command body and summary promise (capbatch/export_cli.py,
docs/export.md), without torch: every option reaches the exporter as given (its
defaults too), and the summary read back from each bundle written says its size, its
validation (or that it was skipped) and its domain statistics, in docs/export.md's words.
The export itself is tests/export/test_export_cli.py's (slow, needs torch)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from capbatch.export.domain_source import DEFAULT_MAX_IMAGES, DomainOptions
from capbatch.export.specs import DEFAULT_OPSET

from capbatch import export_cli
from capbatch.bundle import DEFAULT_BUNDLE_DIR
from capbatch.errors import ExitCode
from tests.cli.test_caption import run_cli
from tests.runtime_fakes import edit_manifest, make_fake_bundle, read_manifest_json


@pytest.fixture
def fake_exporter(monkeypatch, tmp_path):
    """export_bundles replaced by one that records its call and 'writes' a fake bundle."""
    calls = []
    bundle = make_fake_bundle(tmp_path / "written")

    def export_bundles(ckpt, out, **options):
        calls.append((ckpt, out, options))
        return SimpleNamespace(bundles=(bundle,), domain_note="domain statistics: none (a note)")

    monkeypatch.setattr(export_cli, "_import_exporter", lambda: export_bundles)
    return calls, bundle


def test_the_defaults_reach_the_exporter(capsys, fake_exporter, tmp_path):
    calls, bundle = fake_exporter
    code, out, err = run_cli(capsys, "export", "--ckpt", tmp_path / "best.pt",
                             "--out", tmp_path / "model")  # fmt: skip
    assert (code, err) == (ExitCode.OK, "")
    assert calls == [
        (tmp_path / "best.pt", tmp_path / "model", {
            "opset": DEFAULT_OPSET, "fp16": False, "int8": False, "validate": True,
            "validate_images": None, "top_k": 0, "force": False, "overwrite": False,
            "name": None, "domain": DomainOptions(None, None, DEFAULT_MAX_IMAGES, True),
        })
    ]  # fmt: skip
    assert out.splitlines() == [
        *export_cli.summary_lines(bundle),
        "domain statistics: none (a note)",
    ]


def test_every_option_reaches_the_exporter_as_given(capsys, fake_exporter, tmp_path):
    calls, _ = fake_exporter
    for folder in ("val", "train", "held"):
        (tmp_path / folder).mkdir()
    code, _, err = run_cli(
        capsys, "export", "--ckpt", tmp_path / "best.pt", "--out", tmp_path / "model",
        "--fp16", "--int8", "--opset", "18", "--no-validate", "--validate-images",
        tmp_path / "val", "--top-k", "3", "--force", "--overwrite", "--name", "scenes",
        "--domain-images", tmp_path / "train", "--domain-calibration", tmp_path / "held",
        "--domain-max-images", "3000",
    )  # fmt: skip
    assert (code, err) == (ExitCode.OK, "")
    assert calls[0][2] == {
        "opset": 18, "fp16": True, "int8": True, "validate": False,
        "validate_images": tmp_path / "val", "top_k": 3, "force": True, "overwrite": True,
        "name": "scenes",
        "domain": DomainOptions(tmp_path / "train", tmp_path / "held", 3000, True),
    }  # fmt: skip


def test_no_domain_stats_reaches_the_exporter_and_contradicting_images_are_refused(
    capsys, fake_exporter, tmp_path
):
    calls, _ = fake_exporter
    base = ("export", "--ckpt", tmp_path / "best.pt", "--out", tmp_path / "model")
    assert run_cli(capsys, *base, "--no-domain-stats")[0] == ExitCode.OK
    assert calls[0][2]["domain"] == DomainOptions(None, None, DEFAULT_MAX_IMAGES, False)
    code, _, err = run_cli(capsys, *base, "--no-domain-stats", "--domain-images", tmp_path)
    assert (code, err) == (
        ExitCode.FATAL,
        "capbatch: error: --no-domain-stats contradicts --domain-images\n",
    )
    assert len(calls) == 1  # refused before the exporter


def test_without_a_domain_note_nothing_follows_the_summary(capsys, monkeypatch, tmp_path):
    bundle = make_fake_bundle(tmp_path / "written")
    monkeypatch.setattr(
        export_cli,
        "_import_exporter",
        lambda: lambda *a, **k: SimpleNamespace(bundles=(bundle,), domain_note=""),
    )
    code, out, _ = run_cli(capsys, "export", "--ckpt", tmp_path / "b.pt", "--out", tmp_path / "m")
    assert code == ExitCode.OK
    assert out.splitlines() == export_cli.summary_lines(bundle)


# -- the summary ----------------------------------------------------------------------


@pytest.fixture
def edited(tmp_path):
    """A fake bundle whose (unhashed) manifest.json each test sets fields of."""
    bundle = make_fake_bundle(tmp_path / "bundle")
    return lambda **fields: edit_manifest(bundle, **fields)


def first_line(bundle: Path, variant: str) -> str:
    sizes = {name: (bundle / name).stat().st_size for name in ("encoder.onnx", "decoder_step.onnx")}
    total = sum((bundle / n).stat().st_size for n in read_manifest_json(bundle)["files"])
    total += (bundle / "manifest.json").stat().st_size
    return (
        f"wrote {bundle} ({variant}): {total / 2**20:.2f} MiB ({total:,} bytes) in all; "
        f"encoder.onnx {sizes['encoder.onnx'] / 2**20:.2f} MiB, "
        f"decoder_step.onnx {sizes['decoder_step.onnx'] / 2**20:.2f} MiB"
    )


def test_a_bundle_written_without_validation_says_so(edited):
    bundle = edited()
    assert export_cli.summary_lines(bundle) == [
        first_line(bundle, "fp32"),
        "  validation: skipped (--no-validate)",
    ]


def test_fp32_validation_lists_every_output_against_its_tolerance(edited):
    bundle = edited(validation={
        "batches": [1, 3, 7],
        "max_abs_diff": {"features": 2.5e-05, "log_probs": 3e-04},
        "tolerance": {"features": 1e-04, "log_probs": 1e-04},
        "caption_agreement": 0.95, "images": 20, "near_ties": [4, 11],
    })  # fmt: skip
    assert export_cli.summary_lines(bundle)[1:] == [
        "  ONNX Runtime vs PyTorch at batches 1, 3, 7: max abs diff <= tolerance",
        "    features   2.50e-05 <= 1.00e-04 ok",
        "    log_probs  3.00e-04 <= 1.00e-04 OVER",
        "  greedy captions identical to PyTorch on 95% of 20 images (2 near ties)",
    ]


def test_fp32_validation_without_near_ties_counts_none(edited):
    bundle = edited(validation={"caption_agreement": 1.0, "images": 8})
    assert export_cli.summary_lines(bundle)[1:] == [
        "  greedy captions identical to PyTorch on 100% of 8 images (0 near ties)"
    ]


def test_a_variant_is_measured_against_fp32_and_says_when_forced(edited):
    validation = {"caption_agreement": 0.9, "images": 10, "min_agreement": 0.97}
    bundle = edited(variant="int8", validation={**validation, "forced": True})
    assert export_cli.summary_lines(bundle) == [
        first_line(bundle, "int8"),
        "  greedy captions identical to fp32 on 90% of 10 images (minimum 97%) "
        "(written with --force)",
    ]
    bundle = edited(validation=validation)
    assert export_cli.summary_lines(bundle)[1:] == [
        "  greedy captions identical to fp32 on 90% of 10 images (minimum 97%)"
    ]


def test_domain_statistics_are_summed_up_from_the_bundle(tmp_path):
    # The built-in model carries them (docs/model-card.md: 2000 fit scenes, 500 held out).
    bundle = tmp_path / "default"
    shutil.copytree(DEFAULT_BUNDLE_DIR, bundle)
    manifest = read_manifest_json(bundle)
    stats = bundle / manifest["domain"]["file"]
    assert export_cli.summary_lines(bundle)[-1] == (
        "  domain statistics: fitted on 2000 images, threshold "
        f"{manifest_threshold(bundle):.2f} (quantile 0.99 of 500 calibration images), "
        f"{stats.stat().st_size / 2**20:.2f} MiB"
    )


def manifest_threshold(bundle: Path) -> float:
    from capbatch.domain import DomainCheck

    return DomainCheck.from_bundle(bundle).describe()["threshold"]


def test_without_the_export_extra_one_line_names_what_to_install(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    code, out, err = run_cli(capsys, "export", "--ckpt", tmp_path / "b.pt", "--out", tmp_path / "m")
    assert (code, out) == (ExitCode.FATAL, "")
    assert err == f"capbatch: error: {export_cli.EXTRA_HINT} (missing: torch)\n"


def test_a_manifest_without_a_variant_is_the_fp32_bundle(edited):
    bundle = edited(variant=None)
    assert "variant" not in read_manifest_json(bundle)
    assert export_cli.summary_lines(bundle)[0] == first_line(bundle, "fp32")


def test_a_difference_equal_to_its_tolerance_is_ok(edited):
    bundle = edited(validation={
        "batches": [1], "max_abs_diff": {"h0": 1e-04}, "tolerance": {"h0": 1e-04},
        "caption_agreement": 1.0, "images": 2,
    })  # fmt: skip
    assert export_cli.summary_lines(bundle)[2] == "    h0         1.00e-04 <= 1.00e-04 ok"
