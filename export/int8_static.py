"""Static int8 (QDQ, per-channel) encoders for onnxruntime, calibrated on real scenes.

Issue 17's "int8 done properly": activations calibrated on training-split scene
images (never the held-out splits the gate measures), per-channel int8 weights,
uint8 activations (u8s8: the VNNI path of onnxruntime's x86 kernels), QDQ format
so onnxruntime fuses DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv,
and the sensitive nodes left in float: the input normalisation, the colour grid
and feature taps (AveragePool), the position features and feature concat, and the
final projections (U, init_h, init_c). Only Conv is quantised; `plan` chooses
which convs (see QUANT_PLANS).

Each candidate is gated by export/precision.py on the held-out splits and
written as a variant bundle (`<out>-int8s-<plan>-<method>`, its manifest's
`validation` holding the per-split agreement) only if it passes (or with
--force, recorded as failing); `placement` reports where the QDQ pairs landed
and what onnxruntime fused them into, so a slow or unfused graph is visible.

    python -m capbatch.export.int8_static --bundle capbatch/models/default \
        --out /tmp/pv/int8/default --scenes /tmp/pv/scenes --samples samples \
        --plans all,pointwise --methods minmax,percentile
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from capbatch.manifest import MANIFEST_FILE, read_manifest, sha256_file
from capbatch.output.durable import write_file

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
    options.log_severity_level = 3  # not the "hardware specific optimizations" warning
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
    write_file(out_dir / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    return out_dir


def calibration_images(scenes: Path, spec, n: int, seed: int = 0) -> np.ndarray:
    """n training-split scenes (seeded choice), never a held-out split."""
    from .precision import load_images

    train = json.loads((Path(scenes) / "splits.json").read_text(encoding="utf-8"))["train"]
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(train), size=min(n, len(train)), replace=False).tolist())
    return load_images([Path(scenes) / "images" / train[i] for i in chosen], spec)


def build_and_gate(
    bundle: Path, out: Path, scenes: Path, samples: Path | None, *, plan: str, method: str,
    calibration: int = 256, force: bool = False,
) -> dict:
    """Quantise, measure on the held-out splits, write the variant bundle only if it passes."""
    from capbatch.bundle import load_bundle

    from .precision import failing_splits, gate, held_out_sets, measure_agreement, scene_truth

    spec = read_manifest(bundle).preprocess
    variant = f"int8s-{plan}-{method}"
    target = out.parent / f"{out.name}-{variant}"
    with tempfile.TemporaryDirectory() as work:
        encoder = Path(work) / "encoder.onnx"
        nodes = quantize_encoder(
            bundle / "encoder.onnx", encoder, calibration_images(scenes, spec, calibration),
            plan=plan, method=method,
        )  # fmt: skip
        staged = write_variant_bundle(bundle, Path(work) / "bundle", encoder, {"variant": variant})
        splits = measure_agreement(
            load_bundle(bundle, device="cpu"),
            load_bundle(staged, device="cpu"),
            held_out_sets(spec, scenes, samples),
            scene_truth(scenes, samples),
        )
        record = {
            "variant": variant,
            "reference": "onnxruntime-f32",
            "quantised_convs": len(nodes),
            "calibration": {"split": "train", "images": calibration, "method": method},
            "placement": placement(encoder),
            "splits": splits,
            "passed": not failing_splits(splits),
            "forced": bool(force and failing_splits(splits)),
        }
        gate(f"the {variant} encoder", splits, force)  # refused: nothing is written
        write_variant_bundle(bundle, target, encoder, record)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import sys

    from capbatch.errors import CapbatchError

    from .precision import table

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="variants go to OUT-int8s-*")
    parser.add_argument("--scenes", type=Path, required=True)
    parser.add_argument("--samples", type=Path)
    parser.add_argument("--plans", default="pointwise", help=f"comma list of {QUANT_PLANS}")
    parser.add_argument("--methods", default="percentile", help="comma list: minmax,percentile")
    parser.add_argument("--calibration", type=int, default=256, help="training images")
    parser.add_argument("--force", action="store_true", help="write failing variants too")
    args = parser.parse_args(argv)
    status = 0
    for plan, method in iter_plans(args.plans.split(","), args.methods.split(",")):
        try:
            record = build_and_gate(
                args.bundle, args.out, args.scenes, args.samples, plan=plan, method=method,
                calibration=args.calibration, force=args.force,
            )  # fmt: skip
            print(f"{record['variant']}: {record['placement']}")
            print(table(record["splits"]))
        except CapbatchError as exc:
            print(f"capbatch: error: {exc}", file=sys.stderr)
            status = 2
    return status


def iter_plans(plans: Sequence[str], methods: Sequence[str]) -> Iterator[tuple[str, str]]:
    for plan in plans:
        for method in methods:
            yield plan, method


if __name__ == "__main__":
    raise SystemExit(main())
