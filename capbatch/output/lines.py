"""CSV and JSONL outputs: whole rows appended, flushed and fsynced per write().

A crash can at worst leave a torn LAST record: reading (`read_done`) ignores
it, and opening with append=True cuts it off before appending.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import OutputError
from ..rows import ERROR, OK, ROW_FIELDS, STATUSES, TEXT_FIELDS, Row
from .durable import output_error, truncate, write_file
from .settings import OutputSettings

# A spreadsheet runs a cell starting with one of these as a formula (CSV injection):
# such text cells get a leading "'", which spreadsheets show as "text follows". A
# cell already starting with "'" gets one too, so reading strips exactly one.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def neutralise_cell(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def restore_cell(text: str) -> str:
    if text.startswith("'") and text[1:].startswith(_FORMULA_STARTS):
        return text[1:]
    return text


@dataclass
class _Scan:
    records: list[dict]  # complete records, file order
    end: int  # byte offset just past the last complete record
    size: int  # file size; end < size means a torn tail


def _is_row(record: object) -> bool:
    return (
        isinstance(record, dict)
        and isinstance(record.get("key"), str)
        and record.get("status") in STATUSES
    )


def _scan_jsonl(out: Path) -> _Scan:
    records, end, offset, foreign = [], 0, 0, 0
    with open(out, "rb") as handle:
        for raw in handle:
            offset += len(raw)
            if not raw.endswith(b"\n"):
                break  # torn last line
            try:
                record = json.loads(raw)
            except ValueError:
                record = None  # not ours to judge mid-file; it simply is not a done row
            if _is_row(record):
                records.append(record)
            elif raw.strip():
                foreign += 1
            end = offset
    # Resuming would find nothing done and start over: the file would be lost.
    if (foreign and not records) or not _torn_start_is_ours(out, end, b'{"key": '):
        raise OutputError(
            f"{out} exists but is not a capbatch JSONL file (no line is a capbatch row); "
            "choose another output or start over with --overwrite"
        )
    return _Scan(records, end, out.stat().st_size)


def _torn_start_is_ours(out: Path, end: int, start: bytes) -> bool:
    """With nothing complete in the file, whether what is there could be the torn start
    of our first record (cut off and rewritten on append) rather than someone's file."""
    if end > 0:
        return True
    with open(out, "rb") as handle:
        head = handle.read(len(start))
    return head.startswith(start) or start.startswith(head)


# The columns of outputs written before rows named their encoder (capbatch < 0.2).
_FIELDS_BEFORE_ENCODER = tuple(name for name in ROW_FIELDS if name != "encoder")


def older_output_error(out: Path) -> OutputError:
    return OutputError(
        f"{out} was written by an older capbatch whose rows do not name their encoder; "
        "resuming it could mix captions of two encoders: start a new output, or pass "
        "--overwrite to start this one over"
    )


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
                if tuple(fields) == _FIELDS_BEFORE_ENCODER:
                    raise older_output_error(out)
                if tuple(fields) != ROW_FIELDS:
                    raise OutputError(
                        f"{out} exists but is not a capbatch CSV (header {fields[:4]}...); "
                        "choose another output or start over"
                    )
                header_seen = True
            elif len(fields) == len(ROW_FIELDS):
                records.append(dict(zip(ROW_FIELDS, map(restore_cell, fields))))
            end = position["offset"]
    if not _torn_start_is_ours(out, end, ",".join(ROW_FIELDS).encode()):
        raise OutputError(
            f"{out} exists but is not a capbatch CSV (no capbatch header); "
            "choose another output or start over"
        )
    return _Scan(records, end, out.stat().st_size)


