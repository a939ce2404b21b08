"""The local engine: sources -> bounded decode pool -> batches -> Captioner -> Output.

Memory stays flat for any input size: at most `limit` items, and about
IN_FLIGHT_BYTES of input bytes, are read and decoding at once (a FIFO window of
futures, which also keeps rows in input order), and rows are written and
flushed once per batch of `batch_size` items, inputs that failed included. Decoding runs in a
thread pool (Pillow releases the GIL while decoding and resizing) while the
main thread runs the model on the previous batch (onnxruntime releases it too).

Resume is the job's per-key rule (capbatch.job.resume_output); docs/runtime.md.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..batch_rows import Decoded, caption_batch, decode_or_reason
from ..captioner import Captioner
from ..image_decode import DecodedImage
from ..job import (
    RunHooks,
    RunOptions,
    RunSummary,
    check_same_producer,
    existing_output_error,
    job_sources,
    resume_output,
)
from ..output import Output, StreamOutput, is_stdout, open_output, parts_dir_for
from ..sources import IMAGE_EXTENSIONS, SourceItem, archive_kind

# Input bytes read ahead and not yet decoded, at most (one item always goes, whatever
# its size): a window of 100 MB archive members must not hold gigabytes.
IN_FLIGHT_BYTES = 256 << 20


@dataclass
class _Pending:
    """One source item in the window (a job.Keyed): decoding, decoded, or already failed."""

    key: str
    path: str | None
    future: Future | None = None
    error: str | None = None
    size: int = 0  # input bytes the decode task holds until it is done

    def resolve(self) -> Decoded:
        if self.future is None:
            return self.error or "unreadable input"
        decoded = self.future.result()  # decode_or_reason never raises
        self.future = None  # nothing of the input outlives its result
        return decoded

    @property
    def holding(self) -> int:
        return self.size if self.future is not None and not self.future.done() else 0


class _Window:
    """The bounded FIFO of in-flight items over the source iterator."""

    def __init__(self, sources: Iterator[SourceItem], executor, spec, skip, limit, summary):
        self._sources, self._executor, self._spec = sources, executor, spec
        self._skip, self._limit, self._summary = skip, limit, summary
        self._queue: deque[_Pending] = deque()
        self.exhausted = False

    def fill(self, stop: threading.Event) -> None:
        while self._has_room() and not self.exhausted and not stop.is_set():
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
                future = self._executor.submit(decode_or_reason, item.data, self._spec)
                self._queue.append(_Pending(item.key, item.path, future, size=len(item.data)))

    def _has_room(self) -> bool:
        if len(self._queue) >= self._limit:
            return False
        return not self._queue or sum(p.holding for p in self._queue) < IN_FLIGHT_BYTES

    def __bool__(self) -> bool:
        return bool(self._queue)

    def popleft(self) -> _Pending:
        return self._queue.popleft()

    def cancel(self) -> None:
        for pending in self._queue:
            if pending.future is not None:
                pending.future.cancel()
        self._queue.clear()


class LocalRun:
    """A request on the local engine (capbatch.engines.EngineRun): the output is
    opened here, once, checked, and handed to run_captioning."""

    def __init__(self, request) -> None:
        self.request = request
        options = request.job
        self.output = open_job_output(options)
        self.fmt = self.output.fmt
        if self.fmt == "parquet":
            from ..output.parquet import import_pyarrow

            import_pyarrow()  # the one-line install hint when pyarrow is missing
        if is_stdout(options.out) or options.overwrite:
            return
        if not options.resuming:
            if self.output.has_content(self.output.done()):
                raise existing_output_error(self.output.path)
            return
        # A resume of another model's or encoder's rows, refused before the model loads
        # (the manifest alone names the model); run_captioning checks it again.
        from ..bundle import resolve_bundle_dir
        from ..manifest import read_manifest

        model_id = read_manifest(resolve_bundle_dir(request.captioner.model)).model_id
        check_same_producer(self.output, model_id, request.captioner.encoder_kind)

    def done(self) -> dict[str, str]:
        return self.output.done()

    def run(self, hooks: RunHooks) -> RunSummary:
        from ..captioner import Captioner

        options = self.request.job
        captioner = Captioner.from_args(self.request.captioner, warn=hooks.warn)
        hooks.say(model_line(captioner))
        if hooks.on_total is not None:
            # Counting walks the inputs; on a thread, so the run starts at once.
            threading.Thread(
                target=lambda: hooks.on_total(capped(estimate_total(options), options.limit)),
                daemon=True,
            ).start()
        summary = run_captioning(
            captioner, options, stop=hooks.stop, on_progress=hooks.on_progress,
            on_start=hooks.on_start, output=self.output, producer_checked=True,
        )  # fmt: skip
        summary.model_id = summary.model_id or captioner.model_id  # also when no row was new
        summary.encoder = summary.encoder or captioner.encoder_kind
        return summary


def model_line(captioner, state: str = "") -> str:
    """"model M [ok ]on PROVIDERS, encoder RUNTIME-PRECISION": the run header names who
    runs the encoder too (an OpenVINO encoder is not one of onnxruntime's providers)."""
    return (
        f"model {captioner.model_id} {state}on {', '.join(captioner.providers)}, "
        f"encoder {captioner.encoder_kind}"
    )


def capped(total: int | None, limit: int | None) -> int | None:
    return total if total is None or limit is None else min(total, limit)


def open_job_output(options: RunOptions) -> Output | StreamOutput:
    return open_output(
        options.out,
        options.fmt,
        overwrite_sidecars=options.overwrite_sidecars,
        settings=options.output_settings,
    )


def run_captioning(
    captioner: Captioner,
    options: RunOptions,
    *,
    stop: threading.Event | None = None,
    on_progress: Callable[[RunSummary], None] | None = None,
    on_start: Callable[[], None] | None = None,
    output: Output | StreamOutput | None = None,
    producer_checked: bool = False,
) -> RunSummary:
    """Caption every input into options.out; returns the summary (never raises per item).

    on_start runs once the output is locked and opened (fatal checks passed),
    on_progress after every written batch; `output`: options.out already opened,
    and with `producer_checked` its rows already matched against this model and
    encoder (LocalRun does that before the model loads: one scan of the output less).
    """
    stop = stop or threading.Event()
    output = output if output is not None else open_job_output(options)
    summary = RunSummary(out=options.out, fmt=output.fmt)
    try:
        # The file --out names (a symbolic link resolved); no lock for stdout.
        with output.lock():
            producer = None if producer_checked else (captioner.model_id, captioner.encoder_kind)
            _run_locked(captioner, output, options, producer, summary, stop, on_progress, on_start)
    except KeyboardInterrupt:
        if not stop.is_set():
            raise  # not our signal handler's (a library caller's own Ctrl-C)
        # A second SIGINT/SIGTERM: stop now. Every row written is on disk (Parquet's in
        # its parts, if the merge was cut short too): the same summary and exit code 3.
        summary.interrupted = True
        summary.tick()
    return summary


def _run_locked(
    captioner, output: Output, options, producer, summary, stop, on_progress, on_start
) -> None:
    out = output.path
    kept = resume_output(output, options, producer)
    sources = job_sources(options)  # --limit and the "no images found" check
    # Only an output this run creates may go again if it fails before its first row;
    # Parquet rows of a killed run live in the parts folder until they are merged.
    created = not out.exists() and not parts_dir_for(out).exists()
    output.begin(append=bool(kept))
    if on_start is not None:
        on_start()
    workers = options.decode_workers
    # Two batches ahead keeps the pool busy while the model runs on one.
    limit = 2 * captioner.batch_size + 2 * workers
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="capbatch-decode") as executor:
            window = _Window(sources, executor, captioner.preprocess, kept, limit, summary)
            try:
                _caption_window(captioner, window, output, options, summary, stop, on_progress)
            finally:
                window.cancel()
    except BaseException:
        output.close()
        if created and summary.processed == 0:
            # A fatal error before any row (an unreadable list file, say) leaves no
            # empty output behind to block the rerun with "already exists".
            out.unlink(missing_ok=True)
        raise
    finally:
        output.close()
        summary.interrupted = stop.is_set()
        summary.tick()


