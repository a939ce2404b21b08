"""The output of `capbatch caption` (CSV, JSONL, Parquet, or a folder of Ray shards),
read back one row at a time as ReportRow.

Columns are read by name, so outputs from older or newer runs both work: a
missing column is None, a column this module does not know is kept as text in
`extra` and shown as is. Nothing here trusts the file: every value is checked
and converted, and a line that cannot be parsed is counted, not fatal.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MissingDependencyError, UsageError
from ..output import EXTENSION_FORMATS
from ..output.lines import restore_cell
from ..rows import ROW_FIELDS

# Columns with a meaning here (the output row's, declared once in capbatch.rows);
# any other column goes to ReportRow.extra.
KNOWN_COLUMNS = frozenset(ROW_FIELDS)
# Ray shard bookkeeping columns: not row data, never shown.
HIDDEN_COLUMNS = frozenset({"shard", "end", "count", "__index_level_0__"})
EXTRA_VALUE_CHARS = 300
PARQUET_BATCH_ROWS = 1024
_TRUE = frozenset({"true", "1", "yes", "y", "t"})
_FALSE = frozenset({"false", "0", "no", "n", "f"})


@dataclass
class ReportRow:
    index: int  # position in the output (0-based), the "original order"
    key: str
    path: str | None
    caption: str | None
    score: float | None
    status: str  # "ok" | "error" (anything else is reported as an error)
    error: str | None
    width: int | None
    height: int | None
    model_id: str | None
    in_domain: bool | None = None
    domain_distance: float | None = None
    truncated: bool | None = None
    repeated: bool | None = None  # a 1-3 word run repeated back to back
    attention: str | None = None  # a path to this row's attention PNG, when the output names one
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class RowStream:
    """The rows of one output, readable several times (one pass per iteration)."""

    source: Path
    fmt: str  # csv | jsonl | parquet
    files: tuple[Path, ...]
    unreadable: int = 0  # lines skipped by the last full pass (torn tail, bad JSON)

    def __iter__(self) -> Iterator[ReportRow]:
        self.unreadable = 0
        index = 0
        for path in self.files:
            for record in _RECORDERS[self.fmt](path, self):
                if record.get("end") is True:
                    continue  # a Ray stage's end-of-shard marker, not an image
                yield to_report_row(record, index)
                index += 1


def _text(value) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if text != "" else None


def _float(value) -> float | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int(value) -> int | None:
    number = _float(value)
    return int(number) if number is not None and number.is_integer() else None


def _bool(value) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if isinstance(value, float) and math.isnan(value) else bool(value)
    text = _text(value)
    if text is None:
        return None
    lowered = text.strip().lower()
    return True if lowered in _TRUE else False if lowered in _FALSE else None


def _status(record: dict) -> str:
    status = _text(record.get("status"))
    if status is None:
        return "error" if _text(record.get("error")) else "ok"
    return status if status == "ok" else "error"


def to_report_row(record: dict, index: int) -> ReportRow:
    """One output record (any column set) -> ReportRow."""
    path = _text(record.get("path"))
    key = _text(record.get("key")) or path or f"row {index + 1}"
    extra = {}
    for name, value in record.items():
        if name in KNOWN_COLUMNS or name in HIDDEN_COLUMNS or _text(value) is None:
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        extra[str(name)] = text[:EXTRA_VALUE_CHARS]
    status = _status(record)
    error = _text(record.get("error"))
    if status != "ok" and error is None:
        raw = _text(record.get("status"))
        error = f"status {raw!r}" if raw not in (None, "error") else "error (no reason given)"
    return ReportRow(
        index=index,
        key=key,
        path=path,
        caption=_text(record.get("caption")),
        score=_float(record.get("score")),
        status=status,
        error=error,
        width=_int(record.get("width")),
        height=_int(record.get("height")),
        model_id=_text(record.get("model_id")),
        in_domain=_bool(record.get("in_domain")),
        domain_distance=_float(record.get("domain_distance")),
        truncated=_bool(record.get("truncated")),
        repeated=_bool(record.get("repeated")),
        attention=_text(record.get("attention")),
        extra=extra,
    )


def _csv_records(path: Path, stream: RowStream) -> Iterator[dict]:
    # Captions can be long; the csv module's default field limit (128 KiB) is not a
    # property of the data, so lift it rather than fail the whole report.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    # utf-8-sig: a CSV saved again by a spreadsheet starts with a byte order mark,
    # which would otherwise become part of the first column's name.
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as handle:
        reader = csv.DictReader(handle)
        for record in reader:
            if None in record:  # more fields than the header: a torn or foreign line
                stream.unreadable += 1
                continue
            # Cells capbatch guarded against spreadsheet formulas read as they were.
            yield {name: restore_cell(value) for name, value in record.items()}


def _jsonl_records(path: Path, stream: RowStream) -> Iterator[dict]:
    # utf-8-sig, as _sniff_format: a byte order mark would make the first row unreadable.
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                stream.unreadable += 1  # e.g. the torn tail of a crashed run
                continue
            if isinstance(record, dict):
                yield record
            else:
                stream.unreadable += 1


def _parquet_records(path: Path, stream: RowStream) -> Iterator[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError(
            "reading Parquet output needs pyarrow: pip install 'capbatch[parquet]'"
        ) from None
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:
        raise UsageError(f"{path} is not a readable Parquet file: {exc}") from None
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        yield from batch.to_pylist()


_RECORDERS = {"csv": _csv_records, "jsonl": _jsonl_records, "parquet": _parquet_records}
# How many records may come before the first one with a key (a torn or foreign
# line at the top) before a file is judged not to be a run output.
_KEY_SEARCH_RECORDS = 1000


def _sniff_format(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        return "jsonl"
    return "csv"


def _shard_files(folder: Path) -> tuple[str, tuple[Path, ...]]:
    """A Ray shards folder (shard-*.jsonl|parquet) or a Parquet parts folder (part-*)."""
    for fmt, patterns in (
        ("parquet", ("shard-*.parquet", "part-*.parquet")),
        ("jsonl", ("shard-*.jsonl",)),
    ):
        for pattern in patterns:
            files = tuple(sorted(folder.glob(pattern)))
            if files:
                return fmt, files
    raise UsageError(
        f"{folder} is a folder without capbatch shards (shard-*.jsonl, shard-*.parquet "
        "or part-*.parquet); give the merged CSV, JSONL or Parquet file instead"
    )


def open_rows(source: Path | str) -> RowStream:
    """The rows of a `capbatch caption` output file or Ray shards folder.

    Raises UsageError when it is missing, a sidecar journal, or not a known layout.
    """
    source = Path(source)
    if source.is_dir():
        fmt, files = _shard_files(source)
        return RowStream(source, fmt, files)
    if not source.is_file():
        raise UsageError(f"no such output file: {source}")
    fmt = EXTENSION_FORMATS.get(source.suffix.lower()) or _sniff_format(source)
    stream = RowStream(source, fmt, (source,))
    _check_run_output(stream)
    return stream


def _check_run_output(stream: RowStream) -> None:
    """UsageError unless the file holds rows of a run: every output capbatch writes
    has a `key` column (its header, or its records), and an empty file is an empty run."""
    if stream.fmt == "csv":
        with open(stream.source, encoding="utf-8-sig", errors="replace", newline="") as handle:
            header = next(csv.reader([handle.readline(1 << 20)]), [])
        has_key = not header or "key" in header
    else:
        records = _RECORDERS[stream.fmt](stream.source, RowStream(stream.source, stream.fmt, ()))
        seen = 0
        has_key = True
        for record in records:
            has_key = "key" in record
            seen += 1
            if has_key or seen >= _KEY_SEARCH_RECORDS:
                break
    if not has_key:
        raise UsageError(
            f"{stream.source} is not a capbatch run output (no key column); give the CSV, "
            "JSONL or Parquet file `capbatch caption` wrote"
        )
