"""Peak RSS and time of decoding each issue-18 bomb file, now and (optionally) at an older commit.

    python benchmarks/decode_bounds.py                       # this checkout
    python benchmarks/decode_bounds.py --before 4645afc      # and the code of that commit

Each file is built in a scratch folder (tests/bombfiles.py) and decoded by
`capbatch.image_decode.decode_image` (PreprocessSpec(size=224), the CLI's default
path) in a fresh child process; the child's peak RSS and CPU time come from
os.wait4, wall time from the parent. `--before REV` runs the same child on
`git archive REV capbatch` (no checkout is touched) under an address-space
limit (--before-limit-mb, default 3000), so a multi-GB "before" ends as a
MemoryError instead of crowding a shared machine: such rows read "> limit".

Prints a Markdown table (docs/reliability.md keeps one) and the load average,
which matters: figures taken on a loaded machine are notes, not benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import bombfiles  # noqa: E402

CASES = {
    "GIF, 13000x13000 screen, transparent 1x1 frame": bombfiles.gif_screen_bomb,
    "PNG, 16-bit grey 13370x13370": bombfiles.png_grey16_bomb,
    "TIFF, float32 13370x13370 (64-row strips)": lambda: bombfiles.tiff_bomb("F"),
    "TIFF, int32 13370x13370 (64-row strips)": lambda: bombfiles.tiff_bomb("I"),
    "TIFF, float32 13370x13370 (one strip)": lambda: bombfiles.tiff_bomb(
        "F", rows_per_strip=bombfiles.BOMB_SIDE
    ),
    "PNG, 130000000x1 grey": bombfiles.png_row_bomb,
    "ICO, one 13000x13000 RGBA PNG entry": bombfiles.ico_png_bomb,
    "JPEG, progressive, 10,000 scans (2048x1536)": bombfiles.jpeg_many_scans,
    "JPEG, progressive, DC scan only (320x240)": bombfiles.jpeg_dc_only,
}

# Peak RSS is the child's VmHWM (this process image only): ru_maxrss would count
# the parent's memory the child was (v)forked from before exec.
CHILD = """
import atexit, json, resource, sys, warnings
def report():
    with open("/proc/self/status") as status:
        peak_kb = next(line.split()[1] for line in status if line.startswith("VmHWM"))
    print(json.dumps({"peak_kb": int(peak_kb)}))
atexit.register(report)
warnings.simplefilter("ignore")
limit = int(sys.argv[2])
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from capbatch.image_decode import decode_image
from capbatch.errors import InputDecodeError
from capbatch.preprocess import PreprocessSpec
data = open(sys.argv[1], "rb").read()
try:
    decoded = decode_image(data, PreprocessSpec(size=224))
    print(json.dumps({"outcome": "ok"}))
except InputDecodeError as exc:
    print(json.dumps({"outcome": "error: " + str(exc)}))
except MemoryError:
    print(json.dumps({"outcome": "MemoryError (over the address-space limit)"}))
"""


def measure(path: Path, code_dir: Path, limit_bytes: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code_dir))
    with tempfile.TemporaryFile() as output:
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(limit_bytes)],
            stdout=output,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=code_dir,
        )
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.monotonic() - started
        output.seek(0)
        lines = output.read().decode(errors="replace").strip().splitlines()
    facts = {}
    for line in lines:
        facts.update(json.loads(line))
    outcome = facts.get("outcome", f"crashed (status {status})")
    out_of_memory = any(m in outcome for m in ("MemoryError", "Unable to allocate", "memory"))
    return {
        "outcome": outcome,
        "peak_rss_mb": round(facts.get("peak_kb", 0) / 1024),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "wall_s": round(wall, 2),
        "over_limit": bool(limit_bytes) and out_of_memory and "needs too much" not in outcome,
    }


def export_code(rev: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "capbatch"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def _cell(result: dict | None) -> str:
    if result is None:
        return "—"
    if result["over_limit"]:
        return f"> limit, {result['cpu_s']} s CPU"
    return f"{result['peak_rss_mb']} MB, {result['cpu_s']} s CPU ({result['wall_s']} s wall)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=None, help="git revision to compare with")
    parser.add_argument("--before-limit-mb", type=int, default=3000)
    parser.add_argument("--only", default=None, help="substring of the case names to run")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="capbatch-bounds-") as scratch:
        scratch = Path(scratch)
        before_dir = export_code(args.before, scratch) if args.before else None
        for name, build in CASES.items():
            if args.only and args.only not in name:
                continue
            path = scratch / "input"
            path.write_bytes(build())
            size = path.stat().st_size
            after = measure(path, REPO, 0)
            before = (
                measure(path, before_dir, args.before_limit_mb * 2**20) if before_dir else None
            )
            results[name] = {"bytes": size, "after": after, "before": before}
            print(f"{name}: {size} bytes; before {before}; after {after}", file=sys.stderr)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores\n")
    print("| file | size | before | outcome before | after | outcome after |")
    print("|---|---|---|---|---|---|")
    for name, row in results.items():
        before = row["before"]
        print(
            f"| {name} | {row['bytes']:,} B | {_cell(before)} | "
            f"{before['outcome'] if before else '—'} | {_cell(row['after'])} | "
            f"{row['after']['outcome']} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"load": load, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
