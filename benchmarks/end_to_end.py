"""End-to-end `capbatch caption` throughput vs its two stages alone, and their limit.

    python benchmarks/end_to_end.py --out-json benchmarks/results/end_to_end.json

On a folder of --images photo-like 1024x768 JPEGs (made by the script, cached):

* decode: read + decode + preprocess alone (capbatch.image_decode.decode_image, JPEG draft
  mode as in the runtime), on a thread pool of one worker per usable core;
* model: the captioner alone (Captioner.hypotheses) on already decoded pixels,
  at the run's batch size, with onnxruntime on every usable core (also when
  --intra-op-threads gives the pipeline run fewer);
* end_to_end: capbatch.engines.local.run_captioning (what `capbatch caption DIR` runs,
  minus process start-up and model loading, which are reported separately).

Decode and model compete for the same cores, so the best end-to-end rate is
limit = 1 / (1/decode + 1/model); the goal is end_to_end >= 90 % of it.

--encoder openvino-bf16 (or openvino-f32; the openvino extra) runs the encoder there
in all three measurements. The bundle has random weights, so no caption agreement
is recorded or checked: speed only (docs/benchmarks.md section 5 has the agreement).
"""

from __future__ import annotations

import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as common  # noqa: E402


def parse_args(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--config", default="lite0", choices=sorted(common.CONFIGS))
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--model-images", type=int, default=320, help="subset for model alone")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=20)
    parser.add_argument("--workers", type=int, default=None, help="decode threads (None: cores)")
    parser.add_argument(
        "--intra-op-threads", type=int, default=None, help="onnxruntime threads (None: cores)"
    )
    parser.add_argument(
        "--encoder", default="onnxruntime-f32", help="RUNTIME-PRECISION, e.g. openvino-bf16"
    )
    args = parser.parse_args(argv)
    if args.tiny:
        args.config, args.images, args.model_images, args.batch_size = "tiny", 24, 16, 8
        args.max_len = min(args.max_len, 4)
    return args


def decode_rate(files: list[Path], spec, workers: int) -> tuple[float, list]:
    from capbatch.image_decode import decode_image

    def work(path: Path):
        return decode_image(path.read_bytes(), spec)

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        decoded = list(pool.map(work, files))
    return len(files) / (time.perf_counter() - start), decoded


def use_encoder(captioner, bundle: Path, encoder: str, threads: int | None):
    """The captioner with its encoder run by RUNTIME-PRECISION (agreement not checked)."""
    from capbatch.bundle import load_bundle

    runtime, _, precision = encoder.rpartition("-")
    if (runtime, precision) != ("onnxruntime", "f32"):
        captioner.bundle = load_bundle(
            bundle,
            device="cpu",
            intra_op_threads=threads,
            encoder_runtime=runtime,
            precision=precision,
            require_agreement=False,  # random weights: speed only
        )
    return captioner


def model_rate(captioner, pixels: np.ndarray) -> float:
    batch = captioner.batch_size
    captioner.hypotheses(pixels[:batch])  # warmup
    start = time.perf_counter()
    for i in range(0, pixels.shape[0], batch):
        captioner.hypotheses(pixels[i : i + batch])
    return pixels.shape[0] / (time.perf_counter() - start)


def end_to_end_rate(captioner, folder: Path, workers: int | None) -> tuple[float, dict]:
    from capbatch.engines.local import run_captioning
    from capbatch.job import RunOptions

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "captions.csv"
        summary = run_captioning(
            captioner, RunOptions(inputs=(str(folder),), out=out, workers=workers)
        )
    return summary.images_per_s, {"ok": summary.ok, "errors": summary.errors,
                                  "elapsed_s": round(summary.elapsed_s, 2)}  # fmt: skip


def main(argv=None) -> dict:
    args = parse_args(argv)
    config = common.CONFIGS[args.config]
    bundle = common.build_bundle(config, args.cache_dir, max_len=args.max_len)
    folder = common.make_jpeg_folder(args.cache_dir, args.images)
    files = common.jpeg_files(folder, args.images)
    if len(files) != args.images or any(p.parent != folder for p in files):
        raise SystemExit(f"{folder} does not hold exactly the {args.images} generated files")
    # run_captioning walks the whole folder: keep only this run's files in a view of it.
    with tempfile.TemporaryDirectory(prefix="capbatch-e2e-") as view:
        for path in files:
            (Path(view) / path.name).symlink_to(path)
        return measure(args, config, bundle, files, Path(view))


def measure(args, config, bundle: Path, files: list[Path], view: Path) -> dict:
    from capbatch.captioner import Captioner
    from capbatch.providers import cpu_thread_count

    idle = common.wait_until_idle(args.no_wait or args.tiny)
    machine = common.machine_info()
    start = time.perf_counter()
    captioner = Captioner(
        bundle,
        device="cpu",
        batch_size=args.batch_size,
        max_len=args.max_len,
        intra_op_threads=args.intra_op_threads,
    )
    use_encoder(captioner, bundle, args.encoder, args.intra_op_threads)
    load_s = time.perf_counter() - start
    workers = args.workers or cpu_thread_count()

    decode_img_s, decoded = decode_rate(files, captioner.preprocess, workers)
    pixels = np.stack([d.pixels for d in decoded[: args.model_images]])  # (N, S, S, 3)
    # The limit's model stage has every core, whatever threads the pipeline run uses.
    alone = captioner
    if args.intra_op_threads not in (None, cpu_thread_count()):
        alone = Captioner(bundle, device="cpu", batch_size=args.batch_size, max_len=args.max_len)
        use_encoder(alone, bundle, args.encoder, None)
    model_img_s = model_rate(alone, pixels)
    e2e_img_s, run = end_to_end_rate(captioner, view, args.workers)
    limit = 1.0 / (1.0 / decode_img_s + 1.0 / model_img_s)
    row = {
        "encoder": args.encoder,
        "images": args.images,
        "batch": args.batch_size,
        "decode_img_s": decode_img_s,
        "model_img_s": model_img_s,
        "limit_img_s": limit,
        "end_to_end_img_s": e2e_img_s,
        "of_limit": e2e_img_s / limit,
        "decode_ms_per_img_per_core": 1e3 * workers / decode_img_s,
        "model_load_s": load_s,
    }
    common.print_table(f"end to end, {config.name}, {workers} decode workers", [row], list(row))
    results = {
        "command": common.command_line(),
        "machine": machine,
        "idle": idle,
        "config": config.name,
        "max_len": args.max_len,
        "workers": workers,
        "intra_op_threads": args.intra_op_threads or cpu_thread_count(),
        "result": row,
        "run": run,
        "load_average_after": common.machine_info()["load_average"],
    }
    common.write_json(args.out_json, results)
    return results


if __name__ == "__main__":
    main()
