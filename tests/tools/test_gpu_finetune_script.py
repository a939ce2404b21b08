"""tools/gpu_finetune.sh, the one prepared device call that fine-tunes the
shipped model, run here on the CPU at tiny size: it must work the first time it
meets a lent GPU, since a failed call costs minutes of a 15-minute budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import needs_torch

pytestmark = [needs_torch, pytest.mark.slow]  # minutes on 2 cores

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_finetune_brings_back_a_loadable_checkpoint_and_its_eval(tmp_path):
    # The script measures each run's domain flag with benchmarks/domain_check.py, whose
    # real photos are scikit-image's bundled samples (the bench extra).
    pytest.importorskip("skimage", reason="needs the bench extra (scikit-image)",
                        exc_type=ImportError)  # fmt: skip
    import hashlib

    from capbatch.training.checkpoint import load_checkpoint

    out, work = tmp_path / "out", tmp_path / "work"
    env = {
        **os.environ,
        "OUT": str(out),
        "W": str(work),
        "SITE": str(tmp_path / "site"),
        "PY": sys.executable,
        "N": "80",
        "EPOCHS": "1",
        "BATCH": "32",
        "STAGES": "0",
        "DEVICE": "cpu",
        "SCENE_ARGS": "--captions canonical",
        "DOMAIN": "1",  # each run exported and its domain flag measured there
        "RUN_B": "--encoder-lr 3e-4 --lr 5e-4 --fine-tune-stages 1",  # the last option wins
    }
    done = subprocess.run(
        ["bash", str(ROOT / "tools" / "gpu_finetune.sh")],
        cwd=tmp_path,  # the script finds the repository itself
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # At most 8 files of 16 MiB come back from the device: the checkpoint in parts.
    parts = sorted(out.glob("best.pt.part*"))
    assert len(parts) >= 2 and all(p.stat().st_size <= 15 * 2**20 for p in parts)
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(out / "small.tgz") as tar:
        tar.extractall(tmp_path / "small", filter="data")
    small = tmp_path / "small"
    digest = hashlib.md5(checkpoint.read_bytes()).hexdigest()
    assert (small / "best.md5").read_text().split()[0] == digest
    # loadable the way capbatch-train loads it (weights only, nothing pickled runs)
    state = load_checkpoint(checkpoint)
    assert state["model"] and state["config"]["vocab_size"] == 48  # v2's tokenizer kept
    # the scenes it trained on were the canonical-caption set: one caption each
    captions = (work / "scenes-v2" / "captions.csv").read_text().splitlines()[1:]
    assert len(captions) == 80 + 4  # + N/20 test_renderer scenes
    # both runs trained; the eval covers the three test splits
    for run in ("a", "b"):
        assert f"fit {run} rc=0" in (small / f"fit-{run}.log").read_text()
        assert (small / run / "metrics.jsonl").read_text().strip()
    report = json.loads((small / "eval.json").read_text())
    assert set(report["splits"]) == {"test", "test_novel", "test_renderer"}
    assert all("semantic_accuracy" in split for split in report["splits"].values())
    # DOMAIN=1: both runs' flags measured on photos, faces and scenes, and the pick named
    for run in ("a", "b"):
        assert f"domain {run} rc=0" in (small / f"domain-{run}.log").read_text()
        flagged = json.loads((small / f"domain-{run}.json").read_text())["flagged"]
        assert {"photos", "faces", "test"} <= set(flagged)
    assert "best run: " in done.stdout and "flagged" in done.stderr
    # RUN_B's own --fine-tune-stages overrode STAGES for run b alone
    assert load_checkpoint(work / "b" / "best.pt")["config"]["fine_tune_stages"] == 1
    assert load_checkpoint(work / "a" / "best.pt")["config"]["fine_tune_stages"] == 0
