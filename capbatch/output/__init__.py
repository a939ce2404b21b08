"""Rows -> an output: CSV, JSONL, Parquet, or .txt sidecars beside the images.

    output = open_output(path, fmt)        # the format resolved once, for the run
    done = output.done()                   # key -> status already there (resume)
    output.drop(keys)                      # --retry-errors: their rows go first
    output.begin(append=True)              # then write; close() finishes the file
    written = output.write(rows)           # the rows AS WRITTEN: count these

Crash guarantees (docs/inputs-outputs.md): every write() appends whole rows and
returns only after flush + fsync; a crash can at worst leave a torn last
record, which done() ignores and begin(append=True) cuts off; Parquet writes
one complete part per write() and merges the parts at close().
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from enum import Enum
from pathlib import Path
from typing import Protocol

from ..errors import UsageError
from ..output_lock import OutputLock
from ..rows import Row
from .durable import check_output_target
from .lines import CsvWriter, JsonlWriter, read_jsonl_rows
from .parquet import ParquetWriter, parts_dir_for, read_parquet_rows
from .settings import OutputSettings
from .sidecars import SidecarWriter, sidecar_path
from .stream import StreamOutput, is_stdout

__all__ = [
    "EXTENSION_FORMATS",
    "FORMATS",
    "Output",
    "OutputFormat",
    "OutputSettings",
    "StreamOutput",
    "Writer",
    "check_output_target",
    "format_for",
    "is_stdout",
    "open_output",
    "parts_dir_for",
    "read_rows",
    "sidecar_path",
]


class Writer(Protocol):
    """One open output file. write() appends whole rows, flushed (+fsync) per call,
    and returns the rows as written: a writer may turn a row into an error row
    (a refused sidecar), and the run counts what it returns."""

    def write(self, rows: Sequence[Row]) -> list[Row]: ...

    def close(self) -> None: ...


FORMATS: dict[str, type] = {
    "csv": CsvWriter,
    "jsonl": JsonlWriter,
    "parquet": ParquetWriter,
    "txt": SidecarWriter,
}
# The --format choices: the formats above, declared there once.
OutputFormat = Enum("OutputFormat", {name: name for name in FORMATS}, type=str)

EXTENSION_FORMATS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}

_EXTENSION_FOR = {"csv": "csv", "jsonl": "jsonl", "parquet": "parquet"}


def format_for(out: Path, fmt: str | None) -> str:
    """The output format: `fmt` when given, else from the extension of `out`.

    "txt" (sidecars) is never guessed: "--out captions.txt" reads as one text
    file, so sidecars are chosen with --format txt, `out` then being the journal.
    """
    guessed = EXTENSION_FORMATS.get(Path(out).suffix.lower())
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in FORMATS:
            raise UsageError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
        # A known extension that says otherwise is a mistake, not a choice: CSV in a
        # .jsonl file breaks every reader downstream. The txt journal is JSONL.
        expected = "jsonl" if fmt == "txt" else fmt
        if guessed is not None and guessed != expected:
            raise UsageError(
                f"--format {fmt} does not match --out {str(out)!r} (a {guessed} name); "
                f"name the output *.{_EXTENSION_FOR[expected]} or drop --format"
            )
        return fmt
    if guessed is None:
        raise UsageError(
            f"cannot tell the output format from {str(out)!r}: use an extension "
            f"({', '.join(EXTENSION_FORMATS)}) or --format {{{','.join(FORMATS)}}}"
        )
    return guessed


class Output:
    """One output for one run: answers what is done, drops keys, writes rows.

    Hold an OutputLock on `path` around it. Not thread-safe (one writer per run).
    """

    def __init__(
        self,
        path: Path,
        fmt: str,
        *,
        overwrite_sidecars: bool = False,
        settings: OutputSettings | None = None,
    ) -> None:
        self.path = Path(path)
        self.fmt = fmt
        self._format = FORMATS[fmt]
        self._overwrite_sidecars = overwrite_sidecars
        self._settings = settings or OutputSettings()
        self._writer: Writer | None = None

    def done(self) -> dict[str, str]:
        """key -> status ("ok" | "error") of the rows already there, the newest row per
        key. A torn last record is ignored; a missing output gives {}."""
        return self._format.read_done(self.path)

    def producers(self) -> set[tuple[str | None, str | None]]:
        """(model_id, encoder) of the ok rows already there: what a resume must match."""
        return self._format.read_producers(self.path)

    def has_content(self, done: Collection[str]) -> bool:
        """Whether starting over would lose something (`done`: what done() gave)."""
        if done:
            return True
        if self.fmt == "csv":
            return False  # done() accepted its header: a capbatch CSV with no rows
        return self.path.is_file() and self.path.stat().st_size > 0

    def drop(self, keys: Collection[str]) -> int:
        """Rewrite the output (atomically) without the rows of `keys`; how many went.

        For --retry-errors: drop the error rows, then append their new rows, so each
        key still appears exactly once."""
        if self._writer is not None:
            raise RuntimeError("drop() before begin(): the writer holds the file")
        return self._format.drop_keys(self.path, frozenset(keys))

    def lock(self) -> OutputLock:
        """The run's lock on this output (one writer per output)."""
        return OutputLock(self.path)

    def begin(self, *, append: bool) -> None:
        """Open for writing. append=True keeps the complete rows already there (a torn
        tail is cut); append=False starts the output over."""
        if self._writer is None:
            self._writer = self._format(
                self.path,
                append=append,
                overwrite_sidecars=self._overwrite_sidecars,
                settings=self._settings,
            )

    def write(self, rows: Sequence[Row]) -> list[Row]:
        """Append whole rows (flushed + fsynced); returns them as written."""
        if self._writer is None:
            raise RuntimeError("write() before begin()")
        return self._writer.write(rows)

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def __enter__(self) -> Output:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_output(
    path: Path | str,
    fmt: str | None = None,
    *,
    overwrite_sidecars: bool = False,
    settings: OutputSettings | None = None,
) -> Output | StreamOutput:
    """The output at `path` in format `fmt` (None: from the extension), resolved once.
    "-" is stdout (JSONL unless fmt says csv).

    A file output is refused unless `path` is a regular file or a new path
    (check_output_target); a symbolic link means the file it names."""
    settings = settings or OutputSettings()
    if is_stdout(path):
        return StreamOutput(fmt, csv_raw=settings.csv_raw)
    resolved = format_for(Path(path), fmt)
    path = check_output_target(Path(path))
    settings.check_format(resolved)
    return Output(path, resolved, overwrite_sidecars=overwrite_sidecars, settings=settings)


def read_rows(path: Path, fmt: str) -> Iterator[Row]:
    """The rows of a finished JSONL or Parquet file, in file order (the Ray shards)."""
    if fmt == "parquet":
        return read_parquet_rows(path)
    if fmt == "jsonl":
        return read_jsonl_rows(path)
    raise ValueError(f"read_rows reads jsonl or parquet, not {fmt!r}")
