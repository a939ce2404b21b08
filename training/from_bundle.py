"""A training checkpoint rebuilt from an exported bundle's ONNX graphs.

Fine-tuning the shipped model needs its PyTorch weights, and only its bundle
is kept (a checkpoint is ~45 MB more in the repository). Every weight is in the
two graphs: the decoder's under their state_dict names, the attention's A and
U as MatMul constants, and the encoder's convolutions with their BatchNorm
folded in (the exporter fuses Conv+BatchNorm in eval mode). The fused weight
goes into the convolution and the fused bias into its BatchNorm as beta, with
gamma 1, mean 0 and variance 1 - eps, so the BatchNorm is the identity plus
the bias in eval mode. It is NOT that in train mode (batch statistics): fine-
tune such a checkpoint with `--frozen-batchnorm`.

    python -m capbatch.training.from_bundle capbatch/models/default --out runs/v1.pt

checks the rebuilt model against the bundle's graphs on the given images
(--check-images, default samples/) and refuses to write a checkpoint whose
outputs differ beyond float rounding.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from capbatch.errors import CheckpointError
from capbatch.manifest import read_manifest

from .checkpoint import save_checkpoint
from .config import ModelConfig
from .model import EncoderDecoder, build_model

# Largest difference accepted between the rebuilt model and the bundle's
# graphs on the check images (float32 rounding of a different op order).
TOLERANCE = {"features": 2e-3, "h0": 1e-4, "c0": 1e-4}


def _initializers(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def _constants(graph) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs by name: the exporter uses both."""
    from onnx import numpy_helper

    values = _initializers(graph)
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _conv_pairs(encoder: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d | None]]:
    """Each convolution in forward order with the BatchNorm that follows it."""
    modules = list(encoder.modules())
    pairs = []
    for i, module in enumerate(modules):
        if isinstance(module, nn.Conv2d):
            follower = next(
                (m for m in modules[i + 1 :] if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))),
                None,
            )
            pairs.append((module, follower if isinstance(follower, nn.BatchNorm2d) else None))
    return pairs


