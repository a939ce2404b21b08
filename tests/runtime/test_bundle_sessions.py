"""capbatch/bundle.py's promises: the sessions' own names and shapes are checked
against the manifest and the vocab with one line naming what differs, the vocab
must be a list of strings that holds every special token, the CPU sessions get the
documented options, and the encoder runs in chunks on CPU and whole on CUDA.

Written from the surviving mutants of the mutation job (docs/testing.md). Sessions
are faked where the check is about the names and types they report; the real
onnxruntime runs the fake bundle of tests/runtime_fakes.py elsewhere.
"""

from __future__ import annotations

import builtins
import io
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from capbatch import bundle as bundle_module
from capbatch.bundle import (
    ENCODER_CHUNK,
    Bundle,
    bundle_facts,
    check_graph_io,
    import_onnxruntime,
    load_bundle,
    resolve_bundle_dir,
)
from capbatch.errors import BundleError, MissingDependencyError, UsageError
from capbatch.manifest import GraphEntry, read_manifest
from capbatch.providers import CPU, CUDA, EncoderRuntime, Precision
from capbatch.vocab import Vocab
from tests.runtime_fakes import TOKENS, make_fake_bundle, read_manifest_json, rehash, write_manifest


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_fake_bundle(tmp_path_factory.mktemp("fake") / "bundle")


@pytest.fixture
def bundle(pristine, tmp_path):
    return Path(shutil.copytree(pristine, tmp_path / "bundle"))


def _arg(name: str, type_: str = "tensor(float)", shape=None):
    return SimpleNamespace(name=name, type=type_, shape=shape or [])


class FakeSession:
    """Reports the names, types and shapes of an onnxruntime session; records runs."""

    def __init__(self, inputs, outputs, results=None):
        self._inputs, self._outputs = inputs, outputs
        self.results = results
        self.runs: list[tuple[list[str], dict]] = []

    def get_inputs(self):
        return self._inputs

    def get_outputs(self):
        return self._outputs

    def run(self, names, feeds):
        self.runs.append((names, feeds))
        return self.results(names, feeds)


def _session(inputs, outputs):
    return FakeSession([_arg(n) for n in inputs], [_arg(n) for n in outputs])


# --------------------------------------------------------------------------- graph names


def test_graph_io_that_matches_passes_and_extra_outputs_are_allowed():
    graph = GraphEntry("decoder_step", "d.onnx", ("b", "a"), ("x",))
    check_graph_io(graph, _session(["a", "b"], ["x", "topk_ids"]), ("a",), ("x",))


@pytest.mark.parametrize(
    "session_in,session_out,message",
    [
        (["a", "c"], ["x", "y"], "inputs ['a', 'c'] != manifest ['a', 'b']"),
        (["a", "b", "c"], ["x", "y"], "inputs ['a', 'b', 'c'] != manifest ['a', 'b']"),
        (["a", "b"], ["x"], "outputs ['x'] lack manifest ['x', 'y']"),
        (["c"], ["z"], "inputs ['c'] != manifest ['a', 'b']; outputs ['z'] lack manifest "
                       "['x', 'y']; missing required ['a', 'x']"),
    ],
    ids=["renamed-input", "extra-input", "missing-output", "all-three"],
)  # fmt: skip
def test_graph_io_problems_are_listed_in_one_line(session_in, session_out, message):
    graph = GraphEntry("encoder", "e.onnx", ("a", "b"), ("x", "y"))
    with pytest.raises(BundleError) as caught:
        check_graph_io(graph, _session(session_in, session_out), ("a",), ("x",))
    assert str(caught.value) == f"encoder graph I/O does not match: {message}"


def test_names_the_runtime_needs_are_required_even_when_the_manifest_agrees():
    graph = GraphEntry("decoder_step", "d.onnx", ("tokens",), ("log_probs",))
    session = _session(["tokens"], ["log_probs"])
    with pytest.raises(BundleError) as caught:
        check_graph_io(graph, session, ("tokens", "h"), ("log_probs", "alpha"))
    assert str(caught.value) == (
        "decoder_step graph I/O does not match: missing required ['h', 'alpha']"
    )


# --------------------------------------------------------------------------- vocab


def _write_vocab(bundle: Path, data: bytes) -> None:
    (bundle / "vocab.json").write_bytes(data)
    rehash(bundle, "vocab.json")


