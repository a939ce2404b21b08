"""training/reproduce_default.sh, the default model's one documented command,
runs every step end to end (tiny sizes: 60 scenes, one epoch per phase), and
its CPU path starts v2 from the v1 model rebuilt from its bundle in git history."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import needs_torch

pytestmark = [needs_torch, pytest.mark.slow]  # minutes on 2 cores

ROOT = Path(__file__).resolve().parents[2]
V1_COMMIT = "f64085c2b6f31e64ca975c1b2701edbe814feee1"  # reproduce_default.sh's default


def test_reproduce_default_runs_every_step(tmp_path):
    from capbatch.domain import DomainCheck
    from capbatch.manifest import verify_bundle

    work = tmp_path / "repro"
    env = {
        **os.environ,
        "SCENES": "60",
        "EPOCHS": "1",
        "DECODER_EPOCHS": "1",
        "V2_EPOCHS": "1",
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
    # v2 started from v1 phase 2's checkpoint, its first three stages cached.
    v2_metrics = (work / "v2" / "metrics.jsonl").read_text().splitlines()
    assert "val_semantic" in json.loads(v2_metrics[-1])
    # (eval caches the whole encoder's features there too: (images, regions, dim))
    indexes = (work / "v2" / "features").glob("*/index.json")
    shapes = [json.loads(p.read_text())["shape"] for p in indexes]
    assert any(len(shape) == 2 for shape in shapes)  # (images, flat prefix)
    for data, splits in (("scenes-v2", {"test", "test_novel", "test_renderer"}),
                         ("scenes", {"test", "test_novel"})):  # fmt: skip
        for beam in (1, 3):
            report = json.loads((work / f"eval-{data}-beam{beam}.json").read_text())
            assert report["beam"] == beam
            assert set(report["splits"]) == splits
            assert "semantic_accuracy" in report["splits"]["test"]
    manifest = verify_bundle(work / "bundle")
    assert manifest["config"]["fine_tune_stages"] == 5  # v2: the last five stages trained
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


def test_cpu_path_rebuilds_v1_from_git_history_and_fine_tunes_it(tmp_path):
    if subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", V1_COMMIT],
                      capture_output=True).returncode:  # fmt: skip
        import pytest

        pytest.skip("not a git checkout with the v1 commit (a source archive)")
    work = tmp_path / "repro"
    env = {**os.environ, "SCENES": "40", "V2_EPOCHS": "1", "WORKERS": "2",
           "PYTHON": sys.executable, "STEPS": "v1-bundle scenes-v2 v2"}  # fmt: skip
    done = subprocess.run(
        ["bash", str(ROOT / "training" / "reproduce_default.sh"), str(work)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "max |rebuilt - bundle| on 20 images" in done.stdout
    assert (work / "v1-from-bundle.pt").is_file()
    import torch
    from capbatch.training.checkpoint import load_checkpoint

    v1 = load_checkpoint(work / "v1-from-bundle.pt")["model"]
    v2 = load_checkpoint(work / "v2" / "last.pt")["model"]
    # v2 started from v1: the three frozen stages are v1's exactly, the rest trained on.
    frozen = [k for k in v1 if k.startswith(("encoder.stages.0.", "encoder.stages.2."))]
    trained = [k for k in v1 if k.startswith(("encoder.stages.7.", "decoder.")) and
               k.endswith("weight")]  # fmt: skip
    assert frozen and all(torch.equal(v1[k], v2[k]) for k in frozen)
    assert trained and not all(torch.equal(v1[k], v2[k]) for k in trained)
