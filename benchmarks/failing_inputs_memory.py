"""Peak memory and rows on disk while a run meets archives of failing inputs (issue 18, item 6).

    python benchmarks/failing_inputs_memory.py {zip,tar} [--batch-size 32] [--repo DIR]

Builds the archive (zip: 20 members x 100 MB of zeros, about 3 MB; tar: 100,000
empty members), runs `capbatch caption --from-list -` over it with the list
held open on a pipe, waits until the run idles (it has read the archive and
waits for more of the list), then prints the child's peak RSS (VmHWM) and how
many rows are on disk at that moment. --repo runs another checkout (PYTHONPATH)
(and as the working directory) for a before/after comparison. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["zip", "tar"])
    parser.add_argument("--batch-size", default="32")
    parser.add_argument("--repo", type=Path, default=REPO)
    parser.add_argument("--max-wait-s", type=float, default=300)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from tests.reliability.test_output_hardening import _empty_tar, _zip_of_zeros
    from tests.runtime_fakes import make_fake_bundle

    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        bundle = make_fake_bundle(tmp / "bundle")
        archive = tmp / ("zeros.zip" if args.kind == "zip" else "empties.tar")
        if args.kind == "zip":
            _zip_of_zeros(archive, 20, 100 << 20)
        else:
            _empty_tar(archive, 100_000)
        out = tmp / "rows.jsonl"
        env = dict(os.environ, PYTHONPATH=str(args.repo))
        child = subprocess.Popen(
            [sys.executable, "-m", "capbatch", "caption", "--from-list", "-", "--out", str(out),
             "--model", str(bundle), "--batch-size", args.batch_size, "-q"],
            stdin=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=args.repo,
        )  # fmt: skip  (cwd: `-m` looks there first, before an editable install)
        child.stdin.write(f"{archive}\n".encode())
        child.stdin.flush()
        start, last = time.monotonic(), -1
        while time.monotonic() - start < args.max_wait_s:
            time.sleep(1)
            fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu = int(fields[11]) + int(fields[12])  # utime + stime
            if cpu == last:
                break  # a second without CPU: waiting for the list
            last = cpu
        status = Path(f"/proc/{child.pid}/status").read_text()
        peak = next(line for line in status.splitlines() if line.startswith("VmHWM"))
        rows = out.read_bytes().count(b"\n") if out.exists() else 0
        waited = time.monotonic() - start
        print(f"{args.kind}: {peak.split(':')[1].strip()} peak; {rows} rows on disk after {waited:.1f} s")
        child.stdin.close()
        child.wait()
        print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