@pytest.mark.parametrize(
    "data,reason",
    [
        (b'{"0": "<pad>"}', "expected a JSON list of strings"),
        (b'["<pad>", 1]', "expected a JSON list of strings"),
        (b"[]", "vocab is empty"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
    ids=["object", "a-number", "empty", "deep"],
)
def test_a_vocab_that_is_not_a_token_list_is_one_line(bundle, data, reason):
    _write_vocab(bundle, data)
    with pytest.raises(BundleError) as caught:
        load_bundle(bundle, "cpu")
    assert str(caught.value) == f"bundle vocab vocab.json: {reason}"


def test_a_vocab_that_is_not_utf8_names_the_decoding_problem(bundle):
    _write_vocab(bundle, b'["\xff"]')
    with pytest.raises(BundleError) as caught:
        load_bundle(bundle, "cpu")
    assert str(caught.value).startswith("bundle vocab vocab.json: 'utf-8' codec can't decode")


def test_the_vocab_style_of_the_manifest_is_used(bundle):
    manifest = read_manifest_json(bundle)
    manifest["vocab"]["style"] = "wordpiece"
    write_manifest(bundle, manifest)
    tokens = json.loads((bundle / "vocab.json").read_text())
    tokens[5] = "##ed"
    _write_vocab(bundle, json.dumps(tokens).encode())
    model = load_bundle(bundle, "cpu")
    assert model.vocab.style == "wordpiece"
    assert model.vocab.text([4, 5, 1, 2]) == f"{tokens[4]}ed"  # specials dropped
    assert model.vocab.special_ids == frozenset({0, 1, 2, 3})


def test_a_special_token_at_the_vocab_size_is_outside_it(bundle):
    size = len(json.loads((bundle / "vocab.json").read_text()))
    manifest = read_manifest_json(bundle)
    manifest["special_tokens"]["end"] = size - 1  # the last id is inside
    write_manifest(bundle, manifest)
    assert load_bundle(bundle, "cpu").end_id == size - 1
    manifest["special_tokens"]["end"] = size
    write_manifest(bundle, manifest)
    with pytest.raises(BundleError) as caught:
        load_bundle(bundle, "cpu")
    assert str(caught.value) == f"special token end id {size} is outside the vocab ({size} tokens)"


# --------------------------------------------------------------------------- shapes


def _shape_sessions(images, log_probs):
    encoder = FakeSession([_arg("other"), images], [])
    step = FakeSession([], [_arg("alpha", shape=[5]), log_probs])
    return encoder, step


@pytest.mark.parametrize(
    "images,log_probs",
    [
        (["batch", 32, 32, 3], ["batch", 14]),
        (["batch", "height", "width", 3], ["batch", "vocab"]),
        (["batch", 32, "width", 3], []),
    ],
    ids=["fixed", "dynamic", "partly-dynamic"],
)
def test_shapes_that_fit_or_are_dynamic_pass(bundle, images, log_probs):
    manifest = read_manifest(bundle)
    vocab = Vocab(tuple(TOKENS))
    encoder, step = _shape_sessions(
        _arg("images", "tensor(uint8)", images), _arg("log_probs", shape=log_probs)
    )
    bundle_module._check_shapes(encoder, step, manifest.preprocess, vocab)


@pytest.mark.parametrize(
    "images,log_probs,message",
    [
        (_arg("images", "tensor(float)", ["batch", 32, 32, 3]), [14],
         "encoder input images is tensor(float), expected tensor(uint8)"),
        (_arg("images", "tensor(uint8)", ["batch", 64, 64, 3]), [14],
         "encoder expects 64x64 images but the manifest's preprocess size is 32"),
        (_arg("images", "tensor(uint8)", ["batch", "h", 48, 3]), [14],
         "encoder expects hx48 images but the manifest's preprocess size is 32"),
        (_arg("images", "tensor(uint8)", ["batch", 64, 32, 3]), [14],
         "encoder expects 64x32 images but the manifest's preprocess size is 32"),
        (_arg("images", "tensor(uint8)", ["batch", 32, 32, 3]), ["batch", 15],
         "vocab has 14 tokens but the step graph scores 15"),
        (_arg("images", "tensor(uint8)", ["batch", 32, 32, 3]), [15],
         "vocab has 14 tokens but the step graph scores 15"),
    ],
    ids=["float-input", "other-size", "one-dim-differs", "height-differs", "vocab-size",
         "one-dim-log-probs"],
)  # fmt: skip
def test_shapes_that_do_not_fit_are_one_line(bundle, images, log_probs, message):
    manifest = read_manifest(bundle)
    vocab = Vocab(tuple(TOKENS))
    encoder, step = _shape_sessions(images, _arg("log_probs", shape=log_probs))
    with pytest.raises(BundleError) as caught:
        bundle_module._check_shapes(encoder, step, manifest.preprocess, vocab)
    assert str(caught.value) == message


# --------------------------------------------------------------------------- running


def _fake_model(bundle: Path, providers: list[str], encoder=None, step=None) -> Bundle:
    return Bundle(
        path=bundle,
        manifest=read_manifest(bundle),
        vocab=Vocab(tuple(TOKENS)),
        encoder=encoder,
        decoder_step=step,
        providers=providers,
    )


def _encoder_outputs(names, feeds):
    images = feeds["images"]
    base = images[:, 0, 0, 0].astype(np.float16)  # one value per image, in order
    return [
        np.repeat(base[:, None, None], 2, axis=1).repeat(3, axis=2),  # (B, 2, 3)
        np.repeat(base[:, None, None], 2, axis=1).repeat(4, axis=2),  # (B, 2, 4)
        np.repeat(base[:, None], 5, axis=1),  # (B, 5)
        np.repeat(-base[:, None], 5, axis=1),
    ]


@pytest.mark.parametrize(
    "providers,count,chunks",
    [
        ([CPU], 2 * ENCODER_CHUNK + 1, [ENCODER_CHUNK, ENCODER_CHUNK, 1]),
        ([CPU], ENCODER_CHUNK, [ENCODER_CHUNK]),
        ([CPU], 0, [0]),
        ([CPU], ENCODER_CHUNK + 1, [ENCODER_CHUNK, 1]),
        ([CUDA, CPU], 2 * ENCODER_CHUNK + 1, [2 * ENCODER_CHUNK + 1]),
        ([CUDA, CPU], 1, [1]),
        ([CUDA, CPU], 0, [0]),
    ],
    ids=[
        "cpu-chunks",
        "cpu-one-chunk",
        "no-images",
        "cpu-two-chunks",
        "cuda-whole",
        "cuda-one-image",
        "cuda-no-images",
    ],
)
def test_the_encoder_runs_in_chunks_on_cpu_and_whole_on_cuda(bundle, providers, count, chunks):
    encoder = FakeSession([], [], _encoder_outputs)
    model = _fake_model(bundle, providers, encoder=encoder)
    images = np.zeros((count, 32, 32, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(count)
    encoded = model.encode(images)
    assert [feeds["images"].shape[0] for _, feeds in encoder.runs] == chunks
    assert all(names == ["features", "projected", "h0", "c0"] for names, _ in encoder.runs)
    assert model.on_cuda is (CUDA in providers)
    assert encoded.features.shape == (count, 2, 3) and encoded.features.dtype == np.float32
    assert encoded.projected.shape == (count, 2, 4)
    np.testing.assert_array_equal(encoded.h0[:, 0], np.arange(count, dtype=np.float32))
    np.testing.assert_array_equal(encoded.c0[:, 0], -np.arange(count, dtype=np.float32))


def test_the_cpu_step_feeds_each_input_in_the_graph_dtype(bundle):
    types = {
        "tokens": "tensor(int32)",
        "h": "tensor(float16)",
        "c": "tensor(double)",
        "features": "tensor(float16)",
        "projected": "tensor(unknown)",  # not in the table: float32
    }
    vocab = 14

    def outputs(names, feeds):
        rows = feeds["tokens"].shape[0]
        log_probs = np.log(np.full((rows, vocab), 1 / vocab, np.float64))
        return [log_probs, feeds["h"], feeds["c"], np.full((rows, 2), 0.5, np.float16)]

    step = FakeSession([_arg(n, t) for n, t in types.items()], [], outputs)
    model = _fake_model(bundle, [CPU], step=step)
    encoded = bundle_module.Encoded(
        np.ones((2, 2, 3), np.float32),
        np.ones((2, 2, 4), np.float32),
        np.ones((2, 5), np.float32),
        np.ones((2, 5), np.float32),
    )
    step_model = model.step_model(encoded)
    state = step_model.initial_state()
    out = step_model.step(np.array([1, 1], np.int64), state)
    names, feeds = step.runs[0]
    assert names == ["log_probs", "h_out", "c_out", "alpha"]
    dtypes = {name: feeds[name].dtype for name in types}
    assert dtypes == {
        "tokens": np.int32,
        "h": np.float16,
        "c": np.float64,
        "features": np.float16,
        "projected": np.float32,
    }
    assert out.log_probs.dtype == np.float32
    assert (step_model.start_id, step_model.end_id) == (1, 2)


def test_the_plain_fields_come_from_the_manifest(bundle):
    manifest = read_manifest_json(bundle)
    manifest["special_tokens"] = {"pad": 0, "start": 3, "end": 1, "unk": 2}
    manifest["max_len"] = 6
    write_manifest(bundle, manifest)
    model = load_bundle(bundle, "cpu")
    assert (model.start_id, model.end_id, model.max_len) == (3, 1, 6)
    assert model.preprocess.size == 32 and model.model_id == "fake-0"
    assert model.path == bundle and model.providers == [CPU]


# --------------------------------------------------------------------------- sessions


def test_cpu_session_options_are_the_documented_ones():
    ort = import_onnxruntime()
    options = bundle_module._session_options(ort, True, 3)
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 1
    assert options.log_severity_level == 3
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    default = bundle_module._session_options(ort, True)
    assert default.intra_op_num_threads == bundle_module.cpu_thread_count()
    gpu = bundle_module._session_options(ort, False, 3)
    assert gpu.intra_op_num_threads == 0  # onnxruntime's own choice
    assert gpu.log_severity_level == 3
    with pytest.raises(RuntimeError, match="does not have configuration"):
        gpu.get_session_config_entry("session.intra_op.allow_spinning")


@pytest.mark.parametrize(
    "error,message",
    [
        (RuntimeError("[ONNXRuntimeError] : 10 : INVALID_GRAPH\nmore detail"),
         "[ONNXRuntimeError] : 10 : INVALID_GRAPH"),
        (RuntimeError("  \n  "), "RuntimeError"),
        (ValueError(), "ValueError"),
    ],
    ids=["first-line", "blank", "no-message"],
)  # fmt: skip
def test_a_session_that_cannot_be_created_is_one_line(bundle, monkeypatch, error, message):
    ort = import_onnxruntime()

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(ort, "InferenceSession", refuse)
    with pytest.raises(BundleError) as caught:
        load_bundle(bundle, "cpu")
    assert str(caught.value) == f"cannot load encoder.onnx: {message}"
    assert caught.value.__cause__ is error


class Recorder:
    """Wraps onnxruntime.InferenceSession: records what each session was created with."""

    def __init__(self, ort):
        self.real, self.created = ort.InferenceSession, []

    def __call__(self, model, sess_options=None, providers=None):
        self.created.append((sess_options, providers))
        return self.real(model, sess_options=sess_options, providers=providers)


def test_both_sessions_get_the_cpu_options_and_the_providers_asked_for(bundle, monkeypatch):
    ort = import_onnxruntime()
    recorder = Recorder(ort)
    monkeypatch.setattr(ort, "InferenceSession", recorder)
    threads = bundle_module.cpu_thread_count() + 1  # not what the default would give
    load_bundle(bundle, "cpu", intra_op_threads=threads)
    assert [providers for _, providers in recorder.created] == [[CPU], [CPU]]
    for options, _ in recorder.created:
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (threads, 1)
        assert options.log_severity_level == 3


def test_on_cuda_the_sessions_ask_for_cuda_first_and_preload_its_libraries(bundle, monkeypatch):
    ort = import_onnxruntime()
    recorder = Recorder(ort)
    preloads = []

    def preload_dlls():
        preloads.append(1)
        raise OSError("libcudnn.so.9: cannot open shared object file")  # swallowed

    monkeypatch.setattr(ort, "InferenceSession", recorder)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort, "preload_dlls", preload_dlls, raising=False)
    warned = []
    model = load_bundle(bundle, "auto", warn=warned.append, intra_op_threads=2)
    assert preloads == [1]
    assert [providers for _, providers in recorder.created] == [[CUDA, CPU], [CUDA, CPU]]
    # GPU sessions leave threads to onnxruntime
    assert [options.intra_op_num_threads for options, _ in recorder.created] == [0, 0]
    assert model.providers == [CPU] and len(warned) == 1  # this onnxruntime has no CUDA
    load_bundle(bundle, "cpu")
    assert preloads == [1]  # not on CPU


def test_without_preload_dlls_cuda_sessions_are_still_created(bundle, monkeypatch):
    ort = import_onnxruntime()
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.delattr(ort, "preload_dlls", raising=False)
    assert load_bundle(bundle, "auto", warn=lambda message: None).providers == [CPU]


class FakeOpenVinoEncoder:
    def __init__(self, runtime, precision, model_bytes, threads):
        self.args = (runtime, precision, model_bytes, threads)


@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_openvino_runs_the_encoder_from_the_verified_bytes(bundle, monkeypatch, precision):
    monkeypatch.setattr(bundle_module, "create_encoder", FakeOpenVinoEncoder)
    checked = []
    monkeypatch.setattr(bundle_module, "check_graph_io", lambda *args: checked.append(args[0]))
    monkeypatch.setattr(bundle_module, "_check_shapes", lambda *args: None)
    model = load_bundle(
        bundle,
        "cpu",
        encoder_runtime="openvino",
        precision=precision,
        intra_op_threads=3,
        require_agreement=False,
    )
    assert isinstance(model.encoder, FakeOpenVinoEncoder)
    assert model.encoder.args == (
        EncoderRuntime.openvino,
        Precision(precision),
        (bundle / "encoder.onnx").read_bytes(),
        3,
    )
    assert model.decoder_step.get_inputs()[0].name == "tokens"  # onnxruntime's step session
    assert (model.encoder_runtime, model.precision) == (
        EncoderRuntime.openvino,
        Precision(precision),
    )
    assert [graph.key for graph in checked] == ["encoder", "decoder_step"]


def test_the_default_encoder_runtime_is_onnxruntime_f32(bundle):
    model = load_bundle(bundle, "cpu")
    assert (model.encoder_runtime, model.precision) == (EncoderRuntime.onnxruntime, Precision.f32)


def test_openvino_without_a_recorded_agreement_is_refused_before_compiling(bundle, monkeypatch):
    def never(*args):
        raise AssertionError("compiled before the agreement check")

    monkeypatch.setattr(bundle_module, "create_encoder", never)
    with pytest.raises(BundleError) as caught:
        load_bundle(bundle, "cpu", encoder_runtime="openvino")
    assert str(caught.value) == (
        "bundle fake-0 records no caption agreement for the openvino-f32 encoder; "
        "measure it with python -m capbatch.export.precision (docs/export.md)"
    )


def test_openvino_on_cuda_is_a_usage_error(bundle):
    with pytest.raises(UsageError) as caught:
        load_bundle(bundle, "cuda", encoder_runtime="openvino")
    assert str(caught.value) == "the openvino encoder runtime runs on CPU; use --device cpu or auto"


@pytest.mark.parametrize("threads", [0, -1, 1.5, "2"])
def test_intra_op_threads_must_be_a_positive_integer(bundle, threads):
    with pytest.raises(UsageError) as caught:
        load_bundle(bundle, "cpu", intra_op_threads=threads)
    assert str(caught.value) == f"intra_op_threads must be an integer >= 1, got {threads!r}"


def test_one_intra_op_thread_is_allowed(bundle):
    assert load_bundle(bundle, "cpu", intra_op_threads=1).providers == [CPU]


def test_a_missing_onnxruntime_is_one_install_hint(monkeypatch):
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    with pytest.raises(MissingDependencyError) as caught:
        import_onnxruntime()
    assert str(caught.value) == (
        "onnxruntime is not installed: pip install 'capbatch[cpu]' (or 'capbatch[gpu]')"
    )


def test_warnings_go_to_stderr_on_one_prefixed_line_flushed(monkeypatch):
    class Stderr(io.StringIO):
        flushed_with: list[str] = []

        def flush(self):
            self.flushed_with.append(self.getvalue())

    stderr = Stderr()
    monkeypatch.setattr(sys, "stderr", stderr)
    bundle_module._stderr_warning("running on CPU")
    assert stderr.getvalue() == "capbatch: warning: running on CPU\n"
    assert stderr.flushed_with == ["capbatch: warning: running on CPU\n"]  # seen at once


# --------------------------------------------------------------------------- paths


def test_a_given_path_is_used_as_is_and_none_means_the_default(tmp_path, monkeypatch, bundle):
    assert resolve_bundle_dir(str(tmp_path / "m")) == tmp_path / "m"
    monkeypatch.setattr(bundle_module, "DEFAULT_BUNDLE_DIR", bundle)
    assert resolve_bundle_dir(None) == bundle
    facts = bundle_facts()
    assert (facts.path, facts.model_id, facts.preprocess.size) == (bundle, "fake-0", 32)
    (bundle / "manifest.json").rename(bundle / "manifest.old")
    (bundle / "manifest.json").mkdir()  # not a file: no default model
    with pytest.raises(BundleError) as caught:
        resolve_bundle_dir(None)
    assert str(caught.value) == (
        "no default model is installed; pass --model DIR (a bundle directory)"
    )


# --------------------------------------------------------------------------- IO binding


class Uploads:
    """Stands in for OrtValue.ortvalue_from_numpy: records each upload, keeps it on CPU."""

    def __init__(self, ort):
        self.real = ort.OrtValue.ortvalue_from_numpy
        self.calls: list[tuple[np.dtype, tuple, str, int]] = []

    def __call__(self, array, device_type="cpu", device_id=0):
        self.calls.append((array.dtype, array.shape, device_type, device_id))
        return self.real(array, "cpu", 0)


@pytest.fixture
def uploads(monkeypatch):
    ort = import_onnxruntime()
    recorder = Uploads(ort)
    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_numpy", recorder)
    return recorder


def _encoded(model: Bundle, count: int):
    rng = np.random.default_rng(0)
    return model.encode(rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8))


def test_on_cuda_the_step_model_keeps_h_and_c_on_cuda_device_0(bundle, uploads):
    model = load_bundle(bundle, "cpu")
    model.providers = [CUDA, CPU]  # as a CUDA session reports
    encoded = _encoded(model, 3)
    step = model.step_model(encoded)
    assert isinstance(step, bundle_module.BoundStepModel)
    assert (step.start_id, step.end_id, step.num_images) == (1, 2, 3)
    state = step.initial_state()
    assert [call[2:] for call in uploads.calls] == [("cuda", 0), ("cuda", 0)]
    assert state.images.dtype == np.int64 and state.images.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(state.h.numpy(), encoded.h0)
    np.testing.assert_array_equal(state.c.numpy(), encoded.c0)


def test_features_are_uploaded_once_per_row_to_image_map(bundle, uploads):
    model = load_bundle(bundle, "cpu")
    encoded = _encoded(model, 3)
    step = bundle_module.BoundStepModel(model.decoder_step, encoded, 1, 2, device_type="cpu")
    state = step.initial_state()
    tokens = np.ones(3, np.int64)
    out = step.step(tokens, state)
    out = step.step(tokens, out.state)
    assert len(uploads.calls) == 2 + 2  # h0, c0; then features, projected once
    assert (out.log_probs.dtype, out.alpha.dtype) == (np.float32, np.float32)
    assert out.log_probs.shape == (3, 14) and out.alpha.shape == (3, 4)
    same = step.select(out.state, np.arange(3))
    assert same is out.state  # nothing travels
    assert len(uploads.calls) == 4
    moved = step.select(out.state, np.array([2, 0]))
    assert moved.images.tolist() == [2, 0]
    np.testing.assert_array_equal(moved.h.numpy(), out.state.h.numpy()[[2, 0]])
    np.testing.assert_array_equal(moved.c.numpy(), out.state.c.numpy()[[2, 0]])
    step.step(tokens[:2], moved)
    assert len(uploads.calls) == 4 + 2 + 2  # h, c of the new rows; their features


def test_a_subset_of_rows_in_order_is_still_a_new_state(bundle, uploads):
    model = load_bundle(bundle, "cpu")
    step = bundle_module.BoundStepModel(
        model.decoder_step, _encoded(model, 3), 1, 2, device_type="cpu"
    )
    state = step.initial_state()
    kept = step.select(state, np.arange(2))  # the first two rows: h/c must shrink
    assert kept is not state and kept.images.tolist() == [0, 1]
    assert kept.h.numpy().shape == (2, 7)


def test_inputs_of_a_type_not_in_the_table_are_uploaded_as_float32(uploads):
    session = FakeSession(
        [
            _arg("tokens", "tensor(int64)"),
            _arg("h", "tensor(bfloat16)"),
            _arg("c", "tensor(float16)"),
        ],
        [],
    )
    encoded = bundle_module.Encoded(
        np.zeros((2, 4, 6), np.float32),
        np.zeros((2, 4, 5), np.float32),
        np.zeros((2, 7), np.float64),
        np.zeros((2, 7), np.float32),
    )
    bundle_module.BoundStepModel(session, encoded, 1, 2).initial_state()
    assert [call[0] for call in uploads.calls] == [np.float32, np.float16]
