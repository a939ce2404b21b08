"""Bundle loading: provider choice, verification before sessions, I/O checks."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from capbatch import bundle as bundle_module
from capbatch.bundle import bundle_facts, load_bundle, resolve_bundle_dir
from capbatch.errors import BundleError, UsageError
from capbatch.manifest import VocabEntry, read_manifest
from capbatch.onnx_scan import MalformedGraph, escapes_directory, external_tensors
from capbatch.preprocess import PreprocessSpec
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
    from capbatch.decoding import DecodingOptions, search

    model = load_bundle(fake_bundle, "cpu")
    rng = np.random.default_rng(0)
    encoded = model.encode(rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8))
    options = DecodingOptions(beam_size=beam_size, max_len=8, return_alphas=True)
    plain = search(model.step_model(encoded), options)
    bound_model = BoundStepModel(
        model.decoder_step, encoded, model.start_id, model.end_id, device_type="cpu"
    )
    bound = search(bound_model, options)
    assert [h.tokens for h in bound] == [h.tokens for h in plain]
    for b, p in zip(bound, plain):
        np.testing.assert_allclose(b.token_logprobs, p.token_logprobs, atol=1e-6)
        np.testing.assert_allclose(b.alphas, p.alphas, atol=1e-6)


# --------------------------------------------------------------------------- one declaration


def test_runtime_graph_names_equal_the_export_specs():
    # capbatch keeps a torch-free copy of export/specs.py's names; they must not drift.
    from capbatch.export.specs import DECODER_STEP, ENCODER

    assert bundle_module.ENCODER_INPUTS == tuple(ENCODER.input_names)
    assert bundle_module.ENCODER_OUTPUTS == tuple(ENCODER.output_names)
    assert bundle_module.STEP_INPUTS == tuple(DECODER_STEP.input_names)
    assert bundle_module.STEP_OUTPUTS == tuple(DECODER_STEP.output_names)


def test_manifest_graph_keys_and_files_equal_the_export_specs(fake_bundle):
    from capbatch.export.specs import DECODER_STEP, ENCODER

    manifest = read_manifest(fake_bundle)
    assert [(g.key, g.file) for g in manifest.graphs] == [
        (ENCODER.key, ENCODER.file),
        (DECODER_STEP.key, DECODER_STEP.file),
    ]


# --------------------------------------------------------------------------- typed manifest


def test_manifest_is_read_once_into_frozen_fields(fake_bundle):
    manifest = read_manifest(fake_bundle)
    assert manifest.model_id == "fake-0"
    assert manifest.preprocess == PreprocessSpec(size=32)
    assert manifest.special_tokens.ids == frozenset({0, 1, 2, 3})
    assert manifest.max_len == 8
    assert manifest.decoder_step.inputs == ("tokens", "h", "c", "features", "projected")
    assert manifest.vocab == VocabEntry("vocab.json", "word")
    with pytest.raises(dataclasses.FrozenInstanceError):
        manifest.max_len = 3
    with pytest.raises(TypeError):
        manifest.files["vocab.json"] = "0" * 64


def test_max_len_falls_back_to_the_config_of_older_manifests(fake_bundle):
    manifest = read_manifest_json(fake_bundle)
    del manifest["max_len"]
    manifest["config"]["max_len"] = 5
    write_manifest(fake_bundle, manifest)
    assert load_bundle(fake_bundle, "cpu").max_len == 5


def test_bundle_facts_verifies_without_creating_sessions(fake_bundle, monkeypatch):
    def no_sessions():
        raise AssertionError("bundle_facts created a session")

    monkeypatch.setattr(bundle_module, "import_onnxruntime", no_sessions)
    facts = bundle_facts(fake_bundle)
    assert (facts.model_id, facts.preprocess.size, facts.path) == ("fake-0", 32, fake_bundle)
    with open(fake_bundle / "vocab.json", "ab") as handle:
        handle.write(b" ")
    with pytest.raises(BundleError, match="vocab.json: sha256 mismatch"):
        bundle_facts(fake_bundle)


# --------------------------------------------------------------------------- what is loaded


def test_sessions_load_the_verified_bytes_not_a_file_swapped_after_hashing(
    fake_bundle, tmp_path, monkeypatch
):
    import onnxruntime

    other = make_fake_bundle(tmp_path / "other", seed=1)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    pristine = load_bundle(fake_bundle, "cpu").encode(images).features
    assert not np.allclose(pristine, load_bundle(other, "cpu").encode(images).features)

    real_session = onnxruntime.InferenceSession

    def swap_then_load(model, *args, **kwargs):
        # The race of issue 18: the graph is replaced between the hash and the load.
        shutil.copy(other / "encoder.onnx", fake_bundle / "encoder.onnx")
        return real_session(model, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", swap_then_load)
    loaded = load_bundle(fake_bundle, "cpu")
    np.testing.assert_array_equal(loaded.encode(images).features, pristine)


def _with_external_tensor(graph) -> None:
    """Mark the graph's first initializer as stored in an external file."""
    from onnx import TensorProto

    tensor = graph.initializer[0]
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "weights.bin"


def test_scanner_finds_external_tensors_in_nested_graphs_and_constants():
    pytest.importorskip("onnx")  # builds nested graphs: beyond tests/onnx_proto.py
    from onnx import TensorProto, helper, numpy_helper

    def branch(name):
        graph = helper.make_graph(
            [helper.make_node("Identity", ["w"], [f"{name}_out"])],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [1])],
            [numpy_helper.from_array(np.zeros(1, np.float32), "w")],
        )
        return graph

    then_branch, else_branch = branch("then"), branch("else")
    constant = numpy_helper.from_array(np.ones(1, np.float32), "k")
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["k"], value=constant),
            helper.make_node(
                "If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch
            ),
        ],
        "outer",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph)
    assert external_tensors(model.SerializeToString()) == []
    _with_external_tensor(model.graph.node[1].attribute[1].g)  # one If branch
    value = model.graph.node[0].attribute[0].t
    value.data_location = TensorProto.EXTERNAL
    found = external_tensors(model.SerializeToString())
    assert sorted(t.name for t in found) == ["k", "w"]
    assert {t.location for t in found} == {"weights.bin", ""}


@pytest.mark.parametrize(
    "data",
    [b"\x0a\xff\xff\xff\xff", b"\x3a\x10short", b"\x3f", b"\x0a" + b"\xff" * 11],
    ids=["truncated-varint", "field-past-end", "group-wire-type", "overlong-varint"],
)
def test_scanner_refuses_malformed_bytes(data):
    with pytest.raises(MalformedGraph):
        external_tensors(data)


def test_scanner_bounds_nesting_without_recursion():
    # graph -> node -> attribute -> graph ... far deeper than any real model.
    message = b""
    for field_number in [6, 5, 1] * 400:  # attribute.g, node.attribute, graph.node
        message = bytes([(field_number << 3) | 2]) + _varint(len(message)) + message
    with pytest.raises(MalformedGraph, match="nested deeper"):
        external_tensors(bytes([(7 << 3) | 2]) + _varint(len(message)) + message)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


@pytest.mark.parametrize(
    "location,outside",
    [("w.bin", False), ("sub/w.bin", False), ("../w.bin", True), ("/etc/passwd", True),
     ("sub/../../w.bin", True), ("..\\w.bin", True), ("C:/w.bin", True)],
)  # fmt: skip
def test_external_locations_that_leave_the_bundle(location, outside):
    assert escapes_directory(location) is outside
