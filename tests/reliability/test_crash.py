"""Crash consistency: SIGKILL + resume, SIGTERM, disk full (injected and, if mountable, real).

The long version (20 random kills over 500 images, CSV/JSONL/Parquet) is
`python benchmarks/crash_resume.py`; docs/reliability.md records its result.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from capbatch.cli import main
from capbatch.errors import ExitCode
from capbatch.output import lines, open_output
from capbatch.output_lock import lock_path_for
from tests.runtime_fakes import make_fake_bundle

REPO = Path(__file__).resolve().parents[2]


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "crash_resume", REPO / "benchmarks" / "crash_resume.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


crash = _load_script()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_fake_bundle(tmp_path_factory.mktemp("fake") / "bundle")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """60 noise images (every 20th broken), larger than needed so a run takes a while."""
    directory = tmp_path_factory.mktemp("crash") / "images"
    return directory, crash.make_images(directory, 60, size=(480, 360))


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return int(code or 0), capsys.readouterr().err


@pytest.mark.parametrize(
    "fmt,moments",
    [
        ("csv", [8, 25, 44]),
        ("jsonl", [8, 25, 44]),
        # Parquet's last kill comes once every row is in a part: during the merge.
        ("parquet", [8, 25, 60]),
    ],
)
def test_three_sigkills_then_resume_give_each_input_once(bundle, images, tmp_path, fmt, moments):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    directory, keys = images
    result = crash.crash_and_resume(
        fmt, directory, keys, bundle, tmp_path, kills=3, rng=random.Random(0),
        extra=("--batch-size", "2", "--workers", "1"), kill_after_rows=moments,
    )  # fmt: skip
    assert result["passed"], result["problems"]
    assert result["rows"] == len(keys)
    # 1 when the finishing run met a broken image itself; 0 when only the merge was left.
    assert result["final_exit_code"] in (ExitCode.OK, ExitCode.SOME_FAILED)


def test_checks_catch_a_duplicated_row(images, tmp_path):
    # The checker itself must be able to fail.
    _, keys = images
    row = dict.fromkeys(crash.ROW_FIELDS)
    rows = [dict(row, key=k) for k in keys] + [dict(row, key=keys[0])]
    problems = crash.check_against_reference(rows, {}, keys)
    assert any("more than once" in p for p in problems)
    assert any("no row" in p for p in crash.check_against_reference(rows[2:-1], {}, keys))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_flush_rows_print_summary_and_exit_3(bundle, images, tmp_path, sig):
    directory, keys = images
    out = tmp_path / "stopped.jsonl"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(
        [sys.executable, "-m", "capbatch", "caption", str(directory), "--out", str(out),
         "--model", str(bundle), "--batch-size", "2", "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    while process.poll() is None and crash.count_complete_records(out, "jsonl") < 6:
        time.sleep(0.005)
    process.send_signal(sig)
    code = process.wait(timeout=60)
    err = process.stderr.read().decode()
    rows = crash.read_rows(out, "jsonl")  # whole rows only: parses strictly
    if len(rows) == len(keys):
        pytest.skip("the run finished before the signal arrived")  # a very fast machine
    assert code == ExitCode.INTERRUPTED, err
    assert "interrupted:" in err and "rerun with --resume" in err and "Traceback" not in err
    assert len({r["key"] for r in rows}) == len(rows) >= 6
    resumed = subprocess.run(
        crash.caption_command(directory, out, bundle, "--resume"), env=env, capture_output=True
    )
    assert resumed.returncode == ExitCode.SOME_FAILED
    assert sorted(r["key"] for r in crash.read_rows(out, "jsonl")) == sorted(keys)


def _fail_with_enospc_after(monkeypatch, calls: int) -> None:
    """The `calls`+1-th write() leaves half its text on disk, then raises ENOSPC."""
    real_append = lines.LineWriter._append
    count = {"n": 0}

    def append(self, text):
        count["n"] += 1
        if count["n"] > calls and text:
            real_append(self, text[:-5])  # a torn last row, as a full disk leaves
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_append(self, text)

    monkeypatch.setattr(lines.LineWriter, "_append", append)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_disk_full_is_one_line_and_resume_completes(
    capsys, bundle, images, tmp_path, monkeypatch, fmt
):
    directory, keys = images
    out = tmp_path / f"full.{fmt}"
    _fail_with_enospc_after(monkeypatch, calls=4)  # header (csv) + a few batches
    code, err = run_cli(
        capsys, "caption", directory, "--out", out, "--model", bundle, "--batch-size", "4"
    )
    assert code == ExitCode.FATAL
    lines = [line for line in err.splitlines() if line.startswith("capbatch:")]
    assert lines == [f"capbatch: error: cannot write {out}: No space left on device"], err
    assert "Traceback" not in err
    assert not out.read_bytes().endswith(b"\n")  # the torn row is there ...
    partial = open_output(out, fmt).done()  # ... and ignored: what is left is valid
    assert 0 < len(partial) < len(keys)
    assert not lock_path_for(out).exists()

    monkeypatch.undo()
    code, err = run_cli(capsys, "caption", directory, "--out", out, "--model", bundle, "--resume")
    assert code == ExitCode.SOME_FAILED, err
    rows = crash.read_rows(out, fmt)
    assert sorted(r["key"] for r in rows) == sorted(keys)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 64 KiB tmpfs (needs root and mount); skipped cleanly elsewhere."""
    mount_point = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
        capture_output=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()[:100]}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_real_full_disk_keeps_a_valid_partial_output(capsys, bundle, images, small_tmpfs):
    directory, keys = images
    out = small_tmpfs / "full.jsonl"
    # Fill the tmpfs up to a little room, so only some rows fit.
    (small_tmpfs / "filler").write_bytes(b"\0" * (64 * 1024 - 12 * 1024))
    code, err = run_cli(
        capsys, "caption", directory, "--out", out, "--model", bundle, "--batch-size", "4"
    )
    assert code == ExitCode.FATAL, err
    assert "No space left on device" in err and "Traceback" not in err
    partial = open_output(out, "jsonl").done()
    assert 0 < len(partial) < len(keys)
    (small_tmpfs / "filler").unlink()  # space freed: resume finishes the job
    code, err = run_cli(capsys, "caption", directory, "--out", out, "--model", bundle, "--resume")
    assert code == ExitCode.SOME_FAILED, err
    lines = out.read_text(encoding="utf-8").splitlines()
    assert sorted(json.loads(line)["key"] for line in lines) == sorted(keys)
