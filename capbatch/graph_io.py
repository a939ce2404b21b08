"""The graph contract of a bundle (its input and output names) and the step model
that keeps a decoder's state on the device (IO binding).

Split from capbatch.bundle, which loads bundles; both runtimes' step loops use
these names (capbatch.decoding holds the loop itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .decoding import RowState, StepOutput

# The graph contract of docs/bundle-format.md: what the runtime needs, beyond
# which a bundle may carry extra outputs (topk_*). A torch-free copy of the names
# declared in export/specs.py (the runtime does not import the exporter);
# tests/runtime/test_bundle.py checks that the two are equal.
ENCODER_INPUTS = ("images",)
ENCODER_OUTPUTS = ("features", "projected", "h0", "c0")
STEP_INPUTS = ("tokens", "h", "c", "features", "projected")
STEP_OUTPUTS = ("log_probs", "h_out", "c_out", "alpha")
# The same names one by one, for the feeds and IO bindings below.
(IMAGES,) = ENCODER_INPUTS
TOKENS, H, C, FEATURES, PROJECTED = STEP_INPUTS
LOG_PROBS, H_OUT, C_OUT, ALPHA = STEP_OUTPUTS
# Most images per encoder.run on CPU (see Bundle.encode).
ENCODER_CHUNK = 16

ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
}


@dataclass(frozen=True)
class Encoded:
    """encoder.onnx outputs for a batch of images, computed once per image."""

    features: np.ndarray  # (B, L, D)
    projected: np.ndarray  # (B, L, A)
    h0: np.ndarray  # (B, H)
    c0: np.ndarray  # (B, H)


class BoundStepModel:
    """StepModel with IO binding: h/c and the per-row features stay on the device.

    log_probs and alpha come back to the host each step (the loop needs them);
    h/c only travel when rows are dropped or reordered (beam parents), and
    features/projected are uploaded once per row->image map. Used on CUDA; with
    device_type="cpu" the same code runs on any onnxruntime, which is how the
    tests cover it.
    """

    def __init__(
        self,
        session,
        encoded: Encoded,
        start_id: int,
        end_id: int,
        *,
        device_type: str = "cuda",
        device_id: int = 0,
    ):
        import onnxruntime as ort

        self._ort, self._session = ort, session
        self._device_type, self._device_id = device_type, device_id
        self._encoded = encoded
        self.start_id, self.end_id = int(start_id), int(end_id)
        self.num_images = int(encoded.features.shape[0])
        self._dtypes = {i.name: ORT_TYPES.get(i.type, np.float32) for i in session.get_inputs()}
        self._cache_key: bytes | None = None
        self._rows_inputs: tuple[Any, Any] | None = None

    def _to_device(self, array: np.ndarray, name: str):
        array = np.ascontiguousarray(array.astype(self._dtypes[name], copy=False))
        return self._ort.OrtValue.ortvalue_from_numpy(array, self._device_type, self._device_id)

    def _features_for(self, images: np.ndarray):
        key = images.tobytes()
        if key != self._cache_key or self._rows_inputs is None:
            self._rows_inputs = (
                self._to_device(self._encoded.features[images], FEATURES),  # (R, L, D)
                self._to_device(self._encoded.projected[images], PROJECTED),  # (R, L, A)
            )
            self._cache_key = key
        return self._rows_inputs

    def initial_state(self) -> RowState:
        images = np.arange(self.num_images, dtype=np.int64)
        return RowState(
            images, self._to_device(self._encoded.h0, H), self._to_device(self._encoded.c0, C)
        )

    def step(self, tokens: np.ndarray, state: RowState) -> StepOutput:
        features, projected = self._features_for(state.images)
        binding = self._session.io_binding()
        binding.bind_cpu_input(TOKENS, tokens.astype(self._dtypes[TOKENS], copy=False))
        binding.bind_ortvalue_input(H, state.h)
        binding.bind_ortvalue_input(C, state.c)
        binding.bind_ortvalue_input(FEATURES, features)
        binding.bind_ortvalue_input(PROJECTED, projected)
        binding.bind_output(LOG_PROBS, "cpu")
        binding.bind_output(H_OUT, self._device_type, self._device_id)
        binding.bind_output(C_OUT, self._device_type, self._device_id)
        binding.bind_output(ALPHA, "cpu")
        self._session.run_with_iobinding(binding)
        # get_outputs() follows the order of the bind_output calls above.
        log_probs, h_out, c_out, alpha = binding.get_outputs()
        return StepOutput(
            log_probs.numpy().astype(np.float32, copy=False),
            alpha.numpy().astype(np.float32, copy=False),
            RowState(state.images, h_out, c_out),
        )

    def select(self, state: RowState, rows: np.ndarray) -> RowState:
        if rows.shape[0] == state.images.shape[0] and np.array_equal(
            rows, np.arange(rows.shape[0])
        ):
            return state
        # h/c are small (R, H): a host round trip is cheaper than a gather graph.
        return RowState(
            state.images[rows],
            self._to_device(state.h.numpy()[rows], H),
            self._to_device(state.c.numpy()[rows], C),
        )
