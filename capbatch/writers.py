"""Rows -> output files: CSV, JSONL, Parquet, or .txt sidecars beside the images.

Crash guarantees (docs/inputs-outputs.md):
- every write() call appends whole rows and returns only after flush + fsync;
- a crash can at worst leave a torn LAST record; read_done() ignores it and
  opening with append=True truncates it before appending;
- Parquet is written as one complete part file per write() call in
  "<out>.parts/" (atomic rename) and merged into <out> by close(), so a killed
  run leaves readable Parquet (the parts) that a resumed run picks up.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from collections.abc import Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

from .errors import MissingDependencyError, OutputError, UsageError
from .output_lock import OutputLock, lock_path_for
from .sources import escape_undecodable

__all__ = [
    "ROW_FIELDS",
    "WRITERS",
    "CsvWriter",
    "JsonlWriter",
    "OutputLock",
    "ParquetWriter",
    "Row",
    "SidecarWriter",
    "Writer",
    "drop_keys",
    "format_for",
    "lock_path_for",
    "open_writer",
    "read_done",
    "sidecar_path",
]

ROW_FIELDS: tuple[str, ...] = (
    "key",
    "path",
    "caption",
    "score",
    "status",
    "error",
    "width",
    "height",
    "model_id",
)
STATUSES = ("ok", "error")
_TEXT_FIELDS = ("key", "path", "caption", "error", "model_id")


@dataclass(frozen=True)
class Row:
    key: str
    path: str | None
    caption: str | None
    score: float | None
    status: str  # "ok" | "error"
    error: str | None
    width: int | None
    height: int | None
    model_id: str

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"row status must be one of {STATUSES}, got {self.status!r}")

    def to_record(self) -> dict:
        """Plain values in ROW_FIELDS order, every string safe to encode as UTF-8."""
        record = asdict(self)
        for name in _TEXT_FIELDS:
            if record[name] is not None:
                record[name] = escape_undecodable(str(record[name]))
        if record["score"] is not None:
            score = float(record["score"])
            # NaN/inf have no JSON spelling and no meaning as a confidence.
            record["score"] = score if math.isfinite(score) else None
        return record


class Writer(Protocol):
    def write(self, rows: Sequence[Row]) -> None: ...  # whole rows, flushed (+fsync) per call

    def close(self) -> None: ...


def _output_error(out: Path, exc: OSError) -> OutputError:
    return OutputError(f"cannot write {out}: {exc.strerror or exc}")


def _fsync_directory(directory: Path) -> None:
    # Makes a rename or a new file's directory entry durable too.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _replace_atomically(target: Path, content: bytes) -> None:
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    _fsync_directory(target.parent)


# -- line-oriented formats: scanning for complete records --------------------------------


@dataclass
class _Scan:
    records: list[dict]  # complete records, file order
    end: int  # byte offset just past the last complete record
    size: int  # file size; end < size means a torn tail


def _scan_jsonl(out: Path) -> _Scan:
    records, end, offset = [], 0, 0
    with open(out, "rb") as handle:
        for raw in handle:
            offset += len(raw)
            if not raw.endswith(b"\n"):
                break  # torn last line
            try:
                record = json.loads(raw)
            except ValueError:
                continue  # not ours to judge mid-file; it simply is not a done row
            if isinstance(record, dict) and isinstance(record.get("key"), str):
                records.append(record)
            end = offset
    return _Scan(records, end, out.stat().st_size)


def _scan_csv(out: Path) -> _Scan:
    records, end = [], 0
    position = {"offset": 0, "newline": True}
    with open(out, "rb") as handle:

        def lines() -> Iterator[str]:
            for raw in handle:
                position["offset"] += len(raw)
                position["newline"] = raw.endswith(b"\n")
                yield raw.decode("utf-8", "replace")

        # The reader pulls exactly the lines of one record, so after each record
        # `position` is the byte offset just past it (quoted newlines included).
        reader = csv.reader(lines(), strict=True)
        header_seen = False
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                if handle.read(1) == b"":
                    break  # an unterminated quote at the end: a torn last record
                raise OutputError(f"{out} is not a readable CSV: {exc}") from None
            if not position["newline"]:
                break  # torn last record
            if not header_seen:
                if tuple(fields) != ROW_FIELDS:
                    raise OutputError(
                        f"{out} exists but is not a capbatch CSV (header {fields[:4]}...); "
                        "choose another output or start over"
                    )
                header_seen = True
            elif len(fields) == len(ROW_FIELDS):
                records.append(dict(zip(ROW_FIELDS, fields)))
            end = position["offset"]
    return _Scan(records, end, out.stat().st_size)


def _truncate_torn_tail(out: Path, scan: _Scan) -> None:
    if scan.end < scan.size:
        with open(out, "r+b") as handle:
            handle.truncate(scan.end)
            os.fsync(handle.fileno())


def _done_from_records(records: Sequence[dict]) -> dict[str, str]:
    done: dict[str, str] = {}
    for record in records:  # later rows win: a retried key's newest row counts
        done[str(record["key"])] = str(record.get("status") or "error")
    return done


class _LineWriter:
    """Shared by CSV and JSONL: append text, flush + fsync per write()."""

    def __init__(self, out: Path, *, append: bool, overwrite_sidecars: bool = False) -> None:
        self.out = out
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fresh = not append or not out.exists() or out.stat().st_size == 0
            if not fresh:
                scan = self._scan(out)
                _truncate_torn_tail(out, scan)
                fresh = scan.end == 0  # nothing complete, not even a header
            self._handle = open(out, "w" if fresh else "a", encoding="utf-8", newline="")
            if fresh:
                self._append(self._header())
        except OSError as exc:
            raise _output_error(out, exc) from None

    _scan = staticmethod(_scan_jsonl)  # each format names its own scanner

    def _header(self) -> str:
        return ""

    def _format(self, rows: Sequence[Row]) -> str:
        raise NotImplementedError

    def _append(self, text: str) -> None:
        if not text:
            return
        self._handle.write(text)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def write(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        try:
            self._append(self._format(rows))
        except OSError as exc:
            # A disk-full write may leave a torn row: resume truncates it.
            raise _output_error(self.out, exc) from None

    def close(self) -> None:
        if not self._handle.closed:
            try:
                self._handle.close()
            except OSError as exc:
                raise _output_error(self.out, exc) from None

    @classmethod
    def read_done(cls, out: Path) -> dict[str, str]:
        return _done_from_records(cls._scan(out).records) if out.exists() else {}

    @classmethod
    def drop_keys(cls, out: Path, keys: Collection[str]) -> int:
        if not out.exists() or not keys:
            return 0
        scan = cls._scan(out)
        kept = [record for record in scan.records if record["key"] not in keys]
        dropped = len(scan.records) - len(kept)
        if dropped:
            _replace_atomically(out, cls._format_records(kept).encode("utf-8"))
        return dropped


class CsvWriter(_LineWriter):
    """RFC 4180 CSV via the csv module: header once, fields quoted as needed."""

    _scan = staticmethod(_scan_csv)

    def _header(self) -> str:
        return _csv_header()

    def _format(self, rows: Sequence[Row]) -> str:
        return _csv_text([row.to_record() for row in rows])

    @staticmethod
    def _format_records(records: Sequence[dict]) -> str:
        return _csv_header() + _csv_text(records)


def _csv_header() -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(ROW_FIELDS)
    return buffer.getvalue()


def _csv_text(records: Sequence[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for record in records:
        writer.writerow(["" if record[name] is None else record[name] for name in ROW_FIELDS])
    return buffer.getvalue()


class JsonlWriter(_LineWriter):
    """One JSON object per line; newlines inside values are escaped by JSON itself."""

    _scan = staticmethod(_scan_jsonl)

    def _format(self, rows: Sequence[Row]) -> str:
        return self._format_records([row.to_record() for row in rows])

    @staticmethod
    def _format_records(records: Sequence[dict]) -> str:
        return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


# -- sidecars ---------------------------------------------------------------------------


def sidecar_path(image_path: str) -> str:
    """ "photos/a.jpg" -> "photos/a.txt" (as dataset-prep tools expect)."""
    stem, extension = os.path.splitext(image_path)
    if extension.lower() == ".txt":  # an image named *.txt must not become its own sidecar
        return image_path + ".txt"
    return stem + ".txt"


class SidecarWriter:
    """Writes each captioned file's caption to a .txt beside it, and every row to a
    JSONL journal at `out` (which gives resume, errors and the lock a home).

    Existing sidecars are never replaced unless overwrite_sidecars; one that already
    holds the same caption (left by a killed run) counts as written. Archive members
    have no file to sit beside: their captions are in the journal only.
    """

    def __init__(self, out: Path, *, append: bool, overwrite_sidecars: bool = False) -> None:
        self.overwrite_sidecars = overwrite_sidecars
        self.journal = JsonlWriter(out, append=append)

    def write(self, rows: Sequence[Row]) -> None:
        # Sidecars first: a journal row then always means its sidecar exists.
        self.journal.write([self._write_sidecar(row) for row in rows])

    def _write_sidecar(self, row: Row) -> Row:
        if row.status != "ok" or row.caption is None or row.path is None:
            return row
        target = sidecar_path(row.path)
        text = escape_undecodable(row.caption) + "\n"
        tmp = f"{target}.tmp-{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                if self.overwrite_sidecars:
                    os.replace(tmp, target)
                else:
                    os.link(tmp, target)  # fails if the sidecar exists: never clobbers
            finally:
                if os.path.lexists(tmp):
                    os.unlink(tmp)
        except FileExistsError:
            if _read_text(target) == text:
                return row
            name = escape_undecodable(os.path.basename(target))
            return replace(
                row, status="error", error=f"sidecar {name} exists (use --overwrite-sidecars)"
            )
        except OSError as exc:
            return replace(
                row, status="error", error=f"cannot write sidecar: {exc.strerror or exc}"
            )
        return row

    def close(self) -> None:
        self.journal.close()

    @staticmethod
    def read_done(out: Path) -> dict[str, str]:
        return JsonlWriter.read_done(out)

    @staticmethod
    def drop_keys(out: Path, keys: Collection[str]) -> int:
        return JsonlWriter.drop_keys(out, keys)


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return None


# -- Parquet ----------------------------------------------------------------------------


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError(
            "Parquet output needs pyarrow: pip install 'capbatch[parquet]'"
        ) from None
    return pa, pc, pq


def parquet_schema(pa, leading: Sequence[tuple] = ()):
    """The Parquet schema of output rows; `leading` fields go first (the Ray engine's
    shard bookkeeping)."""
    return pa.schema(
        [
            *leading,
            ("key", pa.string()),
            ("path", pa.string()),
            ("caption", pa.string()),
            ("score", pa.float64()),
            ("status", pa.string()),
            ("error", pa.string()),
            ("width", pa.int64()),
            ("height", pa.int64()),
            ("model_id", pa.string()),
        ]
    )


# pyarrow's dataset reader skips names starting with "_" or ".", so reading the
# parts folder after a crash never trips over a half-written part.
_WRITING_PREFIX = "_writing-"


def parts_dir_for(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _part_files(parts: Path) -> list[Path]:
    if not parts.is_dir():
        return []
    return sorted(
        p for p in parts.iterdir() if p.name.startswith("part-") and p.suffix == ".parquet"
    )


class ParquetWriter:
    """One complete Parquet file per write() in "<out>.parts/", merged into <out> at close.

    Each part is written to a temporary name, fsynced and renamed, so a part is
    either whole or absent. After a crash the parts are readable as they are
    (pyarrow.parquet.read_table("<out>.parts")) and a resumed run adds to them.
    close() writes <out> from the old <out> (minus keys the parts redo) plus the
    parts in order, renames it into place, then deletes the parts; a crash in
    between leaves rows in both, which the next merge and read_done resolve.
    """

    def __init__(self, out: Path, *, append: bool, overwrite_sidecars: bool = False) -> None:
        self.pa, self.pc, self.pq = _pyarrow()
        self.out = out
        self.parts = parts_dir_for(out)
        self.schema = parquet_schema(self.pa)
        self._closed = False
        if append and out.exists():
            _check_parquet_output(out, self.pq)
        try:
            if not append:
                shutil.rmtree(self.parts, ignore_errors=True)
                if out.exists():
                    out.unlink()
            self.parts.mkdir(parents=True, exist_ok=True)
            for stale in self.parts.glob(f"{_WRITING_PREFIX}*"):  # cut short by a crash
                stale.unlink()
        except OSError as exc:
            raise _output_error(out, exc) from None
        existing = _part_files(self.parts)
        self._next_part = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0

    def _table(self, records: Sequence[dict]):
        columns = {name: [record[name] for record in records] for name in ROW_FIELDS}
        return self.pa.table(columns, schema=self.schema)

    def write(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        target = self.parts / f"part-{self._next_part:08d}.parquet"
        tmp = target.with_name(_WRITING_PREFIX + target.name)
        try:
            self.pq.write_table(self._table([row.to_record() for row in rows]), tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, target)
            _fsync_directory(self.parts)
        except OSError as exc:
            raise _output_error(self.out, exc) from None
        self._next_part += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            _merge_parquet(self.out, self.pa, self.pc, self.pq, self.schema)
        except OSError as exc:
            raise _output_error(self.out, exc) from None

    @staticmethod
    def read_done(out: Path) -> dict[str, str]:
        pa, _, pq = _pyarrow()
        done: dict[str, str] = {}
        sources = ([out] if out.exists() else []) + _part_files(parts_dir_for(out))
        if out.exists():
            _check_parquet_output(out, pq)
        for source in sources:
            table = pq.read_table(source, columns=["key", "status"])
            done.update(zip(table.column("key").to_pylist(), table.column("status").to_pylist()))
        return done

    @staticmethod
    def drop_keys(out: Path, keys: Collection[str]) -> int:
        if not keys:
            return 0
        pa, pc, pq = _pyarrow()
        schema = parquet_schema(pa)
        _merge_parquet(out, pa, pc, pq, schema)  # one file to filter, parts folded in
        if not out.exists():
            return 0
        table = pq.read_table(out)
        keep = pc.invert(pc.is_in(table.column("key"), value_set=pa.array(list(keys))))
        kept = table.filter(keep)
        dropped = table.num_rows - kept.num_rows
        if dropped:
            buffer = pa.BufferOutputStream()
            pq.write_table(kept, buffer)
            _replace_atomically(out, buffer.getvalue().to_pybytes())
        return dropped


def _check_parquet_output(out: Path, pq) -> None:
    try:
        names = tuple(pq.read_schema(out).names)
    except Exception as exc:  # pyarrow's ArrowInvalid and friends: not Parquet at all
        raise OutputError(f"{out} exists but is not a readable Parquet file: {exc}") from None
    if names != ROW_FIELDS:
        raise OutputError(
            f"{out} exists but is not a capbatch Parquet file (columns {list(names)[:4]}...); "
            "choose another output or start over"
        )


def _merge_parquet(out: Path, pa, pc, pq, schema) -> None:
    parts = parts_dir_for(out)
    part_files = _part_files(parts)
    if not part_files and out.exists():
        shutil.rmtree(parts, ignore_errors=True)
        return
    redone = set()
    for part in part_files:
        redone.update(pq.read_table(part, columns=["key"]).column("key").to_pylist())
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    with pq.ParquetWriter(tmp, schema) as writer:
        if out.exists():
            old = pq.ParquetFile(out)
            for batch in old.iter_batches():
                table = pa.Table.from_batches([batch]).cast(schema)
                if redone:
                    mask = pc.invert(
                        pc.is_in(table.column("key"), value_set=pa.array(list(redone)))
                    )
                    table = table.filter(mask)
                writer.write_table(table)
        for part in part_files:
            writer.write_table(pq.read_table(part).cast(schema))
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, out)
    _fsync_directory(out.parent)
    shutil.rmtree(parts, ignore_errors=True)


# -- choosing and opening ---------------------------------------------------------------

WRITERS: dict[str, type] = {
    "csv": CsvWriter,
    "jsonl": JsonlWriter,
    "parquet": ParquetWriter,
    "txt": SidecarWriter,
}

_EXTENSION_FORMATS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def format_for(out: Path, fmt: str | None) -> str:
    """The output format: `fmt` when given, else from the extension of `out`.

    "txt" (sidecars) is never guessed: "--out captions.txt" reads as one text
    file, so sidecars are chosen with --format txt, `out` then being the journal.
    """
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in WRITERS:
            raise UsageError(f"unknown output format {fmt!r}; choose one of {', '.join(WRITERS)}")
        return fmt
    guessed = _EXTENSION_FORMATS.get(Path(out).suffix.lower())
    if guessed is None:
        raise UsageError(
            f"cannot tell the output format from {str(out)!r}: use an extension "
            f"({', '.join(_EXTENSION_FORMATS)}) or --format {{{','.join(WRITERS)}}}"
        )
    return guessed


def open_writer(out: Path, fmt: str, *, append: bool, overwrite_sidecars: bool = False) -> Writer:
    """A writer for `out`. append=True keeps complete rows already there (torn tail cut);
    append=False starts the output over. Hold an OutputLock on `out` around it."""
    writer_class = WRITERS[format_for(out, fmt)]
    _check_not_a_directory(Path(out))
    return writer_class(Path(out), append=append, overwrite_sidecars=overwrite_sidecars)


def read_done(out: Path, fmt: str) -> dict[str, str]:
    """key -> status ("ok" | "error") of the rows already in `out`, the newest row per key.
    A torn last record is ignored; a missing output gives {}."""
    writer_class = WRITERS[format_for(out, fmt)]
    _check_not_a_directory(Path(out))
    return writer_class.read_done(Path(out))


def _check_not_a_directory(out: Path) -> None:
    # Otherwise open() fails with IsADirectoryError deep in a reader: an internal error.
    if out.is_dir():
        raise OutputError(f"{out} is a directory; --out must name a file")


def drop_keys(out: Path, fmt: str, keys: Collection[str]) -> int:
    """Rewrite `out` (atomically) without the rows of `keys`; returns how many went.

    For --retry-errors: drop the error rows, then append their new rows, so each
    key still appears exactly once.
    """
    return WRITERS[format_for(out, fmt)].drop_keys(Path(out), frozenset(keys))
