"""Crash consistency: SIGKILL `capbatch caption` at random moments, resume each time.

    python benchmarks/crash_resume.py --images 500 --kills 20 --formats csv jsonl parquet

For each format: a clean reference run over the same images gives the expected
rows; then runs with `--resume` are started and each is SIGKILLed at one of
--kills random moments spread over the whole job (a random row count the output
must reach, plus up to 30 ms; about a quarter during start-up instead), each
run resuming the last one's output; a last run
finishes. Checked afterwards:

- every input appears exactly once, every row parses (CSV with the csv module,
  strict; JSONL line by line; Parquet with pyarrow), no `.parts` left;
- every row equals the reference run's row for its key (caption, score,
  status, error, size): resuming changes nothing.

5 % of the images are broken on purpose, so error rows go through resume too.
Prints a JSON summary per format; exit code 0 when every check held.
tests/reliability/test_crash.py runs a short version (3 kills, 60 images).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

# The checker follows the row schema; it re-implements the parsing on its own.
from capbatch.rows import ROW_FIELDS

REPO = Path(__file__).resolve().parents[1]
EXTENSIONS = {"csv": ".csv", "jsonl": ".jsonl", "parquet": ".parquet"}
BROKEN_EVERY = 20  # one image in 20 is broken on purpose
STARTUP_SHARE = 0.25  # kills aimed at start-up; the rest land while rows are written


def kill_moments(images: int, kills: int, rng: random.Random) -> list[int | None]:
    """Random kill moments over one whole run, in order: a row count the output must
    reach first, or None for "during start-up" (about STARTUP_SHARE of them)."""
    at_startup = sum(rng.random() < STARTUP_SHARE for _ in range(kills))
    targets: list[int | None] = sorted(rng.sample(range(1, images), kills - at_startup))
    for _ in range(at_startup):
        targets.insert(rng.randrange(len(targets) + 1), None)
    return targets


def make_images(directory: Path, count: int, size=(320, 240), seed: int = 0) -> list[str]:
    """`count` noise JPEG/PNG files (some broken); returns their row keys in walk order."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for index in range(count):
        name = f"img-{index:05d}" + (".png" if index % 3 == 0 else ".jpg")
        path = directory / name
        if index % BROKEN_EVERY == BROKEN_EVERY - 1:
            path.write_bytes(b"\xff\xd8\xff\xe0 broken on purpose")
        else:
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)  # (H, W, 3)
            Image.fromarray(pixels).save(path, quality=90)
        names.append(name)
    return [str(directory / name) for name in sorted(names)]


def caption_command(images: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "capbatch", "caption", str(images), "--out", str(out),
        "--model", str(model), "--device", "cpu", "-q", *extra,
    ]  # fmt: skip


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def read_rows(out: Path, fmt: str) -> list[dict]:
    """Every row of a finished output, parsed strictly (raises on anything malformed)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        parts = out.with_name(out.name + ".parts")
        if parts.exists():
            raise AssertionError(f"{parts} left behind after a finished run")
        table = pq.read_table(out)
        if tuple(table.column_names) != ROW_FIELDS:
            raise AssertionError(f"parquet columns {table.column_names}")
        return [_normalise(r) for r in table.to_pylist()]
    text = out.read_bytes().decode("utf-8")
    if not text.endswith("\n"):
        raise AssertionError("output does not end with a whole record")
    if fmt == "csv":
        records = list(csv.reader(io.StringIO(text, newline=""), strict=True))
        if tuple(records[0]) != ROW_FIELDS:
            raise AssertionError(f"csv header {records[0]}")
        rows = []
        for fields in records[1:]:
            if len(fields) != len(ROW_FIELDS):
                raise AssertionError(f"csv row with {len(fields)} fields: {fields}")
            rows.append(_normalise(dict(zip(ROW_FIELDS, fields))))
        return rows
    rows = []
    for line in text.splitlines():
        record = json.loads(line)
        if not isinstance(record, dict) or tuple(record) != ROW_FIELDS:
            raise AssertionError(f"jsonl record {line[:80]}")
        rows.append(_normalise(record))
    return rows


def _normalise(record: dict) -> dict:
    """Comparable values whatever the format wrote (CSV has only strings)."""
    out = {}
    for name in ROW_FIELDS:
        value = record[name]
        if value == "" or value is None:
            value = None
        elif name == "score":
            value = round(float(value), 5)
        elif name in ("width", "height"):
            value = int(value)
        out[name] = value
    return out


def count_complete_records(out: Path, fmt: str) -> int:
    """Rows present right now (for choosing and describing kill moments)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        parts = out.with_name(out.name + ".parts")
        files = ([out] if out.exists() else []) + sorted(parts.glob("part-*.parquet"))
        total = 0
        for path in files:
            try:
                total += pq.read_metadata(path).num_rows
            except (OSError, ValueError):
                pass  # renamed or merged away while we looked
        return total
    try:
        data = out.read_bytes()
    except FileNotFoundError:
        return 0
    return max(0, data.count(b"\n") - (fmt == "csv"))


