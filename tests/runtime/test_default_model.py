"""The embedded default model: the quickstart captions samples/ correctly.

Torch-free: the scenes parser (capbatch.training.scenes) needs only numpy and
Pillow, and the runtime never imports torch.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from capbatch.training.scenes import explain_mismatch, load_scene_facts

from capbatch.bundle import DEFAULT_BUNDLE_DIR, load_bundle
from capbatch.manifest import verify_bundle

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples"
# The shipped model states every fact right on all 20 held-out samples
# (docs/model-card.md; held-out accuracy 94 % greedy): this guards against the
# shipped bundle or the runtime getting worse.
SAMPLES_RIGHT = 20


def test_default_bundle_is_installed_verified_and_validated():
    manifest = verify_bundle(DEFAULT_BUNDLE_DIR)  # every sha256 checked
    assert manifest["variant"] == "fp32"
    assert manifest["config"]["encoder"] == "efficientnet_lite0"
    # Exported with validation on: ORT matched PyTorch and greedy captions agreed.
    validation = manifest["validation"]
    assert validation, "the shipped bundle must have been validated at export"
    assert validation["caption_agreement"] == 1.0  # ORT == PyTorch on the samples
    bundle = load_bundle(None, device="cpu")
    assert bundle.model_id == manifest["model_id"]
    size = sum(p.stat().st_size for p in DEFAULT_BUNDLE_DIR.iterdir())
    assert size <= 40 * 1024 * 1024


def test_quickstart_captions_every_sample_correctly(tmp_path):
    """The README's quickstart command, run from another directory."""
    out = tmp_path / "captions.csv"
    result = subprocess.run(
        [sys.executable, "-m", "capbatch", "caption", str(SAMPLES), "--out", str(out), "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    truth = load_scene_facts(SAMPLES)
    assert len(rows) == len(truth) == 20
    wrong = {}
    for row in rows:
        assert row["status"] == "ok", row
        assert row["model_id"].startswith("scenes-")
        assert row["caption"], row  # every sample gets a non-empty sentence
        reason = explain_mismatch(row["caption"], truth[Path(row["key"]).name])
        if reason:
            wrong[row["key"]] = (row["caption"], reason)
    assert len(rows) - len(wrong) >= SAMPLES_RIGHT, wrong
