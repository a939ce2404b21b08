"""Export + validate the design-sized ResNet-50 model (random weights); time int8 vs fp32.

    python benchmarks/export_resnet50.py [--out DIR] [--vocab 5000] [--repeats 3]

Prints graph sizes, export/validation time, max abs diff per output, and the
int8 and fp16 variants' caption agreement with fp32 and CPU speed (encoder on a
batch of 8 + 30 decoder steps). Random weights give near-ties in the argmax, so
agreement here is a lower bound for a trained model.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def write_checkpoint(path: Path, vocab_size: int) -> Path:
    import torch
    from capbatch.training.checkpoint import save_checkpoint
    from capbatch.training.config import ModelConfig
    from capbatch.training.model import build_model

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=vocab_size, encoder="resnet50")  # design sizes 300/256/512
    model = build_model(config, pretrained=False).eval()
    vocab = ["<pad>", "<start>", "<end>", "<unk>"] + [f"w{i}" for i in range(vocab_size - 4)]
    tokenizer = {"model": {"type": "WordLevel", "vocab": {t: i for i, t in enumerate(vocab)}}}
    return save_checkpoint(path, model, json.dumps(tokenizer), metrics={"random_weights": True})


def time_bundle(bundle: Path, images: np.ndarray, repeats: int) -> float:
    """Best-of-`repeats` seconds for encoder(batch) + 30 greedy steps."""
    from capbatch.export.validate import ort_session

    encoder, step = ort_session(bundle / "encoder.onnx"), ort_session(bundle / "decoder_step.onnx")
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        features, projected, h, c = encoder.run(None, {"images": images})
        tokens = np.ones(len(images), dtype=np.int64)
        for _ in range(30):
            feeds = {"tokens": tokens, "h": h, "c": c, "features": features, "projected": projected}
            log_probs, h, c, _ = step.run(None, feeds)
            tokens = log_probs.argmax(-1).astype(np.int64)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--vocab", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from capbatch.export.convert import export_bundle, variant_dir
    from capbatch.export.validate import generated_images

    work = args.out or Path(tempfile.mkdtemp(prefix="export-r50-"))
    checkpoint = write_checkpoint(work / "r50.pt", args.vocab)
    start = time.perf_counter()
    export_bundle(checkpoint, work / "unvalidated", validate=False)
    print(f"export only (--no-validate): {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    bundle = export_bundle(checkpoint, work / "bundle", fp16=True, int8=True, force=True)
    print(f"export + validation + fp16/int8 variants: {time.perf_counter() - start:.1f} s")
    manifest = json.loads((bundle / "manifest.json").read_text())
    validation = manifest["validation"]
    print("max abs diff (tolerance):")
    for name, diff in validation["max_abs_diff"].items():
        print(f"  {name:10s} {diff:.2e} ({validation['tolerance'][name]:.1e})")
    print(
        f"greedy captions ORT == torch: {validation['caption_agreement']:.0%} of "
        f"{validation['images']} (near-ties: {validation['near_ties']})"
    )
    images = generated_images(224, 8, seed=1)
    fp32_s = time_bundle(bundle, images, args.repeats)
    for variant in ("fp32", "fp16", "int8"):
        path = variant_dir(bundle, variant)
        sizes = ", ".join(
            f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in sorted(path.glob("*.onnx"))
        )
        seconds = fp32_s if variant == "fp32" else time_bundle(path, images, args.repeats)
        agreement = json.loads((path / "manifest.json").read_text())["validation"][
            "caption_agreement"
        ]
        print(
            f"{variant}: {sizes}; batch 8 + 30 steps {seconds * 1000:.0f} ms "
            f"({fp32_s / seconds:.2f}x fp32); caption agreement with fp32 {agreement:.0%}"
        )


if __name__ == "__main__":
    main()
