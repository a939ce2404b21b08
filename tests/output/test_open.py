"""capbatch.output's front door in one process: the format chosen or refused in
one exact line, --csv-raw reaching the writer behind every kind of output, and
read_rows over finished JSONL and Parquet files. Written from the survivors of
the output/__init__.py mutation run (docs/testing.md)."""

from __future__ import annotations

import io

import pytest

from capbatch.errors import UsageError
from capbatch.output import Output, OutputSettings, format_for, open_output, read_rows
from capbatch.rows import Row

RAW = OutputSettings(csv_raw=True)


def _row(key: str, caption: str = "=SUM(A1:A9)") -> Row:
    return Row(key, f"/data/{key}", caption, -1.5, "ok", None, 8, 6, "m-1")


def _usage_error(call) -> str:
    with pytest.raises(UsageError) as caught:
        call()
    return str(caught.value)


def test_unknown_and_unguessable_formats_are_one_exact_line(tmp_path):
    assert _usage_error(lambda: format_for(tmp_path / "x.csv", "xml")) == (
        "unknown output format 'xml'; choose one of csv, jsonl, parquet, txt"
    )
    assert _usage_error(lambda: format_for("captions.txt", None)) == (
        "cannot tell the output format from 'captions.txt': use an extension "
        "(.csv, .jsonl, .ndjson, .parquet, .pq) or --format {csv,jsonl,parquet,txt}"
    )


def test_csv_raw_is_refused_for_other_formats_before_anything_is_written(tmp_path):
    out = tmp_path / "rows.jsonl"
    assert _usage_error(lambda: open_output(out, settings=RAW)) == (
        "--csv-raw applies to --format csv only"
    )
    assert not out.exists()


def _csv_cells(text: str) -> list[str]:
    return text.splitlines()[1].split(",")[:3]


def test_csv_raw_reaches_the_file_writer_and_the_default_neutralises(tmp_path):
    for settings, caption in ((RAW, "=SUM(A1:A9)"), (None, "'=SUM(A1:A9)")):
        out = tmp_path / f"rows-{caption[0]}.csv"
        with open_output(out, settings=settings) as output:
            output.begin(append=False)
            output.write([_row("a.jpg")])
        assert _csv_cells(out.read_text()) == ["a.jpg", "/data/a.jpg", caption]


def test_csv_raw_reaches_stdout_too(monkeypatch):
    for settings, caption in ((RAW, "=SUM(A1:A9)"), (OutputSettings(), "'=SUM(A1:A9)")):
        stdout = io.StringIO()
        monkeypatch.setattr("sys.stdout", stdout)
        output = open_output("-", "csv", settings=settings)
        output.begin(append=False)
        output.write([_row("a.jpg")])
        assert _csv_cells(stdout.getvalue()) == ["a.jpg", "/data/a.jpg", caption]


def test_an_output_made_directly_defaults_to_neutralised_cells(tmp_path):
    out = tmp_path / "rows.csv"
    with Output(out, "csv") as output:
        output.begin(append=False)
        output.write([_row("a.jpg")])
    assert _csv_cells(out.read_text())[2] == "'=SUM(A1:A9)"


def test_drop_after_begin_and_write_before_it_are_programming_errors_that_say_so(tmp_path):
    output = Output(tmp_path / "rows.jsonl", "jsonl")
    with pytest.raises(RuntimeError) as caught:
        output.write([_row("a.jpg")])
    assert str(caught.value) == "write() before begin()"
    with output:
        output.begin(append=False)
        with pytest.raises(RuntimeError) as caught:
            output.drop({"a.jpg"})
    assert str(caught.value) == "drop() before begin(): the writer holds the file"


def test_an_empty_file_has_nothing_to_lose_and_one_byte_has(tmp_path):
    out = tmp_path / "rows.jsonl"
    out.write_bytes(b"")
    assert Output(out, "jsonl").has_content({}) is False  # starting over loses nothing
    out.write_bytes(b"x")
    assert Output(out, "jsonl").has_content({}) is True
    assert Output(tmp_path / "new.jsonl", "jsonl").has_content({}) is False


def test_read_rows_reads_finished_jsonl_and_parquet_and_nothing_else(tmp_path):
    rows = [_row("a.jpg", "a red circle"), _row("b.jpg", "two blue stars")]
    for fmt in ("jsonl", "parquet"):
        if fmt == "parquet":
            pytest.importorskip("pyarrow")
        out = tmp_path / f"rows.{fmt}"
        with open_output(out) as output:
            output.begin(append=False)
            output.write(rows)
        assert list(read_rows(out, fmt)) == rows
    with pytest.raises(ValueError) as caught:
        read_rows(tmp_path / "rows.csv", "csv")
    assert str(caught.value) == "read_rows reads jsonl or parquet, not 'csv'"


def test_sidecars_opened_without_options_never_replace_an_existing_one(tmp_path):
    image, sidecar = tmp_path / "a.jpg", tmp_path / "a.txt"
    image.write_bytes(b"\xff\xd8")
    sidecar.write_text("my own notes\n")
    with open_output(tmp_path / "journal.jsonl", "txt") as output:
        output.begin(append=False)
        (written,) = output.write(
            [Row(str(image), str(image), "a cat", -1.0, "ok", None, 8, 6, "m")]
        )
    assert written.status == "error" and "--overwrite-sidecars" in written.error
    assert sidecar.read_text() == "my own notes\n"
