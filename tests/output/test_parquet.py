"""capbatch.output.parquet in one process: parts that survive a crash and are
merged once, a retried key that replaces its old row, the schema every part
keeps, the refusals and write errors in one line. Written from the survivors
of the output/ mutation run (docs/testing.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from capbatch.errors import MissingDependencyError, OutputError
from capbatch.output.parquet import (
    ParquetWriter,
    import_pyarrow,
    parts_dir_for,
    read_parquet_rows,
)
from capbatch.rows import ROW_FIELDS, Row

pq = pytest.importorskip("pyarrow.parquet")


def _refusal(call) -> str:
    """The one line of the OutputError that `call` raises."""
    with pytest.raises(OutputError) as caught:
        call()
    return str(caught.value)


def _row(key: str, status: str = "ok") -> Row:
    caption, error = ("a red circle", None) if status == "ok" else (None, "not an image")
    return Row(key, f"/data/{key}", caption, -1.5, status, error, 8, 6, "m-1")


def _keys(out: Path) -> list[str]:
    return pq.read_table(out).column("key").to_pylist()


def test_pyarrow_missing_is_one_line_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    with pytest.raises(MissingDependencyError) as caught:
        import_pyarrow()
    assert str(caught.value) == "Parquet output needs pyarrow: pip install 'capbatch[parquet]'"


def test_a_finished_output_has_no_parts_folder_left(tmp_path):
    out = tmp_path / "rows.parquet"
    writer = ParquetWriter(out, append=False)
    writer.write([_row("a.jpg")])
    writer.write([_row("b.jpg")])
    writer.close()
    writer.close()  # twice is harmless
    assert _keys(out) == ["a.jpg", "b.jpg"]
    assert not parts_dir_for(out).exists()
    again = ParquetWriter(out, append=True)  # nothing written: the output stays, no parts
    again.close()
    assert _keys(out) == ["a.jpg", "b.jpg"] and not parts_dir_for(out).exists()


def test_a_resumed_run_after_a_crash_keeps_the_crashed_runs_parts(tmp_path):
    out = tmp_path / "deep" / "er" / "rows.parquet"  # folders made as needed
    crashed = ParquetWriter(out, append=False)
    crashed.write([_row("a.jpg")])
    crashed.write([_row("b.jpg", status="error")])  # then the process died: no close()
    assert ParquetWriter.read_done(out) == {"a.jpg": "ok", "b.jpg": "error"}
    # --retry-errors, as the job does it: drop the error rows, then append anew
    assert ParquetWriter.drop_keys(out, {"b.jpg"}) == 1  # the parts merged, then filtered
    assert _keys(out) == ["a.jpg"] and not parts_dir_for(out).exists()
    resumed = ParquetWriter(out, append=True)
    resumed.write([_row("b.jpg")])  # the retried key
    resumed.write([_row("c.jpg")])
    resumed.close()
    assert _keys(out) == ["a.jpg", "b.jpg", "c.jpg"]  # each key once, nothing lost
    assert ParquetWriter.read_done(out) == {"a.jpg": "ok", "b.jpg": "ok", "c.jpg": "ok"}


def test_a_resumed_run_numbers_its_parts_after_the_crashed_runs(tmp_path):
    out = tmp_path / "rows.parquet"
    crashed = ParquetWriter(out, append=False)
    crashed.write([_row("a.jpg")])
    crashed.write([_row("b.jpg")])  # died here: two parts, no output file
    resumed = ParquetWriter(out, append=True)
    resumed.write([_row("c.jpg")])
    names = sorted(p.name for p in parts_dir_for(out).iterdir())
    assert names == [f"part-{i:08d}.parquet" for i in range(3)]
    resumed.close()
    assert _keys(out) == ["a.jpg", "b.jpg", "c.jpg"]


def test_starting_over_discards_a_crashed_runs_parts(tmp_path):
    out = tmp_path / "rows.parquet"
    crashed = ParquetWriter(out, append=False)
    crashed.write([_row("old.jpg")])  # died here
    fresh = ParquetWriter(out, append=False)  # --overwrite
    fresh.write([_row("new.jpg")])
    fresh.close()
    assert _keys(out) == ["new.jpg"]


def test_every_part_has_the_row_schema_even_when_a_column_is_all_empty(tmp_path):
    out = tmp_path / "rows.parquet"
    writer = ParquetWriter(out, append=False)
    writer.write([_row("a.jpg")])  # error, domain_*, attention: all None
    (part,) = sorted(parts_dir_for(out).glob("part-*.parquet"))
    schema = pq.read_schema(part)
    assert tuple(schema.names) == ROW_FIELDS
    assert str(schema.field("error").type) == "string"
    assert str(schema.field("in_domain").type) == "bool"
    writer.close()


def test_dropping_keys_from_a_finished_output_counts_and_removes_them(tmp_path):
    out = tmp_path / "rows.parquet"
    writer = ParquetWriter(out, append=False)
    writer.write([_row("a.jpg"), _row("b.jpg", status="error"), _row("c.jpg")])
    writer.close()
    assert ParquetWriter.drop_keys(out, {"b.jpg", "zzz.jpg"}) == 1
    assert _keys(out) == ["a.jpg", "c.jpg"]
    assert ParquetWriter.drop_keys(out, {"zzz.jpg"}) == 0
    assert ParquetWriter.drop_keys(out, set()) == 0
    missing = tmp_path / "missing.parquet"
    assert ParquetWriter.drop_keys(missing, {"a.jpg"}) == 0
    assert not missing.exists()  # nothing made for it
    assert list(read_parquet_rows(out)) == [_row("a.jpg"), _row("c.jpg")]


def test_a_parquet_file_with_other_columns_is_refused_naming_them(tmp_path):
    import pyarrow as pa

    out = tmp_path / "theirs.parquet"
    pq.write_table(
        pa.table({"image": ["x"], "text": ["y"], "score": [1.0], "a": [1], "b": [2]}), out
    )
    assert _refusal(lambda: ParquetWriter(out, append=True)) == (
        f"{out} exists but is not a capbatch Parquet file (columns ['image', 'text', "
        "'score', 'a']...); choose another output or start over"
    )


def test_write_and_merge_errors_are_one_line_naming_the_output(tmp_path):
    out = tmp_path / "rows.parquet"
    writer = ParquetWriter(out, append=False)
    writer.write([_row("a.jpg")])
    parts = parts_dir_for(out)
    for part in parts.iterdir():
        part.unlink()
    parts.rmdir()
    parts.write_text("not a folder")  # the parts folder replaced: no part can be made
    assert _refusal(lambda: writer.write([_row("b.jpg")])) == f"cannot write {out}: Not a directory"

    blocked = tmp_path / "blocked.parquet"
    writer = ParquetWriter(blocked, append=False)
    writer.write([_row("a.jpg")])
    blocked.mkdir()  # the output's name taken by a folder: the merge cannot land
    (blocked / "x").write_text("")
    assert _refusal(lambda: writer.close()).startswith(f"cannot write {blocked}: ")


def test_an_output_whose_folder_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "rows.parquet"
    assert _refusal(lambda: ParquetWriter(out, append=False)) == (
        f"cannot use the Parquet parts folder {out}.parts: Not a directory"
    )
