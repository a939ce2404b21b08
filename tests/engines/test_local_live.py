"""Promises only a running process can show: rows reach the disk (or the pipe) batch
by batch while the run is still going, and a second signal aborts it with exit 3.

The subprocess reads its inputs from `--from-list -`, fed here a few paths at a
time, so the test decides when the run is waiting: nothing depends on timing.
A broken promise shows as a wait that never ends (a 60 s deadline, then fail).
"""

from __future__ import annotations

import json
import os
import platform
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from capbatch.errors import ExitCode
from tests.cli.test_caption_options import png
from tests.runtime_fakes import make_fake_bundle

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 60  # generous: a loaded 2-core machine; never reached when all is well
FED = 10  # with --batch-size 2 --workers 1 the run reads 8 paths ahead, then writes


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_fake_bundle(tmp_path_factory.mktemp("fake") / "bundle")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    paths = []
    for i in range(FED + 4):
        (root / f"{i:02d}.png").write_bytes(png(200 + i))
        paths.append(str(root / f"{i:02d}.png"))
    return paths


def start(bundle, out: str) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "capbatch", "caption", "--from-list", "-", "--out", out,
        "--model", str(bundle), "--batch-size", "2", "--workers", "1", "--format", "jsonl",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("PYTHONUNBUFFERED", None)  # stdout block-buffered, as in a real pipe
    return subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env,
    )  # fmt: skip


def feed(process: subprocess.Popen, paths: list[str]) -> None:
    process.stdin.write("".join(f"{p}\n" for p in paths))
    process.stdin.flush()


def whole_rows(path: Path) -> list[dict]:
    """The complete lines of a JSONL file being written (each must parse)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n")[:-1]]


# The read(2) syscall's number, to see a process wait on its stdin (Linux /proc).
READ_SYSCALL = {"x86_64": 0, "aarch64": 63}.get(platform.machine())


def wait_until_reading_stdin(process: subprocess.Popen) -> None:
    """Until the main thread sits in read(0, ...): the run has used every path fed
    and waits for the next one. Only then is it sure not to finish on its own."""
    if READ_SYSCALL is None:
        pytest.skip(f"read(2)'s syscall number on {platform.machine()} is not listed here")
    deadline = time.monotonic() + DEADLINE_S
    while process.poll() is None and time.monotonic() < deadline:
        try:
            fields = Path(f"/proc/{process.pid}/syscall").read_text().split()
        except OSError:
            pytest.skip("needs /proc/<pid>/syscall (Linux)")
        if fields[:2] == [str(READ_SYSCALL), "0x0"]:
            return
        time.sleep(0.01)


def wait_for_rows(process, path: Path, at_least: int) -> list[dict]:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        rows = whole_rows(path)
        if len(rows) >= at_least or process.poll() is not None:
            return rows
        time.sleep(0.02)
    return whole_rows(path)


def abort_with(process: subprocess.Popen, sig: int) -> None:
    """Send the second signal until the process ends (DEADLINE_S at most).

    Signals sent back to back can arrive as one (the kernel and Python's handler
    both keep one pending flag per signal number), so a repeat covers a second
    signal that merged with the first. A run that ignores second signals never
    ends, however often it gets them."""
    deadline = time.monotonic() + DEADLINE_S
    while process.poll() is None and time.monotonic() < deadline:
        process.send_signal(sig)
        try:
            process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            continue


def ended_stderr(process: subprocess.Popen) -> str:
    """stderr for an assertion message: the process is ended first (reading the
    pipe of a live one would wait for ever)."""
    if process.poll() is None:
        process.kill()
        process.wait()
    return process.stderr.read()


def finish(process: subprocess.Popen) -> tuple[int, str]:
    try:
        code = process.wait(timeout=DEADLINE_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return code, process.stderr.read()


def test_rows_are_on_disk_batch_by_batch_while_the_subprocess_runs(bundle, images, tmp_path):
    out = tmp_path / "rows.jsonl"
    process = start(bundle, str(out))
    try:
        feed(process, images[:FED])
        rows = wait_for_rows(process, out, 2)
        running = process.poll() is None  # after reading: it ran while the rows were read
        assert running, ended_stderr(process)
        assert len(rows) >= 2 and [r["key"] for r in rows] == images[: len(rows)]
        assert all(r["status"] == "ok" for r in rows)
        process.stdin.close()  # the end of the list: the run finishes
        code, err = finish(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == ExitCode.OK, err
    assert [r["key"] for r in whole_rows(out)] == images[:FED]


def test_out_dash_streams_each_batch_while_the_subprocess_runs(bundle, images, tmp_path):
    process = start(bundle, "-")
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in process.stdout], daemon=True)
    reader.start()
    try:
        feed(process, images[:FED])
        first = [json.loads(lines.get(timeout=DEADLINE_S)) for _ in range(2)]
        assert process.poll() is None, ended_stderr(process)
        assert [r["key"] for r in first] == images[:2]
        process.stdin.close()
        code, err = finish(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(timeout=DEADLINE_S)
    assert code == ExitCode.OK, err
    assert len(first) + lines.qsize() == FED


@pytest.mark.parametrize(
    "first, second", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGINT)]
)
def test_second_signal_aborts_a_waiting_subprocess_with_exit_3(
    bundle, images, tmp_path, first, second
):
    out = tmp_path / "rows.jsonl"
    process = start(bundle, str(out))
    try:
        feed(process, images[:FED])
        rows = wait_for_rows(process, out, 2)  # the handlers are in place once rows are out
        wait_until_reading_stdin(process)
        assert process.poll() is None and len(rows) >= 2, ended_stderr(process)
        # The first signal only asks the run to stop after its batch; it is waiting
        # for the next path (stdin stays open), so only the second can end it.
        process.send_signal(first)
        abort_with(process, second)
        code, err = finish(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == ExitCode.INTERRUPTED, err
    # "capbatch: interrupted" (the abort reached the CLI), or the run's own
    # "interrupted: N captioned ..." summary where the engine catches the abort.
    last = [line for line in err.strip().splitlines() if "interrupted" in line][-1]
    assert last == "capbatch: interrupted" or last.startswith("interrupted: "), err
    assert "Traceback" not in err
    kept = whole_rows(out)  # rows already flushed stay valid: whole, in order, once each
    assert len(kept) >= len(rows) and [r["key"] for r in kept] == images[: len(kept)]
