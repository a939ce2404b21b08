"""encoder.onnx run by OpenVINO on CPU, behind the onnxruntime session calls Bundle makes.

Optional (`pip install 'capbatch[openvino]'`): OpenVINO reads the verified
encoder.onnx bytes directly, so a bundle needs no second graph. Only the encoder
runs here; the decoder step stays on onnxruntime (its graph is small and
sequential, and it is where greedy decisions are made).

Precision is OpenVINO's INFERENCE_PRECISION_HINT: "f32", or "bf16" (its default
on CPUs with AVX-512 BF16 or AMX). Reduced precision can change captions, so the
loader only uses a precision whose agreement with onnxruntime f32 was measured
and recorded for this very graph (capbatch/encoder_runtime.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BundleError, MissingDependencyError

OPENVINO_HINTS = {"f32": "f32", "bf16": "bf16"}
# What the loader's checks read from a session's inputs/outputs, in onnxruntime's words.
_TYPE_NAMES = {
    "u8": "tensor(uint8)",
    "f32": "tensor(float)",
    "f16": "tensor(float16)",
    "i64": "tensor(int64)",
    "i32": "tensor(int32)",
}


def import_openvino():
    try:
        import openvino
    except ImportError as exc:
        raise MissingDependencyError(
            "openvino is not installed: pip install 'capbatch[openvino]' "
            "(or use the default encoder runtime, onnxruntime)"
        ) from exc
    return openvino


def openvino_version() -> str | None:
    try:
        return import_openvino().get_version()
    except MissingDependencyError:
        return None


@dataclass(frozen=True)
class PortInfo:
    """The fields of onnxruntime's NodeArg that Bundle's checks use."""

    name: str
    type: str
    shape: list[Any]


def _port_info(port) -> PortInfo:
    shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
    element = port.get_element_type().get_type_name()
    return PortInfo(port.get_any_name(), _TYPE_NAMES.get(element, f"tensor({element})"), shape)


class OpenVinoEncoder:
    """A compiled OpenVINO model with onnxruntime's run/get_inputs/get_outputs.

    One infer request, reused and locked: an onnxruntime session may be run from
    several threads at once, an OpenVINO infer request may not. Outputs are copied
    out of OpenVINO's buffers, which the next call overwrites.
    """

    def __init__(self, model_bytes: bytes, precision: str, threads: int | None = None):
        if precision not in OPENVINO_HINTS:
            raise ValueError(f"openvino precision must be one of {sorted(OPENVINO_HINTS)}")
        ov = import_openvino()
        core = ov.Core()
        config = {
            "INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision],
            # One stream, latency mode: Bundle.encode calls the model one chunk at a
            # time and the decode pool needs the remaining cores.
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            model = core.read_model(model_bytes)  # the verified bytes, never the path
            self._compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError with pages of detail
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BundleError(f"openvino cannot load the encoder: {first}") from exc
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()
        self._inputs = [_port_info(p) for p in self._compiled.inputs]
        self._outputs = [_port_info(p) for p in self._compiled.outputs]
        self.precision = precision
        self.version = ov.get_version()
        # What OpenVINO actually runs (a CPU without bf16 support runs f32) and on
        # what: kernels, hence numerics, differ between ISAs (AVX-512 BF16 vs AMX).
        hint = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        self.effective_precision = getattr(hint, "get_type_name", hint.__str__)()
        self.device_name = str(core.get_property("CPU", "FULL_DEVICE_NAME"))

    def get_inputs(self) -> list[PortInfo]:
        return list(self._inputs)

    def get_outputs(self) -> list[PortInfo]:
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        return [f"OpenVINO-CPU-{self.precision}"]

    def run(self, output_names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            results = self._request.infer(feeds)
            by_name = {port.get_any_name(): value for port, value in results.items()}
            return [np.array(by_name[name], copy=True) for name in output_names]
