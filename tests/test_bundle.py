"""Bundle loading: provider choice, verification before sessions, I/O checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from capbatch import bundle as bundle_module
from capbatch.bundle import load_bundle, resolve_bundle_dir
from capbatch.errors import BundleError, UsageError
from capbatch.providers import (
    CPU,
    CUDA,
    choose_providers,
    cpu_thread_count,
    fallback_warning,
    parse_device,
)
from tests.runtime_fakes import make_fake_bundle, read_manifest_json, rehash, write_manifest

AZURE = "AzureExecutionProvider"


@pytest.mark.parametrize(
    "device,available,expected",
    [
        ("auto", [CUDA, CPU], [CUDA, CPU]),
        ("auto", [AZURE, CPU], [CPU]),
        ("auto", ["TensorrtExecutionProvider", CUDA, CPU], [CUDA, CPU]),
        ("cuda", [CUDA, CPU], [CUDA, CPU]),
        ("cpu", [CUDA, CPU], [CPU]),
        ("CPU", [CPU], [CPU]),
    ],
)
def test_choose_providers(device, available, expected):
    assert choose_providers(device, available) == expected


def test_cuda_requested_but_missing_is_one_clear_error():
    with pytest.raises(
        UsageError, match="--device cuda.*AzureExecutionProvider.*capbatch\\[gpu\\]"
    ):
        choose_providers("cuda", [AZURE, CPU])
    with pytest.raises(UsageError, match="unknown device"):
        parse_device("tpu")


def test_fallback_warning():
    assert fallback_warning([CUDA, CPU], [CPU]) is not None
    assert "running on CPU" in fallback_warning([CUDA, CPU], [CPU])
    assert fallback_warning([CUDA, CPU], [CUDA, CPU]) is None
    assert fallback_warning([CPU], [CPU]) is None
    assert cpu_thread_count() >= 1


@pytest.fixture
def fake_bundle(tmp_path):
    return make_fake_bundle(tmp_path / "bundle")


def test_loads_and_runs(fake_bundle):
    model = load_bundle(fake_bundle, "cpu")
    assert model.providers == [CPU]
    assert model.model_id == "fake-0"
    assert model.preprocess.size == 32
    encoded = model.encode(np.zeros((3, 32, 32, 3), np.uint8))
    assert encoded.features.shape == (3, 4, 6)
    assert encoded.h0.shape == (3, 7)


def test_no_default_model(monkeypatch, tmp_path):
    monkeypatch.setattr(bundle_module, "DEFAULT_BUNDLE_DIR", tmp_path / "nothing")
    with pytest.raises(BundleError, match="no default model is installed; pass --model DIR"):
        resolve_bundle_dir(None)


def test_missing_dir(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "absent")


def test_tampered_graph_is_refused_before_any_session(fake_bundle, monkeypatch):
    with open(fake_bundle / "decoder_step.onnx", "ab") as handle:
        handle.write(b"\0")
    created = []
    monkeypatch.setattr(bundle_module, "import_onnxruntime", lambda: created.append(1))
    with pytest.raises(BundleError, match="decoder_step.onnx: sha256 mismatch"):
        load_bundle(fake_bundle)
    assert created == []


def test_unknown_format_version(fake_bundle):
    manifest = read_manifest_json(fake_bundle)
    manifest["format_version"] = 2
    write_manifest(fake_bundle, manifest)
    with pytest.raises(BundleError, match="format_version 2"):
        load_bundle(fake_bundle)


def test_io_names_must_match_the_sessions(fake_bundle):
    manifest = read_manifest_json(fake_bundle)
    manifest["graphs"]["decoder_step"]["inputs"] = ["token", "h", "c", "features", "projected"]
    write_manifest(fake_bundle, manifest)
    with pytest.raises(BundleError, match="decoder_step graph I/O does not match"):
        load_bundle(fake_bundle)


def test_graph_not_hashed_is_refused(fake_bundle):
    manifest = read_manifest_json(fake_bundle)
    del manifest["files"]["encoder.onnx"]
    write_manifest(fake_bundle, manifest)
    with pytest.raises(BundleError, match="not listed"):
        load_bundle(fake_bundle)


def test_vocab_must_fit_the_graph(fake_bundle):
    tokens = json.loads((fake_bundle / "vocab.json").read_text())
    (fake_bundle / "vocab.json").write_text(json.dumps(tokens + ["extra"]))
    rehash(fake_bundle, "vocab.json")
    with pytest.raises(BundleError, match="vocab has 15 tokens but the step graph scores 14"):
        load_bundle(fake_bundle)


def test_garbage_graph_is_a_bundle_error(fake_bundle):
    (fake_bundle / "encoder.onnx").write_bytes(b"not an onnx model")
    rehash(fake_bundle, "encoder.onnx")
    with pytest.raises(BundleError, match="cannot load encoder.onnx"):
        load_bundle(fake_bundle)


def test_cuda_fallback_is_reported(fake_bundle, monkeypatch):
    # This onnxruntime has no CUDA: pretend it offers it, so the session falls back.
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])
    warnings = []
    model = load_bundle(fake_bundle, "auto", warn=warnings.append)
    assert model.providers == [CPU]
    assert not model.on_cuda
    assert len(warnings) == 1 and "running on CPU" in warnings[0]


@pytest.mark.parametrize("beam_size", [1, 3])
def test_io_bound_step_model_matches_the_array_one(fake_bundle, beam_size):
    # The CUDA path's IO-binding code, run with CPU OrtValues.
    from capbatch.bundle import BoundStepModel
    from capbatch.decoding import DecodingOptions, decode

    model = load_bundle(fake_bundle, "cpu")
    rng = np.random.default_rng(0)
    encoded = model.encode(rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8))
    options = DecodingOptions(beam_size=beam_size, max_len=8, return_alphas=True)
    plain = decode(model.step_model(encoded), options)
    bound_model = BoundStepModel(
        model.decoder_step, encoded, model.start_id, model.end_id, device_type="cpu"
    )
    bound = decode(bound_model, options)
    assert [h.tokens for h in bound] == [h.tokens for h in plain]
    for b, p in zip(bound, plain):
        np.testing.assert_allclose(b.token_logprobs, p.token_logprobs, atol=1e-6)
        np.testing.assert_allclose(b.alphas, p.alphas, atol=1e-6)
