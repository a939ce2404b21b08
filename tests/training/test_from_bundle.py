"""A checkpoint rebuilt from the shipped bundle's graphs is the shipped model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import needs_torch

pytestmark = needs_torch

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "capbatch" / "models" / "default"


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    pytest.importorskip("onnx")
    from capbatch.training.from_bundle import main

    out = tmp_path_factory.mktemp("rebuilt") / "v1.pt"
    assert main([str(BUNDLE), "--out", str(out), "--check-images", str(ROOT / "samples")]) == 0
    return out


def test_rebuilt_checkpoint_captions_the_samples_as_the_bundle_does(rebuilt):
    import numpy as np
    import torch
    from capbatch.training.checkpoint import load_checkpoint, model_from_checkpoint
    from capbatch.training.evaluate import caption_features
    from capbatch.training.features import load_image
    from capbatch.training.tokenizer import CaptionTokenizer

    from capbatch import Captioner

    data = load_checkpoint(rebuilt)
    model = model_from_checkpoint(data)  # strict: every weight of the config is there
    tokenizer = CaptionTokenizer.from_checkpoint(data)
    samples = sorted((ROOT / "samples").glob("*.jpg"))[:6]
    pixels = np.stack([load_image(p, model.config.preprocess) for p in samples])
    with torch.inference_mode():
        ours = caption_features(model, tokenizer, model.encoder(torch.from_numpy(pixels)))
    theirs = [r.caption for r in Captioner()(samples)]
    assert ours == theirs
    assert data["extra"]["from_bundle"] == json.loads((BUNDLE / "manifest.json").read_text())[
        "model_id"
    ]


def test_batchnorm_holds_the_folded_bias_as_an_identity_in_eval_mode(rebuilt):
    from capbatch.training.checkpoint import load_checkpoint

    state = load_checkpoint(rebuilt)["model"]
    gammas = [v for k, v in state.items() if k.endswith(".bn1.weight")]
    assert gammas and all(bool((g == 1).all()) for g in gammas)
    means = [v for k, v in state.items() if k.endswith("running_mean")]
    assert all(bool((m == 0).all()) for m in means)


def test_a_bundle_whose_graph_does_not_fit_its_config_is_one_line(tmp_path, capsys):
    pytest.importorskip("onnx")
    from capbatch.training.from_bundle import main

    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["config"]["feature_taps"] = [1, 2]  # the graph was exported with 1,2,4
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert main([str(bundle), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert not (tmp_path / "x.pt").exists()
