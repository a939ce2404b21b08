"""What the OpenVINO encoder promises (capbatch/openvino_backend.py, docs/runtime.md):
onnxruntime's session calls over a compiled model (ports in onnxruntime's words, outputs
in the order asked and never overwritten by the next call), one latency stream with the
threads asked for, the precision it really runs, and one line for every failure. The
missing-extra case runs everywhere; the rest needs the capbatch[openvino] extra."""

from __future__ import annotations

import gc
import sys

import numpy as np
import pytest

from capbatch import openvino_backend
from capbatch.errors import BundleError, MissingDependencyError
from capbatch.openvino_backend import PortInfo
from tests.runtime_fakes import make_fake_bundle

needs_openvino = pytest.mark.skipif(
    openvino_backend.openvino_version() is None, reason="the openvino extra is not installed"
)


def test_without_the_extra_the_import_names_the_install_and_there_is_no_version(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(MissingDependencyError) as raised:
        openvino_backend.import_openvino()
    assert str(raised.value) == (
        "openvino is not installed: pip install 'capbatch[openvino]' "
        "(or use the default encoder runtime, onnxruntime)"
    )
    assert openvino_backend.openvino_version() is None


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    bundle = make_fake_bundle(tmp_path_factory.mktemp("ov") / "bundle")
    return {name: (bundle / f"{name}.onnx").read_bytes() for name in ("encoder", "decoder_step")}


@needs_openvino
def test_the_version_is_openvinos_own():
    import openvino

    assert openvino_backend.openvino_version() == openvino.get_version()


@needs_openvino
def test_ports_read_as_onnxruntime_names_them(graphs):
    encoder = openvino_backend.OpenVinoEncoder(graphs["encoder"], "f32")
    assert encoder.get_inputs() == [PortInfo("images", "tensor(uint8)", [None, 32, 32, 3])]
    assert encoder.get_outputs() == [
        PortInfo("features", "tensor(float)", [None, 4, 6]),
        PortInfo("projected", "tensor(float)", [None, 4, 5]),
        PortInfo("h0", "tensor(float)", [None, 7]),
        PortInfo("c0", "tensor(float)", [None, 7]),
    ]
    encoder.get_outputs().clear()  # a copy: the session's ports stay
    assert len(encoder.get_outputs()) == 4
    # One at a time: two OpenVINO Cores alive in one process made a later SIGTERM
    # test crash the interpreter (capbatch itself holds one encoder).
    del encoder
    gc.collect()
    step = openvino_backend.OpenVinoEncoder(graphs["decoder_step"], "f32")
    assert step.get_inputs()[0] == PortInfo("tokens", "tensor(int64)", [None])


@needs_openvino
def test_one_latency_stream_and_the_threads_asked_for(graphs):
    encoder = openvino_backend.OpenVinoEncoder(graphs["encoder"], "f32", threads=1)
    compiled = encoder._compiled
    assert str(compiled.get_property("PERFORMANCE_HINT")) == "LATENCY"
    assert int(compiled.get_property("NUM_STREAMS")) == 1
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    assert encoder.get_providers() == ["OpenVINO-CPU-f32"]
    assert (encoder.precision, encoder.effective_precision) == ("f32", "f32")
    import openvino

    # What OpenVINO calls this CPU (read from the encoder's own Core: a second Core
    # alive in this process made a later SIGTERM test crash the interpreter).
    assert isinstance(encoder.device_name, str) and encoder.device_name.strip()
    assert encoder.version == openvino.get_version()


@needs_openvino
def test_outputs_come_in_the_order_asked_and_survive_the_next_call(graphs):
    encoder = openvino_backend.OpenVinoEncoder(graphs["encoder"], "f32")
    rng = np.random.default_rng(3)
    first_images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    h0, features = encoder.run(["h0", "features"], {"images": first_images})
    assert (h0.shape, features.shape) == ((2, 7), (2, 4, 6))
    kept = h0.copy()
    encoder.run(["h0"], {"images": 255 - first_images})
    np.testing.assert_array_equal(h0, kept)  # not a view of OpenVINO's buffer


@needs_openvino
def test_an_unknown_precision_is_refused_before_anything_compiles(graphs):
    with pytest.raises(ValueError) as raised:
        openvino_backend.OpenVinoEncoder(graphs["encoder"], "f16")
    assert str(raised.value) == "openvino precision must be one of ['bf16', 'f32']"


@needs_openvino
def test_a_graph_openvino_cannot_read_is_one_line(graphs):
    with pytest.raises(BundleError) as raised:
        openvino_backend.OpenVinoEncoder(b"not an onnx graph", "f32")
    message = str(raised.value)
    assert message.startswith("openvino cannot load the encoder: ")
    assert "\n" not in message and len(message) > len("openvino cannot load the encoder: ")


@pytest.mark.parametrize(
    ("raised", "line"),
    [(RuntimeError("Exception from src/core.cpp:\n  pages of detail\n"),
      "Exception from src/core.cpp:"),
     (RuntimeError("   "), "RuntimeError")],
)  # fmt: skip
def test_openvino_errors_become_their_first_line_or_their_type(monkeypatch, raised, line):
    class FailingCore:
        def read_model(self, model_bytes):
            raise raised

    fake = type(sys)("openvino")
    fake.Core = FailingCore
    monkeypatch.setattr(openvino_backend, "import_openvino", lambda: fake)
    with pytest.raises(BundleError) as error:
        openvino_backend.OpenVinoEncoder(b"graph", "bf16")
    assert str(error.value) == f"openvino cannot load the encoder: {line}"
