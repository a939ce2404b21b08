"""Variants on CPU: int8 vs fp32 (speed, caption agreement) and greedy vs beam 3 (cost).

    python benchmarks/variants.py --out-json benchmarks/results/variants.json

The int8 bundle is `capbatch export --int8`'s variant of the same checkpoint
(dynamic int8 quantisation of MatMul/Gemm weights). Speed is measured with
<end> ignored (every image runs --steps steps, as in model_cpu.py); agreement
is the share of identical greedy captions with <end> honoured, on photo-like
images. The benchmark decoder is random, so its agreement is a stress test
(near-ties everywhere); the export's own validation reports it for trained models.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as common  # noqa: E402


def parse_args(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--config", default="lite0", choices=sorted(common.CONFIGS))
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32, help="agreement runs")
    parser.add_argument("--batch-sizes", default="1,32", help="speed runs")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.tiny:
        args.config, args.images, args.batch_size, args.repeats = "tiny", 8, 4, 1
        args.batch_sizes = "1,4"
        args.steps = min(args.steps, 4)
    return args


def timed_split(captioner, pixels: np.ndarray, repeats: int) -> tuple[float, float]:
    """Median (encoder, steps) seconds per image over the images, in batches."""
    from capbatch.decoding import search

    bundle, batch = captioner.bundle, captioner.batch_size
    runs = []
    for _ in range(repeats + 1):  # the first is warmup
        encoder_s = steps_s = 0.0
        for i in range(0, pixels.shape[0], batch):
            start = time.perf_counter()
            encoded = bundle.encode(pixels[i : i + batch])
            middle = time.perf_counter()
            search(bundle.step_model(encoded), captioner.options)
            encoder_s += middle - start
            steps_s += time.perf_counter() - middle
        runs.append((encoder_s / pixels.shape[0], steps_s / pixels.shape[0]))
    runs = sorted(runs[1:], key=sum)
    return runs[len(runs) // 2]


def captions(bundle: Path, pixels: np.ndarray, batch: int, steps: int) -> list[tuple[int, ...]]:
    from capbatch.captioner import Captioner

    captioner = Captioner(bundle, device="cpu", batch_size=batch, max_len=steps)
    tokens = []
    for i in range(0, pixels.shape[0], batch):
        tokens += [h.tokens for h in captioner.hypotheses(pixels[i : i + batch])]
    return tokens


def main(argv=None) -> dict:
    from capbatch.captioner import Captioner
    from capbatch.image_decode import decode_image

    args = parse_args(argv)
    config = common.CONFIGS[args.config]
    fp32 = common.build_bundle(config, args.cache_dir, max_len=args.steps, int8=True)
    int8 = fp32.with_name("bundle-int8")
    folder = common.make_jpeg_folder(args.cache_dir, args.images)
    spec = Captioner(fp32, device="cpu").preprocess
    pixels = np.stack(
        [decode_image(p.read_bytes(), spec).pixels for p in common.jpeg_files(folder, args.images)]
    )  # (N, S, S, 3)
    idle = common.wait_until_idle(args.no_wait or args.tiny)
    machine = common.machine_info()
    rows = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        # Batch 1 is latency: 16 single-image runs say enough.
        subset = pixels[: max(batch, min(pixels.shape[0], 16 * batch))]
        for name, bundle, beam in (("fp32 greedy", fp32, 1), ("int8 greedy", int8, 1),
                                   ("fp32 beam 3", fp32, 3)):  # fmt: skip
            captioner = Captioner(
                bundle, device="cpu", batch_size=batch, beam_size=beam, max_len=args.steps
            )
            captioner.bundle.end_id = -1  # equal work: all --steps steps
            encoder_s, steps_s = timed_split(captioner, subset, args.repeats)
            rows.append({"variant": name, "batch": batch, "img_s": 1.0 / (encoder_s + steps_s),
                         "encoder_ms_per_img": encoder_s * 1e3,
                         "steps_ms_per_img": steps_s * 1e3})  # fmt: skip
            common.print_table("variants", rows[-1:], list(rows[-1]))
    for row in rows:
        base = next(r for r in rows if r["batch"] == row["batch"])  # fp32 greedy, same batch
        row["speed_vs_fp32_greedy"] = row["img_s"] / base["img_s"]
    reference = captions(fp32, pixels, args.batch_size, args.steps)
    quantised = captions(int8, pixels, args.batch_size, args.steps)
    agreement = float(np.mean([a == b for a, b in zip(reference, quantised)]))
    common.print_table(f"{config.name}, {args.steps} steps per image", rows, list(rows[0]))
    print(f"\nint8 vs fp32 identical greedy captions: {agreement:.1%} of {len(reference)}")
    results = {"command": common.command_line(), "machine": machine, "idle": idle,
               "config": config.name, "batch": args.batch_size, "steps": args.steps,
               "rows": rows, "int8_caption_agreement": agreement,
               "load_average_after": common.machine_info()["load_average"]}  # fmt: skip
    common.write_json(args.out_json, results)
    return results


if __name__ == "__main__":
    main()
