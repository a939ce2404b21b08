"""Static int8 (QDQ, per-channel) encoders for onnxruntime, calibrated on real scenes.

Issue 17's "int8 done properly": activations calibrated on training-split scene
images (never the held-out splits the gate measures), per-channel int8 weights,
uint8 activations (u8s8: the VNNI path of onnxruntime's x86 kernels), QDQ format
so onnxruntime fuses DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv,
and the sensitive nodes left in float: the input normalisation, the colour grid
and feature taps (AveragePool), the position features and feature concat, and the
final projections (U, init_h, init_c). Only Conv is quantised; `plan` chooses
which convs (see QUANT_PLANS).

Each candidate becomes a variant bundle (`<out>-int8s-<plan>`) gated by
export/precision.py on held-out splits; `placement` reports where the QDQ pairs
landed and whether onnxruntime fused them, so a slow or unfused graph is visible.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from capbatch.manifest import MANIFEST_FILE, read_manifest, sha256_file

# Never quantised: sensitive branches whose error reaches every caption (module docstring).
SENSITIVE_PREFIXES = (
    "/encoder/Sub",
    "/encoder/Div",
    "/encoder/AveragePool",
    "/encoder/Concat",
    "/encoder/Expand",
    "/ReduceMean",
    "/U/",
    "/init_h/",
    "/init_c/",
)
# Which convs a plan quantises (the rest of the backbone stays float):
#   all     every Conv but the stem and the 1280-channel head
#   pointwise  1x1 convs only (depthwise convs carry little compute and much error)
QUANT_PLANS = ("all", "pointwise")


def _is_first_or_head(name: str) -> bool:
    return "/stages.0/stages.0.0/" in name or "/stages.7/" in name


def convs_to_quantize(model, plan: str) -> list[str]:
    if plan not in QUANT_PLANS:
        raise ValueError(f"plan must be one of {QUANT_PLANS}, got {plan!r}")
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv" or node.name.startswith(SENSITIVE_PREFIXES):
            continue
        if _is_first_or_head(node.name):
            continue
        if plan == "pointwise" and "conv_dw" in node.name:
            continue
        names.append(node.name)
    return names


class _Reader:
    """onnxruntime CalibrationDataReader over uint8 image batches."""

    def __init__(self, pixels: np.ndarray, batch: int = 8):
        self._batches = iter([pixels[i : i + batch] for i in range(0, len(pixels), batch)])

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {"images": batch}


def quantize_encoder(
    source: Path,
    target: Path,
    calibration: np.ndarray,
    *,
    plan: str = "all",
    method: str = "minmax",
) -> list[str]:
    """Write a QDQ int8 encoder; returns the quantised node names."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(source))
    nodes = convs_to_quantize(model, plan)
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    quantize_static(
        model,
        str(target),
        _Reader(calibration),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv"],
        nodes_to_quantize=nodes,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=methods[method],
        extra_options={"CalibPercentile": 99.999, "ActivationSymmetric": False},
    )
    return nodes


def placement(path: Path) -> dict:
    """QDQ pairs written, and what onnxruntime's optimiser turned them into."""
    import onnx
    import onnxruntime as ort

    written = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    optimized = path.with_name(path.stem + ".optimized.onnx")
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    fused = Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)
    optimized.unlink()
    keys = ("QuantizeLinear", "DequantizeLinear", "Conv", "QLinearConv", "FusedConv")
    return {
        "written": {k: written.get(k, 0) for k in keys},
        "optimized": {k: fused.get(k, 0) for k in keys if fused.get(k, 0)},
    }


def write_variant_bundle(fp32_dir: Path, out_dir: Path, encoder: Path, record: dict) -> Path:
    """A sibling bundle: fp32's files with this encoder, hashes and the record updated."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(fp32_dir, out_dir)
    manifest = dict(read_manifest(fp32_dir).raw)
    graph = manifest["graphs"]["encoder"]["file"]
    shutil.copyfile(encoder, out_dir / graph)
    manifest["files"] = {**manifest["files"], graph: sha256_file(out_dir / graph)}
    manifest["variant"] = record["variant"]
    manifest["model_id"] = f"{manifest['model_id']}-{record['variant']}"
    manifest["validation"] = record
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out_dir


def calibration_images(scenes: Path, spec, n: int, seed: int = 0) -> np.ndarray:
    """n training-split scenes (seeded choice), never a held-out split."""
    from .precision import load_images

    train = json.loads((Path(scenes) / "splits.json").read_text(encoding="utf-8"))["train"]
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(train), size=min(n, len(train)), replace=False).tolist())
    return load_images([Path(scenes) / "images" / train[i] for i in chosen], spec)


def iter_plans(plans: Sequence[str], methods: Sequence[str]) -> Iterator[tuple[str, str]]:
    for plan in plans:
        for method in methods:
            yield plan, method
