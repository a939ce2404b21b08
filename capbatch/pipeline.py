"""Orchestration: sources -> bounded decode pool -> batches -> Captioner -> rows -> writer.

Memory stays flat for any input size: at most `max_in_flight` items are read
and decoding at once (a FIFO window of futures, which also keeps rows in input
order), and rows are written and flushed once per batch. Decoding runs in a
thread pool (Pillow releases the GIL while decoding and resizing) while the
main thread runs the model on the previous batch (onnxruntime releases it too).

Resume: the output is read back (key -> status) before the run; keys already
done are skipped. See docs/runtime.md for the rules.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .captioner import ERROR, OK, Captioner, CaptionResult, error_result
from .decode import DecodedImage, decode_image
from .errors import ExitCode, InputDecodeError, UsageError
from .providers import cpu_thread_count
from .sources import IMAGE_EXTENSIONS, SourceItem, archive_kind, iter_sources
from .writers import OutputLock, Row, drop_keys, format_for, open_writer, read_done


@dataclass(frozen=True)
class RunOptions:
    """What to caption and where to write it (the CLI's options, validated)."""

    inputs: tuple[str, ...] = ()
    out: Path = Path("captions.csv")
    fmt: str | None = None  # None: from the output's extension
    recursive: bool = True
    glob: str | None = None
    from_list: str | None = None  # a file of paths, or "-" for stdin
    workers: int | None = None  # decode threads; None = one per core
    resume: bool = False
    overwrite: bool = False
    retry_errors: bool = False  # resume, and redo keys whose row is an error
    overwrite_sidecars: bool = False  # --format txt: replace existing .txt sidecars
    attention_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite exclude each other")
        if self.retry_errors and self.overwrite:
            raise ValueError("--retry-errors and --overwrite exclude each other")
        if not self.inputs and self.from_list is None:
            raise ValueError("no inputs: give files, folders or archives, or --from-list FILE")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise ValueError(f"workers must be an integer >= 1, got {self.workers!r}")

    @property
    def decode_workers(self) -> int:
        return self.workers or cpu_thread_count()


@dataclass
class RunSummary:
    out: Path
    fmt: str
    ok: int = 0
    errors: int = 0
    skipped: int = 0  # already done in the output (resume)
    interrupted: bool = False
    elapsed_s: float = 0.0
    started: float = field(default_factory=time.monotonic, repr=False)

    @property
    def processed(self) -> int:
        return self.ok + self.errors

    @property
    def images_per_s(self) -> float:
        return self.processed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def exit_code(self) -> ExitCode:
        if self.interrupted:
            return ExitCode.INTERRUPTED
        return ExitCode.SOME_FAILED if self.errors else ExitCode.OK


@dataclass
class _Pending:
    """One source item in the window: decoding, decoded, or already failed."""

    key: str
    path: str | None
    future: Future | None = None
    error: str | None = None

    def resolve(self) -> DecodedImage | str:
        if self.future is None:
            return self.error or "unreadable input"
        try:
            return self.future.result()
        except InputDecodeError as exc:
            return str(exc)
        except Exception as exc:  # a decoder bug on one input must not stop the run
            return f"decode failed: {type(exc).__name__}: {exc}"


def rows_for(
    chunk: Sequence[tuple[_Pending, DecodedImage | str]],
    results: Sequence[CaptionResult],
    model_id: str,
) -> list[Row]:
    """One row per chunk entry, in chunk order; results cover its decoded entries in order."""
    rows = []
    captioned = iter(results)
    for pending, decoded in chunk:
        result = error_result(decoded) if isinstance(decoded, str) else next(captioned)
        rows.append(
            Row(
                key=pending.key,
                path=pending.path,
                caption=result.caption,
                score=None if result.score is None else round(result.score, 6),
                status=result.status,
                error=result.error,
                width=result.width,
                height=result.height,
                model_id=model_id,
            )
        )
    return rows


def keys_to_skip(done: dict[str, str], retry_errors: bool) -> set[str]:
    return {key for key, status in done.items() if status == OK or not retry_errors}


class _Window:
    """The bounded FIFO of in-flight items over the source iterator."""

    def __init__(self, sources: Iterator[SourceItem], executor, spec, skip, limit, summary):
        self._sources, self._executor, self._spec = sources, executor, spec
        self._skip, self._limit, self._summary = skip, limit, summary
        self._queue: deque[_Pending] = deque()
        self.exhausted = False

    def fill(self, stop: threading.Event) -> None:
        while len(self._queue) < self._limit and not self.exhausted and not stop.is_set():
            item = next(self._sources, None)
            if item is None:
                self.exhausted = True
                return
            if item.key in self._skip:
                self._summary.skipped += 1
                continue
            if item.data is None:
                self._queue.append(_Pending(item.key, item.path, error=item.error))
            else:
                future = self._executor.submit(decode_image, item.data, self._spec)
                self._queue.append(_Pending(item.key, item.path, future))

    def __bool__(self) -> bool:
        return bool(self._queue)

    def popleft(self) -> _Pending:
        return self._queue.popleft()

    def cancel(self) -> None:
        for pending in self._queue:
            if pending.future is not None:
                pending.future.cancel()
        self._queue.clear()


def run_captioning(
    captioner: Captioner,
    options: RunOptions,
    *,
    stop: threading.Event | None = None,
    on_progress: Callable[[RunSummary], None] | None = None,
    on_start: Callable[[], None] | None = None,
) -> RunSummary:
    """Caption every input into options.out; returns the summary (never raises per item).

    on_start runs once the output is locked and opened (fatal checks passed),
    on_progress after every written batch.
    """
    stop = stop or threading.Event()
    fmt = format_for(options.out, options.fmt)
    summary = RunSummary(out=options.out, fmt=fmt)
    batch_size = captioner.batch_size
    with OutputLock(options.out):
        done = {} if options.overwrite else read_done(options.out, fmt)
        resuming = options.resume or options.retry_errors
        if not options.overwrite and not resuming and _output_has_content(options.out, fmt, done):
            raise UsageError(
                f"{options.out} already exists; pass --resume to continue it "
                "(--retry-errors to also redo failed images) or --overwrite to start over"
            )
        skip = keys_to_skip(done, options.retry_errors) if resuming else set()
        if options.retry_errors:
            # Their error rows go now and new rows are appended: each key stays once.
            drop_keys(options.out, fmt, [k for k, status in done.items() if status != OK])
        sources = iter_sources(
            list(options.inputs),
            recursive=options.recursive,
            glob=options.glob,
            from_list=options.from_list,
        )
        created = not options.out.exists()
        writer = open_writer(
            options.out,
            fmt,
            append=resuming and bool(done),
            overwrite_sidecars=options.overwrite_sidecars,
        )
        if on_start is not None:
            on_start()
        workers = options.decode_workers
        # Two batches ahead keeps the pool busy while the model runs on one.
        limit = 2 * batch_size + 2 * workers
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="capbatch-decode") as executor:
                window = _Window(sources, executor, captioner.preprocess, skip, limit, summary)
                try:
                    _caption_window(captioner, window, writer, options, summary, stop, on_progress)
                finally:
                    window.cancel()
        except BaseException:
            writer.close()
            if created and summary.processed == 0:
                # A fatal error before any row (an unreadable list file, say) leaves no
                # empty output behind to block the rerun with "already exists".
                options.out.unlink(missing_ok=True)
            raise
        finally:
            writer.close()
            summary.interrupted = stop.is_set()
            summary.elapsed_s = time.monotonic() - summary.started
    return summary


