"""The local engine with a real (fake-weight) bundle: order, bounds, stop, resume."""

from __future__ import annotations

import csv
import os
import signal
import threading

import numpy as np
import pytest
from PIL import Image

from capbatch import job
from capbatch.captioner import Captioner
from capbatch.engines import local
from capbatch.engines.local import estimate_total, run_captioning
from capbatch.errors import ExitCode, OutputError, UsageError
from capbatch.job import RunOptions, keys_to_keep, stop_on_signals
from capbatch.output_lock import OutputLock
from capbatch.sources import SourceItem
from tests.runtime_fakes import make_fake_bundle


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    bundle = make_fake_bundle(tmp_path_factory.mktemp("fake") / "bundle")
    return Captioner(bundle, device="cpu", batch_size=3)


def write_images(folder, count: int, start: int = 0) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    paths = []
    for i in range(start, start + count):
        path = folder / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_options_validate():
    with pytest.raises(ValueError, match="exclude"):
        RunOptions(inputs=("a",), resume=True, overwrite=True)
    with pytest.raises(ValueError, match="no inputs"):
        RunOptions()
    with pytest.raises(ValueError, match="workers"):
        RunOptions(inputs=("a",), workers=0)


def test_keys_to_keep_is_per_key():
    done = {"a": "ok", "b": "error"}
    assert keys_to_keep(done, RunOptions(inputs=("x",), resume=True)) == done
    assert keys_to_keep(done, RunOptions(inputs=("x",), retry_errors=True)) == {"a": "ok"}
    assert keys_to_keep(done, RunOptions(inputs=("x",))) == {}


def test_rows_keep_input_order_with_errors_between(captioner, tmp_path):
    paths = write_images(tmp_path / "in", 7)
    (tmp_path / "in" / "img002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out.csv"
    summary = run_captioning(captioner, RunOptions(inputs=(str(tmp_path / "in"),), out=out))
    rows = read_csv(out)
    assert [r["key"] for r in rows] == [str(p) for p in paths]
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "ok", "ok", "ok", "ok"]
    assert rows[2]["error"] and not rows[2]["caption"]
    assert rows[0]["width"] == "30" and rows[0]["height"] == "20"
    assert rows[0]["model_id"] == "fake-0"
    assert (summary.ok, summary.errors, summary.exit_code) == (6, 1, ExitCode.SOME_FAILED)


def test_in_flight_items_are_bounded(captioner, tmp_path, monkeypatch):
    data = (write_images(tmp_path / "one", 1)[0]).read_bytes()
    pulled = []

    def endless_like(inputs, **kwargs):
        for i in range(60):
            pulled.append(i)
            yield SourceItem(f"k{i:03d}", None, data, None)

    monkeypatch.setattr(job, "iter_sources", endless_like)  # job_sources reads it
    written = []

    def on_progress(summary):
        written.append((len(pulled), summary.processed))

    options = RunOptions(inputs=("x",), out=tmp_path / "o.jsonl", workers=2)
    run_captioning(captioner, options, on_progress=on_progress)
    limit = 2 * captioner.batch_size + 2 * 2
    assert written[-1][1] == 60
    # never more than `limit` items pulled ahead of what was written (+ the current chunk)
    assert all(pulled_n - done <= limit + captioner.batch_size for pulled_n, done in written)


def test_input_bytes_waiting_for_decode_are_bounded(captioner, tmp_path, monkeypatch):
    # 40 large inputs that fail to decode, and a slow decoder: the window must stop
    # reading ahead once IN_FLIGHT_BYTES wait undecoded, not fill up to its item limit.
    blob = b"\0" * 1000
    state = {"read": 0, "decoded": 0, "most_waiting": 0}
    lock = threading.Lock()

    def inputs(paths, **kwargs):
        for i in range(40):
            with lock:
                state["read"] += 1
                waiting = state["read"] - state["decoded"]
                state["most_waiting"] = max(state["most_waiting"], waiting)
            yield SourceItem(f"k{i:03d}", None, blob, None)

    def slow_decode(data, spec):
        threading.Event().wait(0.01)
        with lock:
            state["decoded"] += 1
        return "not an image"

    monkeypatch.setattr(job, "iter_sources", inputs)  # job_sources reads it
    monkeypatch.setattr(local, "decode_or_reason", slow_decode)
    monkeypatch.setattr(local, "IN_FLIGHT_BYTES", 2 * len(blob), raising=False)
    options = RunOptions(inputs=("x",), out=tmp_path / "o.jsonl", workers=1)
    summary = run_captioning(captioner, options)
    assert summary.errors == 40
    # At most the budget (2 items) plus the one read while under it, and the item being
    # read now; without the budget the window's 2 x 3 + 2 x 1 = 8 items would wait.
    assert state["most_waiting"] <= 4, state


