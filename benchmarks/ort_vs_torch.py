"""Exported vs PyTorch greedy captions on a whole split, not just the export's samples.

    python benchmarks/ort_vs_torch.py --ckpt runs/v2/best.pt --bundle runs/v2/bundle \
        --scenes data/scenes-v2 --split test --out-json benchmarks/results/ort_vs_torch.json

Runs the checkpoint (PyTorch, CPU) and the bundle's two graphs (onnxruntime,
CPU, the runtime's own greedy loop) on the same preprocessed images, in
batches, and counts the images whose greedy tokens are identical. A divergence
is classified as a near tie (the two tokens' onnxruntime log-probs, teacher-
forced on PyTorch's prefix, within --tie-gap) or not, as export validation
does on its samples. Needs the train and export extras.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from capbatch.export.validate import divergence, ort_greedy, ort_session, torch_greedy
from capbatch.training.checkpoint import load_checkpoint, model_from_checkpoint
from capbatch.training.features import load_image
from capbatch.training.scenes import load_splits


def compare(model, bundle: Path, paths: list[Path], batch: int, tie_gap: float) -> dict:
    config = model.config
    encoder, step = ort_session(bundle / "encoder.onnx"), ort_session(bundle / "decoder_step.onnx")
    same, near_ties, different = 0, [], []
    for start in range(0, len(paths), batch):
        chunk = paths[start : start + batch]
        images = np.stack([load_image(p, config.preprocess) for p in chunk])
        ours = ort_greedy(encoder, step, images, start_id=config.start_id,
                          end_id=config.end_id, max_len=config.max_len)  # fmt: skip
        for index, (result, reference) in enumerate(zip(ours, torch_greedy(model, images))):
            where, gap = divergence(encoder, step, images[index], result, reference, config)
            if where is None:
                same += 1
                continue
            record = {"image": chunk[index].name, "step": where, "gap": gap}
            (near_ties if gap is not None and gap <= tie_gap else different).append(record)
    return {"images": len(paths), "identical": same, "agreement": same / len(paths),
            "near_ties": near_ties, "different": different}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--scenes", type=Path, required=True)
    parser.add_argument("--split", action="append", default=[], help="default: test")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tie-gap", type=float, default=1e-3)
    parser.add_argument("--limit", type=int, default=0, help="first N images per split")
    parser.add_argument("--out-json", type=Path)
    args = parser.parse_args(argv)
    model = model_from_checkpoint(load_checkpoint(args.ckpt))
    splits = load_splits(args.scenes)
    report = {"ckpt": str(args.ckpt), "bundle": str(args.bundle), "splits": {}}
    for split in args.split or ["test"]:
        started = time.perf_counter()
        names = splits[split][: args.limit or None]
        paths = [args.scenes / "images" / name for name in names]
        result = compare(model, args.bundle, paths, args.batch, args.tie_gap)
        result["seconds"] = round(time.perf_counter() - started, 1)
        report["splits"][split] = result
        print(f"{split}: {result['identical']}/{result['images']} identical "
              f"({100 * result['agreement']:.1f} %), near ties {len(result['near_ties'])}, "
              f"other differences {len(result['different'])}")  # fmt: skip
    if args.out_json:
        args.out_json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
