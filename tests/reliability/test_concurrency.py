"""Two runs at once, as real processes: same output -> refused by the lock naming the
other run; different outputs over the same inputs -> both succeed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from capbatch.cli import main
from capbatch.errors import ExitCode
from capbatch.output import open_output
from capbatch.output_lock import lock_path_for
from tests.io_fixtures import png_bytes
from tests.runtime_fakes import make_fake_bundle

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_fake_bundle(tmp_path_factory.mktemp("fake") / "bundle")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for index in range(12):
        (root / f"{index:02d}.png").write_bytes(png_bytes((index * 20, 90, 200), (40 + index, 30)))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    return root


def caption(out: Path, bundle: Path, *inputs, stdin=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "capbatch", "caption", *map(str, inputs), "--out", str(out),
         "--model", str(bundle), "--device", "cpu", "-q"],
        stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV,
    )  # fmt: skip


def wait_for_lock_holder(out: Path, process: subprocess.Popen) -> dict:
    """The holder info the first run writes into its lock, once it holds it."""
    lock = lock_path_for(out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            info = json.loads(lock.read_text() or "{}")
        except (OSError, ValueError):
            info = {}
        if info.get("pid") == process.pid:
            return info
        time.sleep(0.02)
    raise AssertionError(f"the first run never took the lock: {process.stderr.read()!r}")


def test_second_run_on_the_same_output_is_refused_naming_the_first(bundle, photos, tmp_path):
    out = tmp_path / "shared.csv"
    # The first run reads its list from stdin: while we keep it open, it holds the lock.
    first = caption(out, bundle, "--from-list", "-", stdin=subprocess.PIPE)
    first.stdin.write(f"{photos / '00.png'}\n".encode())
    first.stdin.flush()
    holder = wait_for_lock_holder(out, first)
    assert holder["host"] == socket.gethostname()

    second = caption(out, bundle, photos)
    assert second.wait(timeout=60) == ExitCode.FATAL
    err = second.stderr.read().decode()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"{out} is being written by another capbatch run (pid {first.pid} on " in lines[0]
    assert socket.gethostname() in lines[0] and "choose another output" in lines[0]

    first.stdin.write(f"{photos / '01.png'}\n".encode())
    first.stdin.close()
    assert first.wait(timeout=60) == ExitCode.OK, first.stderr.read()
    # The refused run touched nothing: the first run's rows, each once, and no lock left.
    assert open_output(out, "csv").done() == {
        str(photos / "00.png"): "ok",
        str(photos / "01.png"): "ok",
    }
    assert out.read_text().count("\n") == 3
    assert not lock_path_for(out).exists()


def test_two_runs_on_different_outputs_over_the_same_inputs_both_succeed(bundle, photos, tmp_path):
    outs = [tmp_path / "one.jsonl", tmp_path / "two.csv"]
    runs = [caption(out, bundle, photos) for out in outs]
    codes = [run.wait(timeout=120) for run in runs]
    errs = [run.stderr.read().decode() for run in runs]
    assert codes == [ExitCode.SOME_FAILED, ExitCode.SOME_FAILED], errs  # broken.jpg
    one, two = open_output(outs[0], "jsonl").done(), open_output(outs[1], "csv").done()
    assert one == two and len(one) == 13
    rows = [json.loads(line) for line in outs[0].read_text().splitlines()]
    assert len(rows) == 13 and len({r["key"] for r in rows}) == 13


def test_lock_left_by_a_killed_run_does_not_block(capsys, bundle, photos, tmp_path):
    out = tmp_path / "after-crash.csv"
    # What a SIGKILLed run leaves: the lock file with its holder's details, no flock.
    lock_path_for(out).write_text(json.dumps({"pid": 999999, "host": "gone", "started": "x"}))
    code = main(["caption", str(photos / "00.png"), "--out", str(out), "--model", str(bundle)])
    assert code == ExitCode.OK, capsys.readouterr().err
    assert not lock_path_for(out).exists()
