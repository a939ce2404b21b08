"""The caption job every engine runs: what to read and where to write (RunOptions),
its summary, its hooks, the per-key resume rule, the inputs, which options each
engine accepts, and signals.

An engine (capbatch.engines) only schedules: it gets items with a key and a
path, decodes them, hands batches to capbatch.batch_rows.caption_batch, writes
the rows through capbatch.output and counts what was written with
`RunSummary.count`.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path

from .errors import ExitCode, UsageError
from .option_spec import INPUTS, OUTPUT, RUN, default_of, flag_of, option
from .output import Output, OutputFormat, OutputSettings
from .providers import cpu_thread_count
from .rows import OK, Row
from .sources import SourceItem, iter_sources
from .stats import FLAG_FIELDS, reason_group


class Engine(str, Enum):
    local = "local"
    ray = "ray"


# Option values (not whole options) that only the local engine takes. Options that
# only one engine takes say so where they are declared (option(engine=...)).
LOCAL_ONLY_VALUES: dict[str, str] = {
    "--format txt": "--engine ray writes csv, jsonl or parquet, not sidecars",
    "--out -": "Ray writes shard files and merges them",
}


def engine_only_given(*parts: object) -> dict[str, tuple[str, str]]:
    """{flag: (engine, why)} of the engine-only options the option dataclasses `parts`
    set to something other than their default (nested dataclasses included)."""
    given: dict[str, tuple[str, str]] = {}
    for part in parts:
        for spec in fields(part):
            value = getattr(part, spec.name)
            if is_dataclass(value):
                given.update(engine_only_given(value))
            owner = spec.metadata.get("engine")
            if owner is not None and value != default_of(spec):
                given[flag_of(spec)] = owner
    return given


def check_engine_options(engine: Engine | str, *parts: object) -> None:
    """UsageError for the first option of `parts` (option dataclasses) that another
    engine owns."""
    engine = Engine(engine)
    given = engine_only_given(*parts)
    for part in parts:
        if isinstance(part, RunOptions):
            given.update({flag: ("local", why) for flag, why in part.local_only_values().items()})
    for flag, (owner, why) in given.items():
        if owner == engine.value:
            continue
        if owner == Engine.ray.value:
            raise UsageError(f"{flag} needs --engine ray")
        raise UsageError(f"{flag} applies to the local engine only ({why})")


_LOCAL = "local"


@dataclass(frozen=True)
class RunOptions:
    """What to caption and where to write it: each option declared once (option()),
    the CLI's flags generated from these fields (capbatch.cli_options)."""

    inputs: tuple[str, ...] = option(
        (), "Image files, folders, tar/tar.gz/zip archives or webdataset shards.",
        panel=INPUTS, argument=True, cli_type=list[str] | None,
    )  # fmt: skip
    out: Path = option(
        Path("captions.csv"), "Output file (.csv, .jsonl, .parquet; journal for txt; - for stdout).",
        panel=OUTPUT, flags=("--out", "-o"), required=True,
    )  # fmt: skip
    fmt: str | None = option(
        None, "Output format (default: from --out's extension).",
        panel=OUTPUT, flags=("--format",), choices=OutputFormat,
    )  # fmt: skip
    recursive: bool = option(
        True, "Descend into sub-folders (--no-recursive: the folder itself only).",
        panel=INPUTS, flags=("--recursive/--no-recursive",), resume_must_match=True,
    )  # fmt: skip
    glob: str | None = option(
        None, "Only files matching this pattern in folders.", panel=INPUTS, resume_must_match=True
    )
    from_list: str | None = option(None, "Read input paths from FILE ('-': stdin).", panel=INPUTS)
    limit: int | None = option(
        None, "Only the first N inputs (in input order).", panel=INPUTS, min=1,
        engine=(_LOCAL, "Ray reads its inputs on the workers, shard by shard"),
    )  # fmt: skip
    allow_empty: bool = option(
        False, "No images found is not an error (an empty output, exit 0).", panel=INPUTS
    )
    workers: int | None = option(
        None, "Decode threads (default: one per core).", panel=RUN, min=1,
        engine=(_LOCAL, "Ray runs decode tasks itself"),
    )  # fmt: skip
    resume: bool = option(False, "Continue an existing output: skip keys done.", panel=RUN)
    overwrite: bool = option(
        False, "Replace an existing output (and side outputs) and start over.", panel=RUN
    )
    retry_errors: bool = option(
        False, "Resume, and caption again the keys that failed.", panel=RUN
    )
    overwrite_sidecars: bool = option(
        False, "--format txt: replace existing .txt files.", panel=OUTPUT
    )
    attention_dir: Path | None = option(
        None, "Write per-image attention heatmap PNGs here.", panel=OUTPUT,
        engine=(_LOCAL, "Ray actors return rows only"),
    )  # fmt: skip
    output_settings: OutputSettings = field(default_factory=OutputSettings)

    def __post_init__(self) -> None:
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite exclude each other")
        if self.retry_errors and self.overwrite:
            raise ValueError("--retry-errors and --overwrite exclude each other")
        if not self.inputs and self.from_list is None:
            raise ValueError("no inputs: give files, folders or archives, or --from-list FILE")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise ValueError(f"workers must be an integer >= 1, got {self.workers!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"limit must be an integer >= 1, got {self.limit!r}")

    @property
    def resuming(self) -> bool:
        return self.resume or self.retry_errors

    @property
    def decode_workers(self) -> int:
        return self.workers or cpu_thread_count()

    def local_only_values(self) -> dict[str, str]:
        """The LOCAL_ONLY_VALUES these options take: {spelling: why}."""
        given = {"--format txt": (self.fmt or "").lower() == "txt", "--out -": str(self.out) == "-"}
        return {flag: LOCAL_ONLY_VALUES[flag] for flag, present in given.items() if present}


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
    started_at: float = field(default_factory=time.time, repr=False)  # wall clock, for stats
    model_id: str | None = None  # from the rows written
    encoder: str | None = None  # "<runtime>-<precision>", from the rows written
    reasons: Counter = field(default_factory=Counter)  # error reason (numbers as #) -> rows
    # Per-row flags (capbatch.stats.FLAG_FIELDS): rows where the flag is true, and rows
    # that carry it at all (a field no row has is unknown, not zero).
    flags: Counter = field(default_factory=Counter)
    flag_rows: Counter = field(default_factory=Counter)

    def count(self, written: Sequence[Row]) -> None:
        """Add rows as the output wrote them (a refused sidecar is an error)."""
        for row in written:
            if row.status == OK:
                self.ok += 1
            else:
                self.errors += 1
                self.reasons[reason_group(row.error)] += 1
            self.model_id = self.model_id or row.model_id
            self.encoder = self.encoder or row.encoder
            self._count_flags(row)
        self.tick()

    def _count_flags(self, row: Row) -> None:
        for name in FLAG_FIELDS:
            value = getattr(row, name, None)
            if value is None:
                continue
            self.flag_rows[name] += 1
            self.flags[name] += bool(value)

    def flag_count(self, name: str, value: bool = True) -> int | None:
        """Rows whose `name` is `value`; None when no row carried the field."""
        if not self.flag_rows[name]:
            return None
        return self.flags[name] if value else self.flag_rows[name] - self.flags[name]

    def tick(self) -> None:
        self.elapsed_s = time.monotonic() - self.started

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
class RunHooks:
    """How a run talks to its caller: every hook optional (the library's default is
    silence). The CLI's draw the progress bar and print the header lines."""

    stop: threading.Event = field(default_factory=threading.Event)  # set: finish the batch, stop
    on_start: Callable[[], None] | None = None  # output locked and opened
    on_progress: Callable[[RunSummary], None] | None = None  # after every written batch
    on_total: Callable[[int | None], None] | None = None  # the number of inputs, once known
    say: Callable[[str], None] = lambda line: None  # a header line ("model M on CPU...")
    warn: Callable[[str], None] = lambda message: None  # a warning (no "warning:" prefix)
    note: Callable[[str], None] = lambda notice: None  # the model card's notice
    handle_signals: bool = False  # SIGINT/SIGTERM set `stop` (main thread only)


# -- resume: per key, for every engine ------------------------------------------------


def existing_output_error(target: Path) -> UsageError:
    return UsageError(
        f"{target} already exists; pass --resume to continue it "
        "(--retry-errors to also redo failed images) or --overwrite to start over"
    )


def check_same_producer(output: Output, model_id: str, encoder: str) -> None:
    """UsageError when the output's ok rows were captioned by another model or encoder
    (rows of older versions, which name no encoder, are matched on the model only)."""
    for seen_model, seen_encoder in sorted(output.producers(), key=str):
        if seen_model == model_id and seen_encoder in (None, encoder):
            continue
        raise UsageError(
            f"{output.path} holds captions of model {seen_model}, encoder "
            f"{seen_encoder or '(not recorded)'}; this run uses model {model_id}, encoder "
            f"{encoder}: resume with the same model and encoder options, or pass "
            "--overwrite to start over"
        )


def keys_to_keep(done: Mapping[str, str], options: RunOptions) -> dict[str, str]:
    """The rows a run keeps, and so the keys it skips: all of them when resuming, less
    the error rows with --retry-errors; none otherwise."""
    if not options.resuming:
        return {}
    return {k: s for k, s in done.items() if s == OK or not options.retry_errors}


def resume_output(
    output: Output, options: RunOptions, producer: tuple[str, str] | None = None
) -> dict[str, str]:
    """Apply --overwrite / --resume / --retry-errors to `output`, per key: an output
    with rows is refused unless told; the error rows to retry are dropped (so each
    key stays once). Returns the rows kept (key -> status): the keys to skip.
    The caller then calls output.begin(append=bool(kept)).

    `producer` (model id, encoder kind) of this run: a resume of rows another model or
    encoder wrote is refused, so one output never mixes their captions."""
    done = {} if options.overwrite else output.done()
    if not options.overwrite and not options.resuming and output.has_content(done):
        raise existing_output_error(output.path)
    kept = keys_to_keep(done, options)
    if kept and producer is not None:
        check_same_producer(output, *producer)
    retried = [key for key in done if key not in kept] if options.resuming else []
    if retried:
        output.drop(retried)
    return kept


# -- the inputs: one iterator for the local engine and --dry-run -----------------------


def job_sources(options: RunOptions) -> Iterator[SourceItem]:
    """The job's inputs in order: at most options.limit of them, and a UsageError
    ("no images found under ...") when there are none, unless options.allow_empty.

    The CLI checks for an empty input before the model loads (capbatch.preflight);
    this check covers what it cannot peek at without consuming it (stdin lists)."""
    items = iter_sources(
        list(options.inputs),
        recursive=options.recursive,
        glob=options.glob,
        from_list=options.from_list,
    )
    if options.limit is not None:
        items = itertools.islice(items, options.limit)
    found = False
    for item in items:
        found = True
        yield item
    if not found and not options.allow_empty:
        raise no_inputs_error(options)


def no_inputs_error(options: RunOptions) -> UsageError:
    where = [str(raw) for raw in options.inputs]
    if options.from_list is not None:
        where.append("stdin" if options.from_list == "-" else f"the list {options.from_list}")
    matching = f" matching --glob {options.glob!r}" if options.glob else ""
    return UsageError(
        f"no images found under {', '.join(where)}{matching} "
        "(pass --allow-empty if an empty input is expected)"
    )


# -- signals ----------------------------------------------------------------------------


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


__all__ = [
    "LOCAL_ONLY_VALUES",
    "Engine",
    "RunHooks",
    "RunOptions",
    "RunSummary",
    "check_engine_options",
    "existing_output_error",
    "job_sources",
    "no_inputs_error",
    "keys_to_keep",
    "resume_output",
    "stop_on_signals",
]
