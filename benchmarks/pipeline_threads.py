"""End to end with onnxruntime on all cores vs on fewer threads, beside the decode pool.

    python benchmarks/pipeline_threads.py --out-json benchmarks/results/pipeline_threads.json

The decode threads and onnxruntime's intra-op threads time-share the cores; an
intra-op parallel section waits for its slowest thread, so a decode thread that
preempts one worker stalls the others. This runs `run_captioning` on the same
--images files with each --threads setting in turn, for --rounds interleaved
rounds (medians), decode workers = one per core throughout.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as common  # noqa: E402


def parse_args(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--config", default="lite0", choices=sorted(common.CONFIGS))
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--threads", default="2,1", help="onnxruntime intra-op threads to compare")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=20)
    args = parser.parse_args(argv)
    if args.tiny:
        args.config, args.images, args.rounds, args.batch_size = "tiny", 16, 1, 8
        args.max_len = min(args.max_len, 4)
    return args


def main(argv=None) -> dict:
    from capbatch.captioner import Captioner
    from capbatch.engines.local import run_captioning
    from capbatch.job import RunOptions

    args = parse_args(argv)
    bundle = common.build_bundle(common.CONFIGS[args.config], args.cache_dir, max_len=args.max_len)
    files = common.jpeg_files(common.make_jpeg_folder(args.cache_dir, args.images), args.images)
    settings = [int(t) for t in args.threads.split(",")]
    captioners = {
        t: Captioner(bundle, device="cpu", batch_size=args.batch_size, max_len=args.max_len,
                     intra_op_threads=t)
        for t in settings
    }  # fmt: skip
    idle = common.wait_until_idle(args.no_wait or args.tiny)
    machine = common.machine_info()
    rates: dict[int, list[float]] = {t: [] for t in settings}
    with tempfile.TemporaryDirectory(prefix="capbatch-threads-") as tmp:
        view = Path(tmp) / "images"
        view.mkdir()
        for path in files:
            (view / path.name).symlink_to(path)
        for round_ in range(args.rounds):
            for threads in settings:
                out = Path(tmp) / f"out-{round_}-{threads}.csv"
                options = RunOptions(inputs=(str(view),), out=out)
                rates[threads].append(run_captioning(captioners[threads], options).images_per_s)
    base = statistics.median(rates[settings[0]])
    rows = [{"intra_op_threads": t, "img_s": statistics.median(rates[t]),
             "vs_first": statistics.median(rates[t]) / base,
             "rounds": [round(r, 2) for r in rates[t]]} for t in settings]  # fmt: skip
    common.print_table(f"end to end, {args.images} images, decode workers = cores", rows,
                       list(rows[0]))  # fmt: skip
    results = {"command": common.command_line(), "machine": machine, "idle": idle,
               "config": args.config, "rows": rows,
               "load_average_after": common.machine_info()["load_average"]}  # fmt: skip
    common.write_json(args.out_json, results)
    return results


if __name__ == "__main__":
    main()
