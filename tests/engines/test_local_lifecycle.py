"""What the local engine promises (capbatch/engines/local.py, docs/runtime.md): how far
it reads ahead, when it writes, what a stop, a second signal or a fatal error leaves
behind, what on_start/on_progress see, and the ETA's count."""

from __future__ import annotations

import csv
import io
import json
import threading
from concurrent.futures import Future

import numpy as np
import pytest
from PIL import Image

from capbatch import job
from capbatch.attention_maps import attention_file_name
from capbatch.captioner import Captioner
from capbatch.engines import local
from capbatch.engines.local import estimate_total, run_captioning
from capbatch.errors import ExitCode, OutputError, UsageError
from capbatch.job import RunOptions
from capbatch.output import open_output, parts_dir_for
from capbatch.output_lock import OutputLock
from capbatch.rows import Row
from capbatch.sources import SourceItem
from tests.runtime_fakes import make_fake_bundle

BATCH = 3


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_fake_bundle(tmp_path_factory.mktemp("fake") / "bundle")


@pytest.fixture(scope="module")
def captioner(bundle):
    return Captioner(bundle, device="cpu", batch_size=BATCH)


def png(seed: int, size: tuple[int, int] = (24, 32)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_images(folder, count: int, start: int = 0) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        path = folder / f"img{i:03d}.png"
        path.write_bytes(png(i))
        paths.append(path)
    return paths


def read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class Inputs:
    """Stands in for the sources (job_sources reads job.iter_sources): yields the given
    items in order and counts how many the engine has taken."""

    def __init__(self, monkeypatch, items, on_pull=None):
        self.items, self.on_pull, self.pulled = list(items), on_pull, 0
        monkeypatch.setattr(job, "iter_sources", self)

    def __call__(self, inputs, **kwargs):
        for item in self.items:
            self.pulled += 1
            if self.on_pull is not None:
                self.on_pull(self.pulled)
            yield item


def images(count: int, data: bytes | None = None) -> list[SourceItem]:
    data = data or png(0)
    return [SourceItem(f"k{i:03d}", None, data, None) for i in range(count)]


class _DeferredFuture(Future):
    """Runs its decode when its result is first asked for (or at the pool's exit)."""

    def __init__(self, call):
        super().__init__()
        self._call = call

    def run(self) -> None:
        if not self.done():
            self.set_result(self._call())

    def result(self, timeout=None):
        self.run()
        return super().result(timeout)


class DeferredPool:
    """A decode pool that decodes nothing before it is needed: an item's decode runs
    when the engine asks for its result, and, as ThreadPoolExecutor's exit does, every
    queued decode not cancelled runs when the pool closes. eager=True decodes on submit
    instead (every input decoded at once)."""

    def __init__(self, eager: bool = False):
        self.eager, self.futures = eager, []

    def __call__(self, *args, **kwargs):
        return self

    def submit(self, fn, *args):
        future = _DeferredFuture(lambda: fn(*args))
        if self.eager:
            future.run()
        self.futures.append(future)
        return future

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for future in self.futures:
            if not future.cancelled():
                future.run()


def count_decodes(monkeypatch) -> list[str]:
    """Every decode the engine runs, by the name of the thread it ran on."""
    threads = []
    real = local.decode_or_reason

    def counted(data, spec):
        threads.append(threading.current_thread().name)
        return real(data, spec)

    monkeypatch.setattr(local, "decode_or_reason", counted)
    return threads


# -- reading ahead: two batches and two items per worker, and a byte budget ------------


@pytest.mark.parametrize("workers", [1, 3])
def test_the_window_reads_two_batches_and_two_per_worker_ahead_and_no_more(
    captioner, tmp_path, monkeypatch, workers
):
    # docs/runtime.md: "a FIFO window of at most 2 x batch + 2 x workers items in
    # flight"; it is refilled while a batch is gathered so decoding never idles.
    total = 40
    source = Inputs(monkeypatch, images(total))
    seen = []
    options = RunOptions(inputs=("x",), out=tmp_path / "o.jsonl", workers=workers)
    run_captioning(
        captioner, options, on_progress=lambda s: seen.append((source.pulled, s.processed))
    )
    window = 2 * BATCH + 2 * workers
    assert [pulled for pulled, _ in seen] == [min(total, done + window) for _, done in seen]
    assert seen[-1] == (total, total)


def test_input_bytes_not_yet_decoded_limit_the_read_ahead(captioner, tmp_path, monkeypatch):
    data = png(1)
    source = Inputs(monkeypatch, images(20, data))
    monkeypatch.setattr(local, "ThreadPoolExecutor", DeferredPool())
    monkeypatch.setattr(local, "IN_FLIGHT_BYTES", 3 * len(data))
    seen = []
    options = RunOptions(inputs=("x",), out=tmp_path / "o.jsonl", workers=1)
    summary = run_captioning(
        captioner, options, on_progress=lambda s: seen.append(source.pulled - s.processed)
    )
    assert summary.ok == 20
    # Three items' bytes fill the budget (the item limit would be 8).
    assert seen == [3, 3, 3, 3, 3, 2, 0]


def test_one_input_larger_than_the_budget_still_goes_alone(captioner, tmp_path, monkeypatch):
    data = png(2)
    source = Inputs(monkeypatch, images(7, data))
    monkeypatch.setattr(local, "ThreadPoolExecutor", DeferredPool())
    monkeypatch.setattr(local, "IN_FLIGHT_BYTES", len(data) // 2)
    seen = []
    options = RunOptions(inputs=("x",), out=tmp_path / "o.jsonl", workers=1)
    summary = run_captioning(
        captioner, options, on_progress=lambda s: seen.append(source.pulled - s.processed)
    )
    assert (summary.ok, summary.errors) == (7, 0)
    assert seen == [1, 1, 0]
    assert [r["key"] for r in read_jsonl(tmp_path / "o.jsonl")] == [f"k{i:03d}" for i in range(7)]


def test_bytes_already_decoded_do_not_count_against_the_budget(captioner, tmp_path, monkeypatch):
    data = png(3)
    source = Inputs(monkeypatch, images(30, data))
    monkeypatch.setattr(local, "ThreadPoolExecutor", DeferredPool(eager=True))
    monkeypatch.setattr(local, "IN_FLIGHT_BYTES", len(data))
    seen = []
    options = RunOptions(inputs=("x",), out=tmp_path / "o.jsonl", workers=1)
    run_captioning(
        captioner, options, on_progress=lambda s: seen.append(source.pulled - s.processed)
    )
    assert seen[0] == 2 * BATCH + 2 * 1  # the item limit, not the byte budget


def test_decoding_runs_on_the_named_decode_threads(captioner, tmp_path, monkeypatch):
    threads = count_decodes(monkeypatch)
    Inputs(monkeypatch, images(5))
    run_captioning(captioner, RunOptions(inputs=("x",), out=tmp_path / "o.csv", workers=2))
    assert len(threads) == 5
    assert all(name.startswith("capbatch-decode") for name in threads), threads


# -- writing: one flushed write per batch, failed inputs included ----------------------


def test_rows_are_written_and_flushed_once_per_batch_failures_included(
    captioner, tmp_path, monkeypatch
):
    items = images(10)
    for i in (4, 5, 6, 7):
        items[i] = SourceItem(f"k{i:03d}", None, b"not an image", None)
    Inputs(monkeypatch, items)
    out = tmp_path / "o.csv"
    seen = []

    def on_progress(summary):
        seen.append((summary.processed, len(read_csv(out))))

    summary = run_captioning(captioner, RunOptions(inputs=("x",), out=out), on_progress=on_progress)
    assert seen == [(3, 3), (6, 6), (9, 9), (10, 10)]
    assert (summary.ok, summary.errors, summary.skipped) == (6, 4, 0)
    assert (summary.out, summary.fmt) == (out, "csv")


def test_inputs_that_could_not_be_read_get_their_reason_in_order(captioner, tmp_path, monkeypatch):
    items = images(4)
    items[1] = SourceItem("gone.png", "gone.png", None, "permission denied")
    items[2] = SourceItem("odd.png", "odd.png", None, None)
    Inputs(monkeypatch, items)
    out = tmp_path / "o.jsonl"
    summary = run_captioning(captioner, RunOptions(inputs=("x",), out=out))
    rows = read_jsonl(out)
    assert [r["key"] for r in rows] == ["k000", "gone.png", "odd.png", "k003"]
    assert [(r["status"], r["error"]) for r in rows[1:3]] == [
        ("error", "permission denied"),
        ("error", "unreadable input"),
    ]
    assert rows[1]["path"] == "gone.png"
    assert summary.exit_code == ExitCode.SOME_FAILED


def test_resume_skips_done_keys_wherever_they_are(captioner, tmp_path, monkeypatch):
    items = images(9)
    out = tmp_path / "o.jsonl"
    Inputs(monkeypatch, [items[i] for i in (0, 1, 4, 7, 8)])
    run_captioning(captioner, RunOptions(inputs=("x",), out=out))
    Inputs(monkeypatch, items)
    resumed = run_captioning(captioner, RunOptions(inputs=("x",), out=out, resume=True))
    assert (resumed.skipped, resumed.ok) == (5, 4)
    keys = [r["key"] for r in read_jsonl(out)]
    assert keys[5:] == ["k002", "k003", "k005", "k006"]
    assert sorted(keys) == [item.key for item in items]


# -- stopping: the first signal, the second, a caller's own Ctrl-C ----------------------


def test_a_stop_during_the_first_read_takes_no_further_input(captioner, tmp_path, monkeypatch):
    stop = threading.Event()
    source = Inputs(monkeypatch, images(20), on_pull=lambda n: n == 3 and stop.set())
    out = tmp_path / "o.csv"
    summary = run_captioning(captioner, RunOptions(inputs=("x",), out=out), stop=stop)
    assert source.pulled == 3
    assert summary.interrupted and summary.exit_code == ExitCode.INTERRUPTED
    assert summary.processed == 0 and read_csv(out) == []


def test_a_stop_while_a_batch_is_gathered_writes_what_was_taken_and_stops(
    captioner, tmp_path, monkeypatch
):
    # workers=1: the window holds 8; batch 2 takes k003, k004 and pulls k011, k012;
    # the stop arrives with k012, so k005 is never taken.
    stop = threading.Event()
    source = Inputs(monkeypatch, images(20), on_pull=lambda n: n == 13 and stop.set())
    out = tmp_path / "o.csv"
    options = RunOptions(inputs=("x",), out=out, workers=1)
    summary = run_captioning(captioner, options, stop=stop)
    assert source.pulled == 13
    assert [r["key"] for r in read_csv(out)] == [f"k{i:03d}" for i in range(5)]
    assert (summary.processed, summary.exit_code) == (5, ExitCode.INTERRUPTED)


def test_after_a_stop_inputs_read_ahead_are_not_decoded(captioner, tmp_path, monkeypatch):
    decodes = count_decodes(monkeypatch)
    items = images(20)
    items[5] = SourceItem("gone.png", None, None, "permission denied")  # in the window
    Inputs(monkeypatch, items)
    monkeypatch.setattr(local, "ThreadPoolExecutor", DeferredPool())
    stop = threading.Event()
    out = tmp_path / "o.csv"
    summary = run_captioning(
        captioner, RunOptions(inputs=("x",), out=out), stop=stop, on_progress=lambda s: stop.set()
    )
    assert summary.interrupted and summary.processed == BATCH
    assert len(decodes) == BATCH  # the queued decodes were cancelled, not run at exit


def test_a_second_signal_ends_the_run_with_the_rows_written(captioner, tmp_path, monkeypatch):
    Inputs(monkeypatch, images(12))
    out = tmp_path / "o.csv"
    stop = threading.Event()
    calls = []

    def second_signal(summary):
        calls.append(summary.processed)
        if len(calls) == 2:
            stop.set()  # what job.stop_on_signals' handler does: the first sets stop,
            raise KeyboardInterrupt  # the second raises

    summary = run_captioning(
        captioner, RunOptions(inputs=("x",), out=out), stop=stop, on_progress=second_signal
    )
    assert summary.interrupted and summary.exit_code == ExitCode.INTERRUPTED
    assert summary.processed == 2 * BATCH
    assert [r["key"] for r in read_csv(out)] == [f"k{i:03d}" for i in range(2 * BATCH)]
    with OutputLock(out):  # released
        pass


def test_a_library_callers_own_ctrl_c_is_raised_not_swallowed(captioner, tmp_path, monkeypatch):
    Inputs(monkeypatch, images(12))
    out = tmp_path / "o.csv"

    def interrupt(summary):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_captioning(captioner, RunOptions(inputs=("x",), out=out), on_progress=interrupt)
    assert [r["key"] for r in read_csv(out)] == [f"k{i:03d}" for i in range(BATCH)]
    with OutputLock(out):
        pass


# -- fatal errors: what the output keeps -------------------------------------------------


def test_a_fatal_error_before_any_row_leaves_no_new_output(captioner, tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "o.csv"
    with pytest.raises(UsageError, match="no images found"):
        run_captioning(captioner, RunOptions(inputs=(str(tmp_path / "empty"),), out=out))
    assert not out.exists()
    # so the corrected rerun needs no --overwrite
    write_images(tmp_path / "in", 2)
    assert run_captioning(captioner, RunOptions(inputs=(str(tmp_path / "in"),), out=out)).ok == 2


def test_a_fatal_error_streaming_to_stdout_is_reported_as_itself(captioner, tmp_path, monkeypatch):
    # --out - has no file to remove: the run's own error comes out, nothing else.
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    options = RunOptions(inputs=("empty",), out="-")
    with pytest.raises(UsageError, match="no images found under empty"):
        run_captioning(captioner, options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_a_fatal_error_on_a_resumed_output_keeps_its_rows(captioner, tmp_path):
    write_images(tmp_path / "in", 4)
    (tmp_path / "empty").mkdir()
    out = tmp_path / "o.csv"
    run_captioning(captioner, RunOptions(inputs=(str(tmp_path / "in"),), out=out))
    before = out.read_bytes()
    with pytest.raises(UsageError, match="no images found"):
        run_captioning(
            captioner, RunOptions(inputs=(str(tmp_path / "empty"),), out=out, resume=True)
        )
    assert out.read_bytes() == before


def test_a_fatal_error_keeps_the_parquet_rows_of_a_killed_run(captioner, tmp_path):
    # Parquet rows of a killed run live in "<out>.parts" until a run merges them; a
    # resumed run that fails before its first row must merge them, not delete them.
    pytest.importorskip("pyarrow")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "o.parquet"
    killed = open_output(out, None)
    killed.begin(append=False)
    killed.write([Row("a.png", "a.png", "x", -1.0, "ok", None, 1, 1, "fake-0")])  # never closed
    assert not out.exists() and parts_dir_for(out).exists()
    options = RunOptions(inputs=(str(tmp_path / "empty"),), out=out, resume=True)
    with pytest.raises(UsageError, match="no images found"):
        run_captioning(captioner, options)
    assert open_output(out, None).done() == {"a.png": "ok"}


def test_a_fatal_error_after_some_batches_keeps_their_rows(captioner, tmp_path, monkeypatch):
    def failing(inputs, **kwargs):
        yield from images(12)
        raise OSError("the list file went away")

    monkeypatch.setattr(job, "iter_sources", failing)
    out = tmp_path / "o.csv"
    with pytest.raises(OSError, match="went away"):
        run_captioning(captioner, RunOptions(inputs=("x",), out=out, workers=1))
    assert [r["key"] for r in read_csv(out)] == [f"k{i:03d}" for i in range(BATCH)]


# -- on_start ------------------------------------------------------------------------------


def test_on_start_runs_once_with_the_output_locked_before_any_row(captioner, tmp_path, monkeypatch):
    Inputs(monkeypatch, images(7))
    out = tmp_path / "o.csv"
    events = []

    def on_start():
        with pytest.raises(OutputError, match="being written by"):
            OutputLock(out).acquire()
        events.append(("start", out.exists() and len(read_csv(out))))

    run_captioning(
        captioner,
        RunOptions(inputs=("x",), out=out),
        on_start=on_start,
        on_progress=lambda s: events.append(("progress", s.processed)),
    )
    assert events[0] == ("start", 0)
    assert [e for e in events if e[0] == "start"] == [events[0]]
    assert [e[1] for e in events[1:]] == [3, 6, 7]


def test_on_start_is_not_called_when_the_output_is_refused(captioner, tmp_path, monkeypatch):
    Inputs(monkeypatch, images(2))
    out = tmp_path / "o.csv"
    run_captioning(captioner, RunOptions(inputs=("x",), out=out))
    started = []
    with pytest.raises(UsageError, match="already exists"):
        run_captioning(
            captioner, RunOptions(inputs=("x",), out=out), on_start=lambda: started.append(1)
        )
    assert started == []


# -- --attention-dir -------------------------------------------------------------------------


def test_rows_name_their_heatmap_and_error_rows_none(bundle, tmp_path):
    with_attention = Captioner(bundle, device="cpu", batch_size=2, return_attention=True)
    paths = write_images(tmp_path / "in", 3)
    (tmp_path / "in" / "img001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "o.jsonl"
    att = tmp_path / "att"
    options = RunOptions(inputs=(str(tmp_path / "in"),), out=out, attention_dir=att)
    run_captioning(with_attention, options)
    rows = read_jsonl(out)
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    names = [r["attention"] for r in rows]
    assert names == [attention_file_name(str(paths[0])), None, attention_file_name(str(paths[2]))]
    assert sorted(p.name for p in att.iterdir()) == sorted(names[::2])
    with Image.open(att / names[0]) as sheet:
        assert sheet.width >= 32


def test_a_batch_whose_inference_failed_gets_error_rows_and_no_heatmaps(
    bundle, tmp_path, monkeypatch
):
    with_attention = Captioner(bundle, device="cpu", batch_size=2, return_attention=True)

    def failing(images):
        raise RuntimeError("CUDA out of memory\nmore detail")

    monkeypatch.setattr(with_attention, "caption_decoded", failing)
    write_images(tmp_path / "in", 3)
    out = tmp_path / "o.jsonl"
    att = tmp_path / "att"
    options = RunOptions(inputs=(str(tmp_path / "in"),), out=out, attention_dir=att)
    summary = run_captioning(with_attention, options)
    rows = read_jsonl(out)
    assert [(r["status"], r["attention"]) for r in rows] == [("error", None)] * 3
    assert rows[0]["error"] == "inference failed: RuntimeError: CUDA out of memory"
    assert summary.errors == 3 and not (att.exists() and any(att.iterdir()))


def test_no_heatmaps_without_attention_dir(bundle, tmp_path):
    with_attention = Captioner(bundle, device="cpu", batch_size=2, return_attention=True)
    write_images(tmp_path / "in", 2)
    out = tmp_path / "o.jsonl"
    run_captioning(with_attention, RunOptions(inputs=(str(tmp_path / "in"),), out=out))
    assert [r["attention"] for r in read_jsonl(out)] == [None, None]


# -- estimate_total: the progress ETA's count ------------------------------------------------


def test_estimate_counts_named_files_and_image_names_in_folders(tmp_path):
    write_images(tmp_path / "a", 2)
    (tmp_path / "a" / "UPPER.JPG").write_bytes(b"x")
    (tmp_path / "a" / "notes.txt").write_text("x")
    one, two = write_images(tmp_path / "files", 2, start=5)
    inputs = (str(one), str(tmp_path / "missing"), str(two), str(tmp_path / "a"))
    assert estimate_total(RunOptions(inputs=inputs)) == 5
    assert estimate_total(RunOptions(inputs=inputs, recursive=False)) == 5


def test_estimate_gives_none_when_names_cannot_tell(tmp_path):
    write_images(tmp_path / "a" / "deep", 1)
    (tmp_path / "a" / "deep" / "more.tar").write_bytes(b"")
    list_file = tmp_path / "list.txt"
    list_file.write_text("x.png\n")
    folder = (str(tmp_path / "a"),)
    assert estimate_total(RunOptions(inputs=folder)) is None  # an archive inside
    assert estimate_total(RunOptions(inputs=folder, recursive=False)) == 0
    assert (
        estimate_total(
            RunOptions(
                inputs=(str(tmp_path / "a" / "deep" / "img000.png"),), from_list=str(list_file)
            )
        )
        is None
    )


def test_estimate_counts_nothing_in_a_folder_that_cannot_be_listed(tmp_path, monkeypatch):
    # chmod 0 does not stop root, so the listing fails the way os.walk reports it: by
    # yielding nothing (its errors are ignored without onerror).
    write_images(tmp_path / "a", 2)
    one = write_images(tmp_path / "files", 1)[0]
    monkeypatch.setattr(local.os, "walk", lambda top, *args, **kwargs: iter(()))
    inputs = (str(tmp_path / "a"), str(one))
    assert estimate_total(RunOptions(inputs=inputs, recursive=False)) == 1
    assert estimate_total(RunOptions(inputs=inputs)) == 1