class LineWriter:
    """Shared by CSV and JSONL: append text, flush + fsync per write()."""

    _scan = staticmethod(_scan_jsonl)  # each format names its own scanner

    def __init__(
        self,
        out: Path,
        *,
        append: bool,
        overwrite_sidecars: bool = False,
        settings: OutputSettings | None = None,
    ) -> None:
        self.out = out
        self.settings = settings or OutputSettings()
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fresh = not append or not out.exists() or out.stat().st_size == 0
            if not fresh:
                scan = self._scan(out)
                if scan.end < scan.size:
                    truncate(out, scan.end)
                fresh = scan.end == 0  # nothing complete, not even a header
            # O_NOFOLLOW: `out` is the file --out names (check_output_target resolved a
            # link there), so a link found here now was planted since: not followed.
            mode = os.O_TRUNC | os.O_CREAT if fresh else os.O_APPEND
            fd = os.open(out, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | mode, 0o644)
            self._handle = open(fd, "w", encoding="utf-8", newline="")
            if fresh:
                self._append(self._header())
        except OSError as exc:
            raise output_error(out, exc) from None

    def _header(self) -> str:
        return ""

    def _format_records(self, records: Sequence[dict]) -> str:
        return self._records_text(records)

    @staticmethod
    def _records_text(records: Sequence[dict], *, neutralise: bool = False) -> str:
        raise NotImplementedError

    def _append(self, text: str) -> None:
        if not text:
            return
        self._handle.write(text)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def write(self, rows: Sequence[Row]) -> list[Row]:
        """Append whole rows (flushed + fsynced); returns them, as written."""
        if not rows:
            return []
        try:
            self._append(self._format_records([row.to_record() for row in rows]))
        except OSError as exc:
            # A disk-full write may leave a torn row: resume truncates it.
            raise output_error(self.out, exc) from None
        return list(rows)

    def close(self) -> None:
        if not self._handle.closed:
            try:
                self._handle.close()
            except OSError as exc:
                raise output_error(self.out, exc) from None

    @classmethod
    def read_done(cls, out: Path) -> dict[str, str]:
        done: dict[str, str] = {}
        if not out.exists():
            return done
        for record in cls._scan(out).records:  # later rows win: a retried key's newest
            done[str(record["key"])] = str(record.get("status") or ERROR)
        return done

    @classmethod
    def read_producers(cls, out: Path) -> set[tuple[str | None, str | None]]:
        if not out.exists():
            return set()
        return {
            (record.get("model_id"), record.get("encoder") or None)
            for record in cls._scan(out).records
            if record.get("status") == OK
        }

    @classmethod
    def drop_keys(cls, out: Path, keys: Collection[str]) -> int:
        if not out.exists() or not keys:
            return 0
        scan = cls._scan(out)
        kept = [record for record in scan.records if record["key"] not in keys]
        dropped = len(scan.records) - len(kept)
        if dropped:
            text = cls._header_text() + cls._records_text(kept, neutralise=True)
            write_file(out, text)
        return dropped

    @staticmethod
    def _header_text() -> str:
        return ""


class CsvWriter(LineWriter):
    """RFC 4180 CSV via the csv module: header once, fields quoted as needed."""

    _scan = staticmethod(_scan_csv)

    def _header(self) -> str:
        return self._header_text()

    @staticmethod
    def _header_text() -> str:
        buffer = io.StringIO()
        csv.writer(buffer).writerow(ROW_FIELDS)
        return buffer.getvalue()

    def _format_records(self, records: Sequence[dict]) -> str:
        if not self.settings.csv_raw:
            records = [_neutralised(record) for record in records]
        return self._records_text(records)

    @staticmethod
    def _records_text(records: Sequence[dict], *, neutralise: bool = False) -> str:
        # drop_keys rewrites records as read back (restored): neutralise them again.
        if neutralise:
            records = [_neutralised(record) for record in records]
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        for record in records:
            writer.writerow(["" if record[name] is None else record[name] for name in ROW_FIELDS])
        return buffer.getvalue()


class JsonlWriter(LineWriter):
    """One JSON object per line; newlines inside values are escaped by JSON itself."""

    _scan = staticmethod(_scan_jsonl)

    @staticmethod
    def _records_text(records: Sequence[dict], *, neutralise: bool = False) -> str:
        return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def _neutralised(record: dict) -> dict:
    return {
        name: neutralise_cell(value) if name in TEXT_FIELDS and isinstance(value, str) else value
        for name, value in record.items()
    }


def read_jsonl_rows(path: Path) -> Iterator[Row]:
    """The complete rows of a JSONL output, in file order (a torn tail ignored)."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.endswith("\n"):
                yield Row.from_record(json.loads(line))
