"""Peak RSS of `capbatch caption` over 1,000 vs 10,000 images, and at batch 64.

    python benchmarks/memory.py --out-json benchmarks/results/memory.json

Each run is a fresh `python -m capbatch caption --from-list LIST` process; its
peak resident set size is the kernel's high-water mark VmHWM of that process,
read from /proc every 50 ms until it exits (ru_maxrss would also count this
script's own memory, copied into the child at fork). The 10,000-image list repeats the 1,000 generated JPEGs through
distinct symlinks (distinct paths, so distinct keys and rows). Goal: peak RSS at
10,000 <= 1.1x that at 1,000 (memory flat in the input size).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as common  # noqa: E402


def parse_args(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--config", default="lite0", choices=sorted(common.CONFIGS))
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=10000)
    parser.add_argument("--batch-sizes", default="32,64", help="first: small vs large runs")
    parser.add_argument("--max-len", type=int, default=8, help="few steps: memory, not speed")
    args = parser.parse_args(argv)
    if args.tiny:
        args.config, args.small, args.large, args.batch_sizes = "tiny", 12, 36, "4,8"
        args.max_len = min(args.max_len, 4)
    return args


def write_list(files: list[Path], count: int, directory: Path) -> Path:
    """A list file of `count` distinct paths: symlinks cycling over files."""
    paths = []
    for i in range(count):
        copy, index = divmod(i, len(files))
        folder = directory / f"copy{copy:03d}"
        folder.mkdir(exist_ok=True)
        link = folder / files[index].name
        if not link.exists():
            link.symlink_to(files[index])
        paths.append(str(link))
    listing = directory / f"list-{count}.txt"
    listing.write_text("\n".join(paths) + "\n")
    return listing


def _high_water_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):  # exited between poll() and the read
        pass
    return 0


def peak_rss(listing: Path, bundle: Path, batch: int, max_len: int, out: Path) -> dict:
    command = [sys.executable, "-m", "capbatch", "caption", "--from-list", str(listing),
               "--out", str(out), "--model", str(bundle), "--device", "cpu",
               "--batch-size", str(batch), "--max-len", str(max_len), "--quiet"]  # fmt: skip
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_kib = 0
    while process.poll() is None:
        peak_kib = max(peak_kib, _high_water_kib(process.pid))
        time.sleep(0.05)
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if process.returncode not in (0, 1):
        raise RuntimeError(f"capbatch caption exited {process.returncode}: {stderr[-500:]}")
    rows = sum(1 for _ in out.open()) - 1
    return {"peak_rss_mib": peak_kib / 1024, "wall_s": time.perf_counter() - start,
            "rows": rows, "exit_code": process.returncode}  # fmt: skip


def main(argv=None) -> dict:
    args = parse_args(argv)
    bundle = common.build_bundle(common.CONFIGS[args.config], args.cache_dir, max_len=args.max_len)
    files = common.jpeg_files(common.make_jpeg_folder(args.cache_dir, args.small), args.small)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    idle = common.wait_until_idle(args.no_wait or args.tiny)
    machine = common.machine_info()
    rows = []
    with tempfile.TemporaryDirectory(prefix="capbatch-mem-") as tmp:
        tmp = Path(tmp)
        lists = {n: write_list(files, n, tmp) for n in (args.small, args.large)}
        plan = [(args.small, batches[0]), (args.large, batches[0])]
        plan += [(args.small, b) for b in batches[1:]]
        for index, (count, batch) in enumerate(plan):
            out = tmp / f"out-{index}-{count}-{batch}.csv"
            row = {"images": count, "batch": batch}
            row.update(peak_rss(lists[count], bundle, batch, args.max_len, out))
            rows.append(row)
            common.print_table("peak RSS", rows[-1:], list(row))
    ratio = rows[1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    common.print_table("peak RSS of capbatch caption", rows, list(rows[0]))
    print(f"\n{args.large} vs {args.small} images: {ratio:.3f}x (goal <= 1.1x)")
    results = {"command": common.command_line(), "machine": machine, "idle": idle,
               "config": args.config, "max_len": args.max_len, "rows": rows,
               "large_vs_small": ratio,
               "load_average_after": common.machine_info()["load_average"]}  # fmt: skip
    common.write_json(args.out_json, results)
    return results


if __name__ == "__main__":
    main()