def test_stop_flushes_finished_rows_and_resume_completes(captioner, tmp_path):
    paths = write_images(tmp_path / "in", 10)
    out = tmp_path / "out.csv"
    options = RunOptions(inputs=(str(tmp_path / "in"),), out=out)
    stop = threading.Event()

    def stop_after_first_batch(summary):
        stop.set()

    summary = run_captioning(captioner, options, stop=stop, on_progress=stop_after_first_batch)
    assert summary.interrupted and summary.exit_code == ExitCode.INTERRUPTED
    first = read_csv(out)
    assert 1 <= len(first) < 10
    assert [r["key"] for r in first] == [str(p) for p in paths[: len(first)]]

    with pytest.raises(UsageError, match="--resume"):
        run_captioning(captioner, options)
    resumed = run_captioning(captioner, RunOptions(inputs=options.inputs, out=out, resume=True))
    assert resumed.skipped == len(first)
    keys = [r["key"] for r in read_csv(out)]
    assert keys == [str(p) for p in paths]  # each key exactly once, input order
    assert resumed.exit_code == ExitCode.OK


def test_retry_errors_redoes_failed_keys_once(captioner, tmp_path):
    paths = write_images(tmp_path / "in", 4)
    good = paths[1].read_bytes()
    paths[1].write_bytes(b"garbage")
    out = tmp_path / "out.jsonl"
    inputs = (str(tmp_path / "in"),)
    assert run_captioning(captioner, RunOptions(inputs=inputs, out=out)).errors == 1
    paths[1].write_bytes(good)
    again = run_captioning(captioner, RunOptions(inputs=inputs, out=out, resume=True))
    assert (again.skipped, again.processed) == (4, 0)
    retried = run_captioning(captioner, RunOptions(inputs=inputs, out=out, retry_errors=True))
    assert (retried.skipped, retried.ok, retried.errors) == (3, 1, 0)
    import json

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["key"] for r in rows) == sorted(str(p) for p in paths)
    assert all(r["status"] == "ok" for r in rows)


def test_overwrite_starts_over(captioner, tmp_path):
    write_images(tmp_path / "in", 2)
    out = tmp_path / "out.csv"
    inputs = (str(tmp_path / "in"),)
    run_captioning(captioner, RunOptions(inputs=inputs, out=out))
    run_captioning(captioner, RunOptions(inputs=inputs, out=out, overwrite=True))
    assert len(read_csv(out)) == 2


def test_second_run_on_the_same_output_is_refused(captioner, tmp_path):
    write_images(tmp_path / "in", 1)
    out = tmp_path / "out.csv"
    with OutputLock(out):
        with pytest.raises(OutputError, match="being written by"):
            run_captioning(captioner, RunOptions(inputs=(str(tmp_path / "in"),), out=out))


def test_sigterm_sets_stop(captioner, tmp_path):
    write_images(tmp_path / "in", 8)
    out = tmp_path / "out.csv"
    stop = threading.Event()

    def send_sigterm(summary):
        os.kill(os.getpid(), signal.SIGTERM)

    with stop_on_signals(stop):
        summary = run_captioning(
            captioner, RunOptions(inputs=(str(tmp_path / "in"),), out=out), stop=stop,
            on_progress=send_sigterm,
        )  # fmt: skip
    assert summary.interrupted
    assert signal.getsignal(signal.SIGTERM) is not None  # handler restored afterwards
    assert len(read_csv(out)) == summary.processed < 8


def test_attention_maps_are_written(captioner, tmp_path):
    bundle = captioner.bundle.path
    with_attention = Captioner(bundle, device="cpu", batch_size=2, return_attention=True)
    write_images(tmp_path / "in", 3)
    run_captioning(
        with_attention,
        RunOptions(
            inputs=(str(tmp_path / "in"),),
            out=tmp_path / "o.csv",
            attention_dir=tmp_path / "att",
        ),
    )
    maps = sorted((tmp_path / "att").glob("*.png"))
    assert len(maps) == 3
    with Image.open(maps[0]) as sheet:
        assert sheet.width >= 32 and sheet.height > 32


def test_estimate_total(tmp_path):
    write_images(tmp_path / "in" / "deep", 3)
    write_images(tmp_path / "in", 2, start=10)
    (tmp_path / "in" / "notes.txt").write_text("x")
    inputs = (str(tmp_path / "in"),)
    assert estimate_total(RunOptions(inputs=inputs)) == 5
    assert estimate_total(RunOptions(inputs=inputs, recursive=False)) == 2
    assert estimate_total(RunOptions(inputs=("a.tar",))) is None
    assert estimate_total(RunOptions(inputs=inputs, glob="*.png")) is None
