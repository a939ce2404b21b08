"""`--out -`: rows streamed to stdout as JSONL or CSV, for pipes.

Same record formatting as the file outputs (capbatch.output.lines), so a row
reads the same in a pipe and in a file. A stream has no rows to resume and
needs no lock: done() is empty, drop() has nothing to drop. Progress and the
summary go to stderr (the CLI), so stdout carries rows only.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TextIO

from ..errors import OutputError, UsageError
from ..rows import Row
from .lines import CsvWriter, JsonlWriter

STDOUT = "-"
STREAM_FORMATS = {"jsonl": JsonlWriter, "csv": CsvWriter}


def is_stdout(path: str | Path | None) -> bool:
    return path is not None and str(path) == STDOUT


class StreamOutput:
    """The Output interface (capbatch.output.Output) over a text stream."""

    def __init__(
        self, fmt: str | None, stream: TextIO | None = None, *, csv_raw: bool = False
    ) -> None:
        fmt = (fmt or "jsonl").lower()
        if fmt not in STREAM_FORMATS:
            raise UsageError(f"--out - streams jsonl or csv, not {fmt}")
        self.path = Path(STDOUT)
        self.fmt = fmt
        self._format = STREAM_FORMATS[fmt]
        self._stream = stream
        self._begun = False
        # CSV cells a spreadsheet would run get the same guard as in a file (--csv-raw: not).
        self._neutralise = fmt == "csv" and not csv_raw

    def lock(self):
        return nullcontext()  # nothing on disk to guard

    def done(self) -> dict[str, str]:
        return {}

    def producers(self) -> set[tuple[str | None, str | None]]:
        return set()

    def has_content(self, done: Collection[str]) -> bool:
        return False

    def drop(self, keys: Collection[str]) -> int:
        return 0

    @property
    def stream(self) -> TextIO:
        # Looked up late: tests and callers may swap sys.stdout after opening.
        return self._stream if self._stream is not None else sys.stdout

    def begin(self, *, append: bool) -> None:
        if not self._begun:
            self._begun = True
            self._emit(self._format._header_text())

    def write(self, rows: Sequence[Row]) -> list[Row]:
        if not self._begun:
            raise RuntimeError("write() before begin()")
        if rows:
            records = [row.to_record() for row in rows]
            self._emit(self._format._records_text(records, neutralise=self._neutralise))
        return list(rows)

    def _emit(self, text: str) -> None:
        if not text:
            return
        try:
            self.stream.write(text)
            self.stream.flush()  # a reader downstream sees each batch as it is done
        except BrokenPipeError:
            # `capbatch caption ... --out - | head`: the reader has gone; stop cleanly.
            raise OutputError("stdout was closed by the reading program") from None

    def close(self) -> None:
        """Nothing to release: stdout stays open for the caller."""

    def __enter__(self) -> StreamOutput:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
