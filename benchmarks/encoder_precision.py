"""Encoder backends and precisions: speed, FLOPs vs the CPU's peak, and where the time goes.

    python benchmarks/encoder_precision.py --out-json benchmarks/results/encoder_precision.json
    python benchmarks/encoder_precision.py --out-json /tmp/ep.json \\
        --int8-bundle /tmp/pv/int8/bundle-pointwise-percentile   # + an int8 variant bundle

Times Bundle.encode on one --batch of images (samples/ tiled) for every backend in
turn, --rounds interleaved rounds after a warm-up round (medians), at the same
threads. Caption agreement is NOT measured here (it is not a timing question):
export/precision.py measures it on the held-out splits. Also reports:
- the encoder's FLOPs per image, counted from the ONNX graph (Conv, MatMul, Gemm:
  2 x multiply-adds, shapes inferred at batch 1);
- the CPU's theoretical peak per precision (FLOP/cycle/core from its ISA flags,
  x cores x --ghz) and a measured dense fp32 GEMM rate (numpy) as a practical
  ceiling, and how close each backend gets;
- onnxruntime's per-node-type profile of the f32 encoder (and OpenVINO's own
  per-node-type counters where openvino is installed).
Figures taken on a loaded machine are notes: the JSON records the load average.
"""

from __future__ import annotations

import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as common  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("onnxruntime-f32", "openvino-f32", "openvino-bf16")
# FLOP (or int8 op) per cycle per core: 2 FMA pipes x lanes x 2. Zen 4 runs 512-bit ops
# on 256-bit units (half of Zen 5 / Intel's two 512-bit FMA ports); AMX is far above.
PEAKS = {
    "zen5-avx512": {"f32": 64, "bf16": 128, "int8": 256},
    "zen4-avx512": {"f32": 32, "bf16": 64, "int8": 128},
    "intel-avx512": {"f32": 64, "bf16": 128, "int8": 256},
    "intel-amx": {"f32": 64, "bf16": 1024, "int8": 2048},
    "avx2": {"f32": 32, "bf16": 32, "int8": 64},
}


def parse_args(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "capbatch" / "models" / "default")
    parser.add_argument("--images", type=Path, default=REPO / "samples")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--int8-bundle", type=Path, help="a variant bundle run on onnxruntime")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, help="threads per session (default all cores)")
    parser.add_argument("--ghz", type=float, help="core clock for the peak (default: unknown)")
    parser.add_argument("--profile-batches", type=int, default=3)
    args = parser.parse_args(argv)
    if args.tiny:
        args.batch, args.rounds, args.profile_batches = 4, 1, 1
    return args


# --------------------------------------------------------------------------- FLOPs and peak


def encoder_flops(path: Path) -> dict:
    """Multiply-add FLOPs per image by op type (Conv, MatMul, Gemm).

    Output shapes come from running the graph once at batch 1 with those outputs
    exposed: onnx's static inference loses them after the Pads the exporter froze.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    nodes = [n for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    exposed = {o.name for o in model.graph.output}
    for node in nodes:
        if node.output[0] not in exposed:
            model.graph.output.append(
                onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None)
            )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    size = session.get_inputs()[0].shape[1]
    names = [n.output[0] for n in nodes]
    outputs = session.run(names, {"images": np.zeros((1, size, size, 3), np.uint8)})
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    flops: collections.Counter = collections.Counter()
    for node, out in zip(nodes, outputs):
        if node.op_type == "Conv":  # weight (Cout, Cin/groups, kh, kw)
            flops["Conv"] += 2 * out.size * int(np.prod(weights[node.input[1]][1:]))
        else:  # (..., K) x (K, N): K from the weight (MatMul) or transB weight (Gemm)
            weight = weights[node.input[1]]
            k = weight[1] if node.op_type == "Gemm" else weight[0]
            flops[node.op_type] += 2 * out.size * int(k)
    return {"per_image": int(sum(flops.values())), "by_op": dict(flops)}


def isa(flags: set[str], family: int | None) -> str:
    if "amx_bf16" in flags:
        return "intel-amx"
    if "avx512f" in flags:
        if family is None:
            return "intel-avx512"
        return "zen5-avx512" if family >= 26 else "zen4-avx512" if family == 25 else "intel-avx512"
    return "avx2"


def cpu_peak(ghz: float | None) -> dict:
    flags: set[str] = set()
    family = vendor = None
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and not flags:
            flags = set(value.split())
        elif key == "cpu family" and family is None:
            family = int(value)
        elif key == "vendor_id" and vendor is None:
            vendor = value.strip()
    kind = isa(flags, family if vendor == "AuthenticAMD" else None)
    from capbatch.providers import cpu_thread_count

    cores = cpu_thread_count()
    per_cycle = PEAKS[kind]
    peak = {
        "isa": kind,
        "flags": sorted(f for f in flags if f.startswith(("avx512_bf16", "avx512_vnni", "amx"))),
        "cores": cores,
        "flop_per_cycle_per_core": per_cycle,
        "ghz": ghz,
    }
    if ghz:
        peak["gflops"] = {p: v * cores * ghz for p, v in per_cycle.items()}
    return peak


def gemm_rate(threads: int, n: int = 1024, repeats: int = 5) -> float:
    """Dense fp32 GFLOP/s of numpy's BLAS: a practical ceiling for f32 on this machine."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    seconds = common.median_time(lambda: a @ a, repeats)
    return 2 * n**3 / seconds / 1e9