def _caption_window(
    captioner, window: _Window, output: Output, options, summary, stop, on_progress
) -> None:
    while True:
        window.fill(stop)
        if not window:
            return
        batch: list[tuple[_Pending, Decoded]] = []
        # Failed inputs count too: a long run of them is written batch by batch.
        while window and len(batch) < captioner.batch_size and not stop.is_set():
            pending = window.popleft()
            batch.append((pending, pending.resolve()))
            window.fill(stop)  # refill while we wait, so decoding never idles
        captioned = caption_batch(captioner, batch)
        rows = captioned.rows
        if options.attention_dir is not None:
            # Maps first: a row naming its heatmap means the file is there.
            rows = _save_attention(options.attention_dir, batch, captioned.results, rows)
        summary.count(output.write(rows))
        if on_progress is not None:
            on_progress(summary)
        if stop.is_set():
            return


def _save_attention(directory: Path, batch, results, rows) -> list:
    """Save each captioned image's heatmap; the rows, naming their file (`attention`)."""
    from ..attention_maps import save_attention_map

    named = []
    for (pending, image), result, row in zip(batch, results, rows):
        if isinstance(image, DecodedImage) and result.ok and result.attention is not None:
            saved = save_attention_map(
                directory, pending.key, image.pixels, result.words, result.attention
            )
            row = dataclasses.replace(row, attention=saved.name)
        named.append(row)
    return named


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
