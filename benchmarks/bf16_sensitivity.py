"""Where OpenVINO bf16's caption changes come from: the feature groups, the tail.

    python benchmarks/bf16_sensitivity.py --scenes /tmp/pv/scenes --out-json /tmp/bf16.json

Encodes the held-out splits with onnxruntime f32 and OpenVINO bf16, then decodes
(greedy, onnxruntime step graph) from features where only one group of feature
channels carries the bf16 error — the backbone's last stage, the feature taps,
the colour grid, the position features — with the tail (U projection, init_h,
init_c) recomputed in numpy f32 from those features. Counts captions identical to
f32. Not a timing benchmark: valid on a loaded machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BACKBONE_CHANNELS = {"efficientnet_lite0": 1280, "resnet50": 2048}


def feature_groups(config: dict, dim: int) -> dict[str, tuple[int, int]]:
    """Channel ranges of `features`: backbone, taps, colour grid, positions (concat order)."""
    backbone = BACKBONE_CHANNELS[config["encoder"]]
    colour = 3 * config.get("colour_grid", 0) ** 2
    positions = 2 if config.get("position_features") else 0
    taps = dim - backbone - colour - positions
    edges = np.cumsum([0, backbone, taps, colour, positions])
    names = ("backbone", "taps", "colour_grid", "positions")
    return {n: (int(a), int(b)) for n, a, b in zip(names, edges[:-1], edges[1:]) if b > a}


def tail_weights(encoder_path: Path) -> dict[str, np.ndarray]:
    """U (D, A) + bias and init_h/init_c (H, D) + biases, read from the encoder graph."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(encoder_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    u, u_add = nodes["/U/MatMul"], nodes["/U/Add"]
    h, c = nodes["/init_h/Gemm"], nodes["/init_c/Gemm"]
    return {
        "U": inits[u.input[1]],
        "U_bias": inits[next(i for i in u_add.input if i in inits)],
        "Wh": inits[h.input[1]], "bh": inits[h.input[2]],
        "Wc": inits[c.input[1]], "bc": inits[c.input[2]],
    }  # fmt: skip


def tail(features: np.ndarray, w: dict):
    from capbatch.bundle import Encoded

    mean = features.mean(axis=1)  # (B, D)
    return Encoded(
        features,
        (features @ w["U"] + w["U_bias"]).astype(np.float32),  # (B, L, A)
        (mean @ w["Wh"].T + w["bh"]).astype(np.float32),  # (B, H)
        (mean @ w["Wc"].T + w["bc"]).astype(np.float32),
    )


def main(argv=None) -> dict:
    from capbatch.export.precision import held_out_sets

    from capbatch.bundle import load_bundle
    from capbatch.decoding import DecodingOptions, greedy_decode

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "capbatch" / "models" / "default")
    parser.add_argument("--scenes", type=Path, required=True)
    parser.add_argument("--samples", type=Path, default=REPO / "samples")
    parser.add_argument("--out-json", type=Path, required=True)
    args = parser.parse_args(argv)
    ref = load_bundle(args.bundle, device="cpu")
    bf16 = load_bundle(args.bundle, device="cpu", encoder_runtime="openvino", precision="bf16",
                       require_agreement=False)  # fmt: skip
    weights = tail_weights(args.bundle / ref.manifest.encoder.file)
    options = DecodingOptions(max_len=ref.max_len)

    def tokens(encoded_batches):
        return [tuple(h.tokens) for e in encoded_batches
                for h in greedy_decode(ref.step_model(e), options)]  # fmt: skip

    results = {}
    for image_set in held_out_sets(ref.preprocess, args.scenes, args.samples):
        chunks = [image_set.pixels[i : i + 32] for i in range(0, len(image_set.pixels), 32)]
        f32 = [ref.encode(c).features for c in chunks]
        low = [bf16.encode(c).features for c in chunks]
        want = tokens(ref.encode(c) for c in chunks)
        groups = feature_groups(dict(ref.manifest.raw["config"]), f32[0].shape[-1])
        row = {
            "images": len(want),
            "bf16 encoder": sum(map(tuple.__eq__, want, tokens(bf16.encode(c) for c in chunks))),
            "f32 features, numpy tail": sum(map(tuple.__eq__, want, tokens(tail(f, weights) for f in f32))),
            "bf16 features, numpy f32 tail": sum(map(tuple.__eq__, want, tokens(tail(f, weights) for f in low))),
        }  # fmt: skip
        for name, (a, b) in groups.items():
            mixed = []
            for exact, rough in zip(f32, low):
                features = exact.copy()
                features[:, :, a:b] = rough[:, :, a:b]  # only this group carries bf16 error
                mixed.append(tail(features, weights))
            row[f"bf16 only in {name} [{a}:{b}]"] = sum(map(tuple.__eq__, want, tokens(mixed)))
        results[image_set.name] = row
        print(image_set.name, row, flush=True)
    args.out_json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