# --------------------------------------------------------------------------- backends and profiles


def load_backends(args) -> dict:
    from capbatch.bundle import load_bundle

    bundles = {}
    for name in [b for b in args.backends.split(",") if b]:
        runtime, precision = name.split("-")
        bundles[name] = load_bundle(
            args.bundle,
            device="cpu",
            intra_op_threads=args.threads,
            encoder_runtime=runtime,
            precision=precision,
            require_agreement=False,  # a speed measurement; agreement: export/precision.py
        )
    if args.int8_bundle:
        bundles["onnxruntime-int8"] = load_bundle(
            args.int8_bundle, device="cpu", intra_op_threads=args.threads
        )
    return bundles


def time_backends(bundles: dict, pixels: np.ndarray, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in bundles}
    for round_ in range(rounds + 1):  # round 0 warms up (OpenVINO compiles per shape)
        for name, bundle in bundles.items():
            start = time.perf_counter()
            bundle.encode(pixels)
            if round_:
                times[name].append(time.perf_counter() - start)
    return times


def ort_profile(bundle_dir: Path, pixels: np.ndarray, batches: int, threads: int | None) -> dict:
    """Per node type share of onnxruntime's f32 encoder time (its own profiler)."""
    import onnxruntime as ort

    from capbatch.bundle import ENCODER_CHUNK, _session_options

    options = _session_options(ort, True, threads)
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "encoder")
    session = ort.InferenceSession(str(bundle_dir / "encoder.onnx"), options)
    chunk = pixels[:ENCODER_CHUNK]
    for _ in range(batches):
        session.run(None, {"images": chunk})
    trace = json.loads(Path(session.end_profiling()).read_text())
    by_type: collections.Counter = collections.Counter()
    for event in trace:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            by_type[event["args"]["op_name"]] += event["dur"]
    return _shares(by_type)


def openvino_profile(bundle_dir: Path, precision: str, pixels: np.ndarray, threads) -> dict:
    """OpenVINO's own per node type times (PERF_COUNT) for one chunk."""
    from capbatch.bundle import ENCODER_CHUNK
    from capbatch.openvino_backend import import_openvino

    ov = import_openvino()
    config = {"INFERENCE_PRECISION_HINT": precision, "PERF_COUNT": True, "NUM_STREAMS": 1}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(bundle_dir / "encoder.onnx")), "CPU", config)
    request = compiled.create_infer_request()
    request.infer({"images": pixels[:ENCODER_CHUNK]})  # warm-up: first-shape compilation
    request.infer({"images": pixels[:ENCODER_CHUNK]})
    by_type: collections.Counter = collections.Counter()
    for info in request.profiling_info:
        by_type[info.node_type] += info.real_time.total_seconds() * 1e6
    return _shares(by_type)


def _shares(by_type: collections.Counter) -> dict:
    total = sum(by_type.values()) or 1
    return {op: round(100 * us / total, 1) for op, us in by_type.most_common()}


def main(argv=None) -> dict:
    from capbatch.export.precision import load_images

    from capbatch.manifest import read_manifest

    args = parse_args(argv)
    spec = read_manifest(args.bundle).preprocess
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    images = load_images(files, spec)
    pixels = np.resize(images, (args.batch, *images.shape[1:]))  # tiled to the batch
    idle = common.wait_until_idle(args.no_wait or args.tiny)
    machine = common.machine_info()
    bundles = load_backends(args)
    times = time_backends(bundles, pixels, args.rounds)
    flops = encoder_flops(args.bundle / "encoder.onnx")
    peak = cpu_peak(args.ghz)
    threads = args.threads or peak["cores"]
    gemm = gemm_rate(threads) if not args.tiny else None
    rows = []
    for name, samples in times.items():
        ms = 1e3 * statistics.median(samples) / args.batch
        gflops = flops["per_image"] / (ms / 1e3) / 1e9
        row = {"backend": name, "encoder_ms_per_img": ms, "gflops": gflops}
        row["vs_onnxruntime_f32"] = None
        precision = "int8" if name.endswith("int8") else name.split("-")[1]
        if "gflops" in peak:
            row["pct_of_peak"] = 100 * gflops / peak["gflops"][precision]
        if gemm:
            row["pct_of_f32_gemm"] = 100 * gflops / gemm
        rows.append(row)
    base = next((r for r in rows if r["backend"] == "onnxruntime-f32"), rows[0])
    for row in rows:
        row["vs_onnxruntime_f32"] = base["encoder_ms_per_img"] / row["encoder_ms_per_img"]
    common.print_table(f"encoder, batch {args.batch}", rows, list(rows[0]))
    profile = {"onnxruntime-f32": ort_profile(args.bundle, pixels, args.profile_batches, threads)}
    for name in bundles:
        if name.startswith("openvino-"):
            precision = name.split("-")[1]
            profile[name] = openvino_profile(args.bundle, precision, pixels, threads)
    for name, shares in profile.items():
        print(f"\n{name} time by node type (%): {shares}")
    results = {"command": common.command_line(), "machine": machine, "idle": idle,
               "batch": args.batch, "rounds": args.rounds, "flops": flops, "peak": peak,
               "numpy_f32_gemm_gflops": gemm, "rows": rows, "profile": profile,
               "load_average_after": common.machine_info()["load_average"]}  # fmt: skip
    common.write_json(args.out_json, results)
    return results


if __name__ == "__main__":
    main()