def _set(param: torch.Tensor, value: np.ndarray, what: str) -> None:
    if tuple(param.shape) != value.shape:
        raise CheckpointError(f"{what}: graph has {value.shape}, the model {tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(torch.from_numpy(np.array(value, dtype=np.float32)))


def _load_encoder(model: EncoderDecoder, encoder_graph) -> None:
    values = _constants(encoder_graph)
    convs = [n for n in encoder_graph.node if n.op_type == "Conv"]
    pairs = _conv_pairs(model.encoder.stages)
    if len(convs) != len(pairs):
        raise CheckpointError(
            f"encoder graph has {len(convs)} convolutions, the model {len(pairs)}"
        )
    for index, (node, (conv, bn)) in enumerate(zip(convs, pairs, strict=True)):
        weight = values[node.input[1]]
        bias = values[node.input[2]] if len(node.input) > 2 else np.zeros(weight.shape[0])
        _set(conv.weight, weight, f"convolution {index}")
        if bn is None:
            if conv.bias is None:
                raise CheckpointError(f"convolution {index} has a bias and no BatchNorm")
            _set(conv.bias, bias, f"convolution {index} bias")
            continue
        _set(bn.bias, bias.astype(np.float32), f"BatchNorm {index}")
        with torch.no_grad():
            bn.weight.fill_(1.0)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
    state = model.state_dict()
    for name in ("decoder.init_h.weight", "decoder.init_h.bias", "decoder.init_c.weight",
                 "decoder.init_c.bias", "decoder.attention.U.bias"):  # fmt: skip
        _set(state[name], values[name], name)
    # U's weight is the encoder graph's one MatMul constant (features @ U^T).
    matmuls = [n for n in encoder_graph.node if n.op_type == "MatMul"]
    u_weights = [values[i] for n in matmuls for i in n.input if i in values]
    if len(u_weights) != 1:
        raise CheckpointError("encoder graph: expected one MatMul constant (attention U)")
    _set(state["decoder.attention.U.weight"], u_weights[0].T, "decoder.attention.U.weight")


def _load_decoder(model: EncoderDecoder, step_graph) -> None:
    values = _constants(step_graph)
    state = model.state_dict()
    for name, tensor in state.items():
        if name in values:
            _set(tensor, values[name], name)
    # A's weight: the MatMul constant of shape (attention_dim, 1) (tanh(...) @ A^T).
    a_weights = [
        values[i]
        for n in step_graph.node
        if n.op_type == "MatMul"
        for i in n.input
        if i in values and values[i].ndim == 2 and values[i].shape[1] == 1
    ]
    if len(a_weights) != 1:
        raise CheckpointError("decoder step graph: expected one MatMul constant (attention A)")
    _set(state["decoder.attention.A.weight"], a_weights[0].T, "decoder.attention.A.weight")
    for name in ("decoder.embedding.weight", "decoder.fc.weight", "decoder.lstm.weight_ih"):
        if name not in values:
            raise CheckpointError(f"decoder step graph lacks {name}")


def model_from_bundle(bundle: Path) -> tuple[EncoderDecoder, dict]:
    """(eval-mode model with the bundle's weights, its manifest as a dict)."""
    import onnx

    manifest = read_manifest(bundle)
    raw = dict(manifest.raw)
    if raw.get("variant", "fp32") != "fp32":
        raise CheckpointError(f"{bundle}: only fp32 bundles can be turned back into weights")
    config = ModelConfig.from_dict(raw["config"])
    model = build_model(config, pretrained=False).eval()
    _load_encoder(model, onnx.load(bundle / manifest.encoder.file).graph)
    _load_decoder(model, onnx.load(bundle / manifest.decoder_step.file).graph)
    return model.eval(), raw


def check_against_bundle(model: EncoderDecoder, bundle: Path, images: list[Path]) -> dict:
    """Largest difference of features/h0/c0 between the model and the bundle's encoder."""
    import onnxruntime as ort

    from .features import load_image

    session = ort.InferenceSession(str(bundle / "encoder.onnx"), providers=["CPUExecutionProvider"])
    spec = model.config.preprocess
    pixels = np.stack([load_image(p, spec) for p in images])  # what training feeds it
    ours = {}
    with torch.inference_mode():
        features = model.encoder(torch.from_numpy(pixels))
        ours["features"] = features.numpy()
        _, h0, c0 = model.decoder.init_state(features)
        ours["h0"], ours["c0"] = h0.numpy(), c0.numpy()
    names = [o.name for o in session.get_outputs()]
    theirs = dict(zip(names, session.run(None, {"images": pixels}), strict=True))
    return {k: float(np.abs(ours[k] - theirs[k]).max()) for k in TOLERANCE}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m capbatch.training.from_bundle", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    parser.add_argument("--check-images", type=Path, default=Path("samples"))
    args = parser.parse_args(argv)
    try:
        model, raw = model_from_bundle(args.bundle)
        images = sorted(
            p for p in args.check_images.iterdir() if p.suffix.lower() in (".jpg", ".png")
        )
        if not images:
            raise CheckpointError(f"no .jpg/.png images in {args.check_images} to check against")
        diffs = check_against_bundle(model, args.bundle, images)
    except (CheckpointError, OSError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("max |rebuilt - bundle| on", len(images), "images:",
          ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))  # fmt: skip
    bad = [k for k, v in diffs.items() if v > TOLERANCE[k]]
    if bad:
        print(f"error: the rebuilt model differs from the bundle on {', '.join(bad)}",
              file=sys.stderr)  # fmt: skip
        return 1
    tokenizer_json = (args.bundle / "tokenizer.json").read_text(encoding="utf-8")
    save_checkpoint(
        args.out, model, tokenizer_json, vocab_style=raw["vocab"]["style"],
        metrics=raw.get("metrics", {}), epoch=int(raw.get("epoch", 0)),
        extra={"from_bundle": raw["model_id"], "max_abs_diff": diffs},
    )  # fmt: skip
    print(f"wrote {args.out} (from bundle {raw['model_id']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
