"""Parquet output: one complete part file per write(), merged into the output at close.

Each part is written to a temporary name, fsynced and renamed, so a part is
either whole or absent. After a crash the parts are readable as they are
(pyarrow.parquet.read_table("<out>.parts")) and a resumed run adds to them.
"""

from __future__ import annotations

import shutil
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

from ..errors import MissingDependencyError, OutputError
from ..rows import OK, ROW_FIELDS, Row, parquet_schema
from .durable import make_folder, output_error, write_file
from .lines import older_output_error
from .settings import OutputSettings

# pyarrow's dataset reader skips names starting with "_" or ".", so reading the
# parts folder after a crash never trips over a half-written part.
_WRITING_PREFIX = "_writing-"


def import_pyarrow():
    """(pyarrow, pyarrow.compute, pyarrow.parquet), or a one-line install hint."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError(
            "Parquet output needs pyarrow: pip install 'capbatch[parquet]'"
        ) from None
    return pa, pc, pq


def parts_dir_for(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _part_files(parts: Path) -> list[Path]:
    if not parts.is_dir():
        return []
    return sorted(
        p for p in parts.iterdir() if p.name.startswith("part-") and p.suffix == ".parquet"
    )


class ParquetWriter:
    """Parts in "<out>.parts/", merged by close(): <out> is rewritten from the old <out>
    (minus keys the parts redo) plus the parts in order, renamed into place, then the
    parts are deleted; a crash in between leaves rows in both, which the next merge
    and read_done resolve."""

    def __init__(
        self,
        out: Path,
        *,
        append: bool,
        overwrite_sidecars: bool = False,
        settings: OutputSettings | None = None,
    ) -> None:
        self.pa, self.pc, self.pq = import_pyarrow()
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
        except OSError as exc:
            raise output_error(out, exc) from None
        make_folder(self.parts, "the Parquet parts folder")
        try:
            for stale in self.parts.glob(f"{_WRITING_PREFIX}*"):  # older runs' temporaries
                stale.unlink()
        except OSError as exc:
            raise output_error(out, exc) from None
        existing = _part_files(self.parts)
        self._next_part = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0

    def write(self, rows: Sequence[Row]) -> list[Row]:
        """One part file of whole rows (fsynced, renamed); returns the rows as written."""
        if not rows:
            return []
        records = [row.to_record() for row in rows]
        columns = {name: [record[name] for record in records] for name in ROW_FIELDS}
        target = self.parts / f"part-{self._next_part:08d}.parquet"
        table = self.pa.table(columns, schema=self.schema)
        try:
            write_file(target, lambda handle: self.pq.write_table(table, handle))
        except OSError as exc:
            raise output_error(self.out, exc) from None
        self._next_part += 1
        return list(rows)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            _merge_parts(self.out)
        except OSError as exc:
            raise output_error(self.out, exc) from None

    @staticmethod
    def read_done(out: Path) -> dict[str, str]:
        _, _, pq = import_pyarrow()
        done: dict[str, str] = {}
        sources = ([out] if out.exists() else []) + _part_files(parts_dir_for(out))
        if out.exists():
            _check_parquet_output(out, pq)
        for source in sources:
            table = pq.read_table(source, columns=["key", "status"])
            done.update(zip(table.column("key").to_pylist(), table.column("status").to_pylist()))
        return done

    @staticmethod
    def read_producers(out: Path) -> set[tuple[str | None, str | None]]:
        _, _, pq = import_pyarrow()
        producers = set()
        for source in ([out] if out.exists() else []) + _part_files(parts_dir_for(out)):
            table = pq.read_table(source, columns=["status", "model_id", "encoder"])
            for status, model_id, encoder in zip(*(column.to_pylist() for column in table.columns)):
                if status == OK:
                    producers.add((model_id, encoder or None))
        return producers

    @staticmethod
    def drop_keys(out: Path, keys: Collection[str]) -> int:
        if not keys:
            return 0
        pa, pc, pq = import_pyarrow()
        if not out.exists() and not _part_files(parts_dir_for(out)):
            return 0  # nothing to drop from, and no empty output made for it
        _merge_parts(out)  # one file to filter, parts folded in
        table = pq.read_table(out)
        keep = pc.invert(pc.is_in(table.column("key"), value_set=pa.array(list(keys))))
        kept = table.filter(keep)
        dropped = table.num_rows - kept.num_rows
        if dropped:
            buffer = pa.BufferOutputStream()
            pq.write_table(kept, buffer)
            write_file(out, buffer.getvalue().to_pybytes())
        return dropped


def read_parquet_rows(path: Path) -> Iterator[Row]:
    _, _, pq = import_pyarrow()
    for record in pq.read_table(path).to_pylist():
        yield Row.from_record(record)


def _check_parquet_output(out: Path, pq) -> None:
    try:
        names = tuple(pq.read_schema(out).names)
    except Exception as exc:  # pyarrow's ArrowInvalid and friends: not Parquet at all
        raise OutputError(f"{out} exists but is not a readable Parquet file: {exc}") from None
    if names == tuple(name for name in ROW_FIELDS if name != "encoder"):
        raise older_output_error(out)
    if names != ROW_FIELDS:
        raise OutputError(
            f"{out} exists but is not a capbatch Parquet file (columns {list(names)[:4]}...); "
            "choose another output or start over"
        )


def _merge_parts(out: Path) -> None:
    pa, pc, pq = import_pyarrow()
    schema = parquet_schema(pa)
    parts = parts_dir_for(out)
    part_files = _part_files(parts)
    if not part_files and out.exists():
        shutil.rmtree(parts, ignore_errors=True)
        return
    redone = set()
    for part in part_files:
        redone.update(pq.read_table(part, columns=["key"]).column("key").to_pylist())

    def merge(handle) -> None:
        with pq.ParquetWriter(handle, schema) as writer:
            if out.exists():
                for batch in pq.ParquetFile(out).iter_batches():
                    table = pa.Table.from_batches([batch]).cast(schema)
                    if redone:
                        mask = pc.invert(
                            pc.is_in(table.column("key"), value_set=pa.array(list(redone)))
                        )
                        table = table.filter(mask)
                    writer.write_table(table)
            for part in part_files:
                writer.write_table(pq.read_table(part).cast(schema))

    write_file(out, merge)  # whole or absent; the old file is read while the new is written
    shutil.rmtree(parts, ignore_errors=True)
