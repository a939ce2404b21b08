"""training/reproduce_default.sh, the default model's one documented command,
runs every step end to end (tiny sizes: 60 scenes, one epoch per phase)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import needs_torch

pytestmark = needs_torch

ROOT = Path(__file__).resolve().parent.parent


def test_reproduce_default_runs_every_step(tmp_path):
    from capbatch.domain import DomainCheck
    from capbatch.manifest import verify_bundle

    work = tmp_path / "repro"
    env = {
        **os.environ,
        "SCENES": "60",
        "EPOCHS": "1",
        "DECODER_EPOCHS": "1",
        "WORKERS": "2",
        "PYTHON": sys.executable,
    }
    done = subprocess.run(
        ["bash", str(ROOT / "training" / "reproduce_default.sh"), str(work)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = (work / "finetune" / "metrics.jsonl").read_text().splitlines()
    assert "val_semantic" in json.loads(
        metrics[-1]
    )  # phase 1 picks checkpoints on semantic accuracy
    for beam in (1, 3):
        report = json.loads((work / f"eval-beam{beam}.json").read_text())
        assert report["beam"] == beam
        assert set(report["splits"]) == {"test", "test_novel"}
        assert "semantic_accuracy" in report["splits"]["test"]
    manifest = verify_bundle(work / "bundle")
    assert manifest["config"]["fine_tune_stages"] == 0  # phase 2: the encoder frozen again
    checked = manifest["validation"]
    # Every sample agrees, or differs only at a near tie (a barely trained model has many).
    agreeing = round(checked["caption_agreement"] * checked["images"])
    assert checked["images"] == 20 and agreeing + len(checked["near_ties"]) == 20
    # The domain statistics: fitted on the train list, thresholded on the val list.
    lists = {
        split: (work / "domain-lists" / f"{split}.txt").read_text().split()
        for split in ("train", "val")
    }
    assert manifest["domain"]["file"] in manifest["files"]
    facts = DomainCheck.from_bundle(work / "bundle").describe()
    assert facts["fit_images"] == len(lists["train"]) >= 20
    assert facts["calibration_images"] == len(lists["val"]) >= 1
    assert "domain statistics: fitted on" in done.stdout
