"""The same caption job on the local engine and on Ray Data with 1 and 2 actors.

    python benchmarks/ray_scaling.py --out-json benchmarks/results/ray_scaling.json

--images photo-like 1024x768 JPEGs (made and cached by bench_common), listed in
one list file that every run reads, captioned by the cached Lite0 benchmark
bundle (--config) into JSONL. Reported per run: wall time and images/s over the
whole job, and what start-up costs on its own:

* local: loading the Captioner (sessions) + run_captioning;
* Ray: starting the local Ray instance (ray.init) and an empty Ray Data job
  (Ray Data's first-job set-up), each measured once, apart; then
  per actor count run_on_ray on that instance; `first_rows_s` is when the first
  rows reached the driver (actor start, bundle load per actor, first batch).

Every Ray run's rows are compared with the local run's (same keys, captions and
scores expected). Needs the ray extra and, to build the bundle once, the
train/export extras.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as common  # noqa: E402


def parse_args(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--config", default="lite0", choices=sorted(common.CONFIGS))
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=20)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--shard-size", type=int, default=125, help="list entries per Ray shard")
    args = parser.parse_args(argv)
    if args.tiny:
        args.config, args.images, args.batch_size, args.shard_size = "tiny", 24, 8, 6
        args.max_len = min(args.max_len, 4)
    return args


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run_local(bundle: Path, list_file: Path, out: Path, batch_size: int) -> dict:
    from capbatch.captioner import Captioner
    from capbatch.engines.local import run_captioning
    from capbatch.job import RunOptions

    start = time.perf_counter()
    captioner = Captioner(bundle, device="cpu", batch_size=batch_size)
    loaded = time.perf_counter()
    summary = run_captioning(captioner, RunOptions(out=out, from_list=str(list_file)))
    end = time.perf_counter()
    return {
        "engine": "local",
        "actors": None,
        "startup_s": round(loaded - start, 2),
        "wall_s": round(end - start, 2),
        "images_per_s": round(summary.processed / (end - start), 2),
        "ok": summary.ok,
        "errors": summary.errors,
    }


def run_ray(bundle: Path, list_file: Path, out: Path, args, actors: int) -> dict:
    from capbatch.captioner import CaptionerArgs
    from capbatch.engines.ray_driver import run_on_ray
    from capbatch.engines.ray_options import RayOptions
    from capbatch.job import RunOptions

    first_rows: list[float] = []
    start = time.perf_counter()

    def on_progress(summary) -> None:
        if not first_rows:
            first_rows.append(time.perf_counter() - start)

    summary = run_on_ray(
        RunOptions(out=out, from_list=str(list_file)),
        CaptionerArgs(str(bundle), device="cpu", batch_size=args.batch_size),
        RayOptions(actors=actors, shard_size=args.shard_size),
        on_progress=on_progress,
    )
    end = time.perf_counter()
    return {
        "engine": "ray",
        "actors": actors,
        "first_rows_s": round(first_rows[0], 2) if first_rows else None,
        "wall_s": round(end - start, 2),
        "images_per_s": round(summary.processed / (end - start), 2),
        "ok": summary.ok,
        "errors": summary.errors,
        "shards": summary.shards,
        "failed_shards": summary.failed_shards,
    }


def same_rows(a: list[dict], b: list[dict]) -> dict:
    captions_differ = sum(x["caption"] != y["caption"] for x, y in zip(a, b))
    return {
        "rows": (len(a), len(b)),
        "keys_in_same_order": [r["key"] for r in a] == [r["key"] for r in b],
        "captions_differ": captions_differ,
        "identical": a == b,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    waited = common.wait_until_idle(args.no_wait)
    bundle = common.build_bundle(common.CONFIGS[args.config], args.cache_dir, max_len=args.max_len)
    folder = common.make_jpeg_folder(args.cache_dir, args.images)
    files = common.jpeg_files(folder, args.images)
    results: dict = {"command": common.command_line(), "machine": common.machine_info()}
    results.update(waited=waited, config=args.config, images=len(files), bundle=str(bundle))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        list_file = tmp / "images.txt"
        list_file.write_text("".join(f"{path}\n" for path in files))
        local_out = tmp / "local.jsonl"
        runs.append(run_local(bundle, list_file, local_out, args.batch_size))
        print(f"local: {runs[-1]}", flush=True)
        local_rows = read_jsonl(local_out)

        import ray
        import ray.data

        from capbatch.engines.ray_options import RayOptions

        start = time.perf_counter()
        ray.init(
            num_cpus=RayOptions(actors=max(args.actors)).local_cpus(),
            include_dashboard=False,
            logging_level="WARNING",
        )
        results["ray_init_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        ray.data.range(1).take_all()  # Ray Data's own first-job set-up, apart from ours
        results["ray_empty_job_s"] = round(time.perf_counter() - start, 2)
        print(f"ray.init: {results['ray_init_s']} s, empty job {results['ray_empty_job_s']} s")
        try:
            for actors in args.actors:
                out = tmp / f"ray-{actors}.jsonl"
                runs.append(run_ray(bundle, list_file, out, args, actors))
                runs[-1]["vs_local"] = same_rows(local_rows, read_jsonl(out))
                print(f"ray x{actors}: {runs[-1]}", flush=True)
        finally:
            start = time.perf_counter()
            ray.shutdown()
            results["ray_shutdown_s"] = round(time.perf_counter() - start, 2)
    results["runs"] = runs
    results["uptime_after"] = common.machine_info()["uptime"]
    common.print_table(
        f"{len(files)} images, {args.config}, batch {args.batch_size}, "
        f"ray.init {results['ray_init_s']} s, empty job {results['ray_empty_job_s']} s",
        runs,
        ["engine", "actors", "startup_s", "first_rows_s", "wall_s", "images_per_s"],
    )
    common.write_json(args.out_json, results)
    return results


if __name__ == "__main__":
    main()
