"""Per-graph I/O names, dtypes, dynamic axes and validation tolerances, declared once.

Everything else (the exporter, the validator, the manifest, docs/bundle-format.md)
reads these; the runtime reads the names back from the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_OPSET = 17
MIN_OPSET = 17
BATCH_AXIS = "batch"
# Traced at batch 2 and validated at other sizes, so a batch size baked into
# the graph by accident shows up as a shape failure.
TRACE_BATCH = 2
VALIDATION_BATCHES = (1, 3, 7)
VALIDATION_STEPS = 30
# Variants (fp16, int8) must caption the validation images like fp32 at least
# this often, or export refuses to write them (unless forced).
VARIANT_MIN_AGREEMENT = 0.97
# Kept in float32 in the fp16 variant: normalisations whose sums overflow or lose
# precision in half precision.
FP16_BLOCKED_OPS = ("Softmax", "LogSoftmax", "TopK")
# Dynamic int8 quantises these ops' weights (the step graph's LSTM/attention/output
# projections). Convs stay float: see docs/export.md for the measurement.
INT8_OPS = ("MatMul", "Gemm")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output.

    `atol` is the fp32 max-abs-diff tolerance of an output (ORT vs PyTorch).
    When `relative` is set, the tolerance scales with the reference's peak
    magnitude (atol * max(1, max|ref|)): backbone features of a ResNet-50
    reach the hundreds, the LSTM cell state is unbounded (it grows over 30
    steps with random weights), and float32 carries ~7 significant digits.
    Bounded outputs (h in [-1, 1], alpha in [0, 1], log_probs) use atol as is.
    """

    name: str
    dtype: str  # numpy dtype name
    shape: tuple[str | int, ...]  # symbolic axis names or fixed sizes
    atol: float | None = None
    relative: bool = False

    def __post_init__(self) -> None:
        if self.atol is not None and self.atol <= 0:
            raise ValueError(f"{self.name}: atol must be positive")

    def tolerance_for(self, peak: float) -> float:
        if self.atol is None:
            raise ValueError(f"{self.name} is not compared by value")
        return self.atol * max(1.0, peak) if self.relative else self.atol


@dataclass(frozen=True)
class GraphSpec:
    key: str  # manifest key under "graphs"
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Every input and output has a dynamic batch axis 0; nothing else is dynamic."""
        return {t.name: {0: BATCH_AXIS} for t in (*self.inputs, *self.outputs)}


FP32_ATOL = 1e-4

ENCODER = GraphSpec(
    key="encoder",
    file="encoder.onnx",
    inputs=(TensorSpec("images", "uint8", (BATCH_AXIS, "size", "size", 3)),),
    outputs=(
        TensorSpec("features", "float32", (BATCH_AXIS, "L", "D"), FP32_ATOL, relative=True),
        TensorSpec("projected", "float32", (BATCH_AXIS, "L", "A"), FP32_ATOL, relative=True),
        TensorSpec("h0", "float32", (BATCH_AXIS, "H"), FP32_ATOL),
        TensorSpec("c0", "float32", (BATCH_AXIS, "H"), FP32_ATOL, relative=True),
    ),
)

TOPK_OUTPUTS = (
    TensorSpec("topk_log_probs", "float32", (BATCH_AXIS, "K"), FP32_ATOL),
    # ids are compared by the greedy/caption check, not by value: ties may order differently.
    TensorSpec("topk_ids", "int64", (BATCH_AXIS, "K")),
)


def decoder_step_spec(top_k: int = 0) -> GraphSpec:
    """The step graph; with top_k > 0 it also emits the k best (log-prob, id) pairs."""
    if top_k < 0:
        raise ValueError("top_k must be >= 0")
    outputs = (
        TensorSpec("log_probs", "float32", (BATCH_AXIS, "V"), FP32_ATOL),
        TensorSpec("h_out", "float32", (BATCH_AXIS, "H"), FP32_ATOL),
        TensorSpec("c_out", "float32", (BATCH_AXIS, "H"), FP32_ATOL, relative=True),
        TensorSpec("alpha", "float32", (BATCH_AXIS, "L"), FP32_ATOL),
    )
    return GraphSpec(
        key="decoder_step",
        file="decoder_step.onnx",
        inputs=(
            TensorSpec("tokens", "int64", (BATCH_AXIS,)),
            TensorSpec("h", "float32", (BATCH_AXIS, "H")),
            TensorSpec("c", "float32", (BATCH_AXIS, "H")),
            TensorSpec("features", "float32", (BATCH_AXIS, "L", "D")),
            TensorSpec("projected", "float32", (BATCH_AXIS, "L", "A")),
        ),
        outputs=outputs + (TOPK_OUTPUTS if top_k else ()),
    )


DECODER_STEP = decoder_step_spec()