def check_against_reference(
    rows: list[dict], reference: dict[str, dict], keys: list[str]
) -> list[str]:
    problems = []
    seen = [row["key"] for row in rows]
    duplicates = {k for k in seen if seen.count(k) > 1} if len(seen) != len(set(seen)) else set()
    if duplicates:
        problems.append(
            f"{len(duplicates)} keys appear more than once, e.g. {sorted(duplicates)[:3]}"
        )
    missing = set(keys) - set(seen)
    if missing:
        problems.append(f"{len(missing)} inputs have no row, e.g. {sorted(missing)[:3]}")
    extra = set(seen) - set(keys)
    if extra:
        problems.append(f"{len(extra)} unexpected keys, e.g. {sorted(extra)[:3]}")
    differing = [row["key"] for row in rows if reference.get(row["key"]) not in (None, row)]
    if differing:
        problems.append(
            f"{len(differing)} rows differ from the reference run, e.g. {differing[:3]}"
        )
    return problems


def crash_and_resume(
    fmt: str,
    images: Path,
    keys: list[str],
    model: Path,
    work: Path,
    *,
    kills: int,
    rng: random.Random,
    extra: tuple[str, ...] = (),
    kill_after_rows: list[int | None] | None = None,
) -> dict:
    """Reference run, then `kills` SIGKILLed --resume runs, then a finishing run.

    Kill moments (kill_moments, or kill_after_rows for the test suite) are row
    counts: each run is killed soon after its output first holds that many rows.
    """
    env = _env()
    moments = kill_moments(len(keys), kills, rng) if kill_after_rows is None else kill_after_rows
    startup_s = 0.0
    if None in moments:  # how long start-up takes, to aim kills at it
        empty = work / "empty"
        empty.mkdir(exist_ok=True)
        started = time.monotonic()
        subprocess.run(caption_command(empty, work / f"empty{EXTENSIONS[fmt]}", model), env=env)
        startup_s = time.monotonic() - started
    reference_out = work / f"reference{EXTENSIONS[fmt]}"
    started = time.monotonic()
    subprocess.run(caption_command(images, reference_out, model, *extra), env=env, check=False)
    work_s = max(0.0, time.monotonic() - started - startup_s)
    reference = {row["key"]: row for row in read_rows(reference_out, fmt)}

    out = work / f"crashed{EXTENSIONS[fmt]}"
    landed, attempts, mid_run, torn_tails, finished_early = [], 0, 0, 0, 0
    for target in moments:
        attempts += 1
        process = subprocess.Popen(
            caption_command(images, out, model, "--resume", *extra),
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        if target is None:
            time.sleep(rng.uniform(0.0, startup_s))  # start-up, or resume's read-back
        else:
            # The moment the output first holds `target` rows, plus a little: kills land
            # between writes as well as inside one.
            while process.poll() is None and count_complete_records(out, fmt) < target:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.03))
        if process.poll() is not None:
            finished_early += 1  # it finished first: nothing left to kill
            process.stderr.read()
            continue
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.read()
        after = count_complete_records(out, fmt)
        landed.append(after)
        mid_run += 0 < after < len(keys)
        if fmt != "parquet" and out.exists() and not out.read_bytes().endswith(b"\n"):
            torn_tails += 1
    final = subprocess.run(
        caption_command(images, out, model, "--resume", *extra),
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    problems = []
    if final.returncode not in (0, 1):
        problems.append(f"finishing run exited {final.returncode}: {final.stderr.strip()[-300:]}")
    try:
        rows = read_rows(out, fmt)
    except Exception as exc:  # a parse failure is the finding
        rows = []
        problems.append(f"output does not parse: {exc!r}")
    problems += check_against_reference(rows, reference, keys)
    return {
        "format": fmt,
        "images": len(keys),
        "kills": len(landed),
        "kill_attempts": attempts,
        "finished_before_the_kill": finished_early,
        "kills_with_output_partly_written": mid_run,
        "torn_tails_seen_after_kill": torn_tails,
        "records_at_each_kill": landed,
        "startup_s": round(startup_s, 2),
        "reference_work_s": round(work_s, 2),
        "final_exit_code": final.returncode,
        "rows": len(rows),
        "problems": problems,
        "passed": not problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--formats", nargs="+", default=["csv", "jsonl", "parquet"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, default=None, help="bundle (default: a tiny fake)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--work", type=Path, default=None, help="keep files here")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="capbatch-crash-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = args.model
        if model is None:
            sys.path.insert(0, str(REPO))
            from tests.runtime_fakes import make_fake_bundle

            model = make_fake_bundle(work / "bundle")
        keys = make_images(work / "images", args.images, seed=args.seed)
        results = []
        for fmt in args.formats:
            (work / fmt).mkdir(exist_ok=True)
            result = crash_and_resume(
                fmt, work / "images", keys, model, work / fmt, kills=args.kills, rng=rng,
                extra=("--batch-size", str(args.batch_size)),
            )  # fmt: skip
            print(json.dumps(result), flush=True)
            results.append(result)
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
