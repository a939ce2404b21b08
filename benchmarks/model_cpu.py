"""Model-only CPU throughput: capbatch runtime vs PyTorch eager, equal work.

    python benchmarks/model_cpu.py --out-json benchmarks/results/model_cpu.json

Three ways to caption the same random images with the same weights, each doing
exactly --steps decoder steps per image (<end> is ignored, so no side stops early):

* reference: PyTorch eager, one image at a time, the attention projection U(features)
  recomputed at every step, as the original inference did;
* torch_batched: PyTorch eager batched (inference_mode), projection computed once;
* capbatch: the runtime (encoder.onnx once per batch + the numpy greedy loop over
  decoder_step.onnx), through Captioner.hypotheses.

Both sides use one intra-op thread per usable core; the three are timed in turn
(reference, batched, capbatch; --repeats rounds, medians) at each batch size. Also records capbatch's time
split (encoder vs decoder steps) per batch size, for docs/bench_split.png.

--encoders times capbatch with each encoder runtime in the same rounds, e.g.
`--encoders onnxruntime-f32,openvino-f32,openvino-bf16` (openvino: the capbatch[openvino]
extra). The bundles here have random weights, so their caption agreement means nothing
and is not checked: this measures speed only. Whether a precision keeps the captions is
measured on a trained bundle by `python -m capbatch.export.precision`.
`openvino-bf16@0.04` also redoes that share of each batch (rounded, at least one
image) with the reference encoder, as close calls are (capbatch/close_calls.py): with
random weights every margin is small, so the rows are chosen, not found; the share
to use is the one the precision tool measured on held-out images.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# Same footing as capbatch's CPU sessions (no idle-thread spinning): with OpenMP's
# default active wait, 2-thread torch ran 12x slower on this shared 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as common  # noqa: E402


def parse_args(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--configs", default="lite0,lite0-taps,resnet50")
    parser.add_argument("--batch-sizes", default="1,8,32,64")
    parser.add_argument("--steps", type=int, default=20, help="decoder steps per image")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per point (median)")
    parser.add_argument("--reference-images", type=int, default=8)
    parser.add_argument(
        "--encoders",
        default="onnxruntime-f32",
        help="capbatch encoder runtimes to time side by side: RUNTIME-PRECISION, comma-separated",
    )
    args = parser.parse_args(argv)
    if args.tiny:
        args.configs, args.batch_sizes, args.repeats, args.reference_images = "tiny", "1,4", 1, 2
        args.steps = min(args.steps, 4)
    return args


def torch_reference(model, images, steps: int) -> None:
    """The original inference: one image, U(features) recomputed every step."""
    import torch

    decoder = model.decoder
    with torch.no_grad():
        for i in range(images.shape[0]):
            features = model.encoder(images[i : i + 1])  # (1, L, D)
            mean = features.mean(dim=1)  # (1, D)
            h, c = decoder.init_h(mean), decoder.init_c(mean)  # (1, H)
            token = torch.tensor([model.config.start_id])
            for _ in range(steps):
                projected = decoder.attention.project(features)  # (1, L, A) every step
                logits, h, c, _ = decoder.step(token, h, c, features, projected)
                log_probs = torch.log_softmax(logits, dim=-1)  # (1, V)
                token = torch.tensor([int(log_probs.argmax(dim=-1))])


def torch_batched(model, images, steps: int) -> None:
    import torch

    decoder = model.decoder
    with torch.inference_mode():
        features = model.encoder(images)  # (B, L, D)
        projected, h, c = decoder.init_state(features)  # once per image
        tokens = torch.full((images.shape[0],), model.config.start_id, dtype=torch.long)
        for _ in range(steps):
            logits, h, c, _ = decoder.step(tokens, h, c, features, projected)
            tokens = torch.log_softmax(logits, dim=-1).argmax(dim=-1)  # (B,)


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def capbatch_run(bundle, options, pixels, redo: int = 0) -> tuple[float, float, float]:
    """hypotheses, split: (encoder, decoder-step, close-call redo) seconds."""
    from capbatch.close_calls import redo_rows
    from capbatch.decoding import search

    start = time.perf_counter()
    encoded = bundle.encode(pixels)
    middle = time.perf_counter()
    found = search(bundle.step_model(encoded), options)
    steps_end = time.perf_counter()
    if redo:
        rows = np.arange(min(redo, pixels.shape[0]), dtype=np.int64)
        redo_rows(bundle, pixels, found, encoded, options, rows)
    return middle - start, steps_end - middle, time.perf_counter() - steps_end


def parse_encoders(text: str) -> list[tuple[str, str, float]]:
    """The --encoders list, e.g. "onnxruntime-f32,openvino-bf16@0.04", as
    [(runtime, precision, redo share), ...]."""
    choices = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, share = item.partition("@")
        runtime, _, precision = name.rpartition("-")
        try:
            redo = float(share) if share else 0.0
        except ValueError:
            redo = -1.0
        if not runtime or not 0 <= redo < 1:
            raise SystemExit(
                f"--encoders: {item!r} is not RUNTIME-PRECISION[@SHARE] (openvino-bf16@0.04)"
            )
        if redo and name == "onnxruntime-f32":
            raise SystemExit("--encoders: onnxruntime-f32 is the reference: nothing to redo")
        choices.append((runtime, precision, redo))
    if not choices:
        raise SystemExit("--encoders: name at least one, e.g. onnxruntime-f32")
    return choices


def load_encoders(bundle_dir: Path, encoders) -> dict:
    """name -> a Bundle whose encoder runs there; every one shares the decoder step graph.

    require_agreement=False: random weights make agreement meaningless (speed only).
    """
    from capbatch.bundle import load_bundle

    bundles = {}
    for runtime, precision, redo in encoders:
        bundle = load_bundle(
            bundle_dir,
            device="cpu",
            encoder_runtime=runtime,
            precision=precision,
            require_agreement=False,
            # any margin > 0 keeps the reference encoder the redone rows need
            fallback_margin=1.0 if redo else None,
        )
        bundle.end_id = -1  # equal work: every image runs all --steps steps
        name = f"{runtime}-{precision}" + (f"@{redo:g}" if redo else "")
        bundles[name] = (bundle, redo)
    return bundles


def bench_config(config: common.BenchConfig, args) -> dict:
    import torch

    from capbatch.decoding import DecodingOptions
    from capbatch.providers import cpu_thread_count

    threads = cpu_thread_count()
    torch.set_num_threads(threads)
    bundle_dir = common.build_bundle(config, args.cache_dir, max_len=args.steps)
    model = common.load_torch_model(bundle_dir)
    encoders = load_encoders(bundle_dir, parse_encoders(args.encoders))
    # Close-call variants pay for tracking margins, as the Captioner's greedy loop does.
    options = {name: DecodingOptions(max_len=args.steps, track_margins=bool(share))
               for name, (_, share) in encoders.items()}  # fmt: skip
    size = next(iter(encoders.values()))[0].preprocess.size
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (max(batch_sizes), size, size, 3), dtype=np.uint8)
    images = torch.from_numpy(pixels)

    n_ref = args.reference_images
    rows = []
    for batch in batch_sizes:
        px, timgs = pixels[:batch], images[:batch]
        torch_reference(model, images[:1], args.steps)  # warmup, all of them
        torch_batched(model, timgs, args.steps)
        redo = {name: max(1, round(share * batch)) if share else 0
                for name, (_, share) in encoders.items()}  # fmt: skip
        for name, (bundle, _) in encoders.items():
            capbatch_run(bundle, options[name], px, redo[name])
        ref_times, torch_times = [], []
        splits: dict[str, list[tuple[float, float, float]]] = {name: [] for name in encoders}
        # Interleaved, so a change in the shared machine's load hits all of them alike.
        for _ in range(args.repeats):
            ref_times.append(_seconds(lambda: torch_reference(model, images[:n_ref], args.steps)))
            torch_times.append(_seconds(lambda t=timgs: torch_batched(model, t, args.steps)))
            for name, (bundle, _) in encoders.items():
                splits[name].append(capbatch_run(bundle, options[name], px, redo[name]))
        reference_rate = n_ref / statistics.median(ref_times)
        torch_s = statistics.median(torch_times)
        for name, timings in splits.items():
            encoder_s, steps_s, redo_s = sorted(timings, key=sum)[len(timings) // 2]
            cap_s = encoder_s + steps_s + redo_s
            rows.append(
                {
                    "config": config.name,
                    "encoder": name,
                    "batch": batch,
                    "reference_img_s": reference_rate,
                    "torch_batched_img_s": batch / torch_s,
                    "capbatch_img_s": batch / cap_s,
                    "vs_reference": (batch / cap_s) / reference_rate,
                    "vs_torch_batched": torch_s / cap_s,
                    "capbatch_ms_per_batch": cap_s * 1e3,
                    "torch_ms_per_batch": torch_s * 1e3,
                    "encoder_ms_per_img": encoder_s * 1e3 / batch,
                    "steps_ms_per_img": steps_s * 1e3 / batch,
                    "redone_per_batch": redo[name],
                    "redo_ms_per_img": redo_s * 1e3 / batch,
                }
            )
        batch_rows = rows[-len(encoders) :]
        common.print_table(f"{config.name}: batch {batch}", batch_rows, list(rows[-1].keys())[1:])
    return {"config": config.name, "threads": threads, "steps": args.steps, "rows": rows}


def main(argv=None) -> dict:
    from capbatch.errors import ExportError

    args = parse_args(argv)
    idle = common.wait_until_idle(args.no_wait or args.tiny)
    results = {"command": common.command_line(), "machine": common.machine_info(), "idle": idle}
    results["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    results["configs"], results["failed"] = [], []
    for name in args.configs.split(","):
        try:
            results["configs"].append(bench_config(common.CONFIGS[name], args))
        except ExportError as exc:  # a configuration the exporter cannot handle yet
            print(f"{name}: not benchmarked: {exc}", file=sys.stderr)
            results["failed"].append({"config": name, "error": str(exc)})
    results["load_average_after"] = common.machine_info()["load_average"]
    rows = [row for config in results["configs"] for row in config["rows"]]
    columns = ["config", "encoder", "batch", "reference_img_s", "torch_batched_img_s", "capbatch_img_s",
               "vs_reference", "vs_torch_batched", "capbatch_ms_per_batch", "torch_ms_per_batch",
               "encoder_ms_per_img", "steps_ms_per_img", "redone_per_batch",
               "redo_ms_per_img"]  # fmt: skip
    common.print_table(f"model only, {args.steps} steps per image (images/s)", rows, columns)
    common.write_json(args.out_json, results)
    return results


if __name__ == "__main__":
    main()