def _output_has_content(out: Path, fmt: str, done: dict[str, str]) -> bool:
    """Whether starting over would lose something."""
    if done:
        return True
    if fmt == "csv":
        return False  # read_done accepted its header: a capbatch CSV with no rows
    return out.is_file() and out.stat().st_size > 0


def _caption_window(captioner, window, writer, options, summary, stop, on_progress) -> None:
    batch_size = captioner.batch_size
    while True:
        window.fill(stop)
        if not window:
            return
        chunk: list[tuple[_Pending, DecodedImage | str]] = []
        decoded_count = 0
        while window and decoded_count < batch_size and not stop.is_set():
            pending = window.popleft()
            decoded = pending.resolve()
            chunk.append((pending, decoded))
            decoded_count += not isinstance(decoded, str)
            window.fill(stop)  # refill while we wait, so decoding never idles
        images = [d for _, d in chunk if not isinstance(d, str)]
        try:
            results = captioner.caption_decoded(images)
        except Exception as exc:  # onnxruntime failure on this batch: its rows say why
            reason = f"inference failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            results = [error_result(reason, d.width, d.height) for d in images]
        rows = rows_for(chunk, results, captioner.model_id)
        written = writer.write(rows)
        if written is not None:  # a writer may turn rows into errors (an existing sidecar)
            rows = written
        summary.ok += sum(row.status == OK for row in rows)
        summary.errors += sum(row.status == ERROR for row in rows)
        summary.elapsed_s = time.monotonic() - summary.started
        if options.attention_dir is not None:
            _save_attention(captioner, options.attention_dir, chunk, results)
        if on_progress is not None:
            on_progress(summary)
        if stop.is_set():
            return


def _save_attention(captioner, directory: Path, chunk, results) -> None:
    from .attention_maps import save_attention_map

    decoded = [(p, d) for p, d in chunk if not isinstance(d, str)]
    for (pending, image), result in zip(decoded, results):
        if result.ok and result.attention is not None:
            save_attention_map(directory, pending.key, image.pixels, result.words, result.attention)


@contextmanager
def stop_on_signals(stop: threading.Event):
    """SIGINT/SIGTERM set `stop` (finish the batch, flush, exit 3); a second one aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handle(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    for sig in previous:
        signal.signal(sig, handle)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def estimate_total(options: RunOptions) -> int | None:
    """About how many items the inputs hold, for the progress ETA; None when that
    cannot be told without reading them (archives, globs, list files).

    Only names are looked at: files without an image extension that the sources
    would accept by their content are not counted, so the ETA is an estimate.
    """
    if options.glob is not None or options.from_list is not None:
        return None
    count = 0
    for raw in options.inputs:
        if archive_kind(str(raw)):
            return None
        if os.path.isfile(raw):
            count += 1
            continue
        if not os.path.isdir(raw):
            continue
        walker = os.walk(raw) if options.recursive else [next(os.walk(raw), (raw, [], []))]
        for _, _, files in walker:
            for name in files:
                if archive_kind(name):
                    return None
                count += os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
    return count
