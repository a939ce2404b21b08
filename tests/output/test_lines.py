"""capbatch.output.lines (the CSV and JSONL writers) in one process: what a
resumed run reads back from a file it did not finish, the refusals of files
that are not ours, cells that spreadsheets would run, and write errors that
name the file. Written from the survivors of the output/ mutation run
(docs/testing.md)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from capbatch.errors import OutputError
from capbatch.output.lines import CsvWriter, JsonlWriter, read_jsonl_rows
from capbatch.output.settings import OutputSettings
from capbatch.rows import ROW_FIELDS, Row


def _refusal(call) -> str:
    """The one line of the OutputError that `call` raises."""
    with pytest.raises(OutputError) as caught:
        call()
    return str(caught.value)


def _row(key: str, caption: str | None = "a red circle", status: str = "ok") -> Row:
    error = None if status == "ok" else "not an image"
    return Row(key, f"/data/{key}", caption, -1.5, status, error, 8, 6, "m-1")


def _write(writer_class, out: Path, *rows: Row, **kwargs) -> None:
    writer = writer_class(out, append=False, **kwargs)
    writer.write(list(rows))
    writer.close()


# --------------------------------------------------------------------------- reading back


def test_jsonl_lines_that_are_not_rows_are_skipped_not_counted_as_done(tmp_path):
    out = tmp_path / "rows.jsonl"
    _write(JsonlWriter, out, _row("a.jpg"))
    with open(out, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"key": "b.jpg", "status": "pending"}) + "\n")  # not a status
        handle.write(json.dumps({"key": 7, "status": "ok"}) + "\n")  # not a key
        handle.write("a note someone added\n")
        handle.write("\n")
    with open(out, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(_row("c.jpg", status="error").to_record()) + "\n")
    # foreign lines beside real rows: resumable, and only the real rows are done
    assert JsonlWriter.read_done(out) == {"a.jpg": "ok", "c.jpg": "error"}


def test_jsonl_of_blank_lines_or_a_torn_first_row_resumes_from_nothing(tmp_path):
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    assert JsonlWriter.read_done(blank) == {}
    torn = tmp_path / "torn.jsonl"
    torn.write_text('{"key": "a.jp')  # a crash in the first row's write
    assert JsonlWriter.read_done(torn) == {}
    writer = JsonlWriter(torn, append=True)
    writer.write([_row("b.jpg")])
    writer.close()
    assert [row.key for row in read_jsonl_rows(torn)] == ["b.jpg"]  # the torn start cut off


def test_jsonl_that_is_someone_elses_file_is_refused_with_advice(tmp_path):
    out = tmp_path / "notes.jsonl"
    out.write_text('{"name": "x"}\n')
    assert _refusal(lambda: JsonlWriter.read_done(out)) == (
        f"{out} exists but is not a capbatch JSONL file (no line is a capbatch row); "
        "choose another output or start over with --overwrite"
    )
    partial = tmp_path / "partial.jsonl"
    partial.write_text('{"name": "x"')  # torn, and not the start of a row
    with pytest.raises(OutputError, match="is not a capbatch JSONL file"):
        JsonlWriter(partial, append=True)
    assert partial.read_text() == '{"name": "x"'  # left as it was


def test_csv_with_bytes_that_are_not_utf8_still_resumes(tmp_path):
    out = tmp_path / "rows.csv"
    _write(CsvWriter, out, _row("a.jpg"))
    with open(out, "ab") as handle:  # a row another tool wrote in Latin-1
        handle.write(b"caf\xe9.jpg,/data/caf\xe9.jpg,a cat,-1.0,ok,,8,6,m-1,,,,,,\r\n")
    done = CsvWriter.read_done(out)
    assert done == {"a.jpg": "ok", "caf\ufffd.jpg": "ok"}


def test_csv_with_a_broken_quote_mid_file_is_refused_and_one_at_the_end_is_torn(tmp_path):
    out = tmp_path / "rows.csv"
    _write(CsvWriter, out, _row("a.jpg"), _row("b.jpg"))
    good = out.read_bytes()
    out.write_bytes(good + b'"c.jpg"x,/p,cap,-1.0,ok,,8,6,m-1,,,,,,\r\n' + good.split(b"\n", 1)[1])
    assert _refusal(lambda: CsvWriter.read_done(out)).startswith(f"{out} is not a readable CSV: ")
    out.write_bytes(good + b'c.jpg,/p,"a caption cut off by a cra')
    assert CsvWriter.read_done(out) == {"a.jpg": "ok", "b.jpg": "ok"}
    writer = CsvWriter(out, append=True)  # the torn record is cut before appending
    writer.write([_row("c.jpg")])
    writer.close()
    assert out.read_bytes() == good + b"c.jpg,/data/c.jpg,a red circle,-1.5,ok,,8,6,m-1,,,,,,\r\n"


def test_csv_with_another_header_is_refused_naming_its_first_columns(tmp_path):
    out = tmp_path / "rows.csv"
    out.write_text("image,caption,score,when,who\nx.jpg,hi,1,now,me\n")
    assert _refusal(lambda: CsvWriter.read_done(out)) == (
        f"{out} exists but is not a capbatch CSV (header ['image', 'caption', 'score', "
        "'when']...); choose another output or start over"
    )
    started = tmp_path / "started.csv"
    started.write_text("image,cap")  # torn, but not our header's start
    assert _refusal(lambda: CsvWriter.read_done(started)) == (
        f"{started} exists but is not a capbatch CSV (no capbatch header); "
        "choose another output or start over"
    )


def test_a_raw_csv_key_starting_with_a_quote_reads_back_unchanged(tmp_path):
    out = tmp_path / "rows.csv"
    _write(CsvWriter, out, _row("'x.jpg"), settings=OutputSettings(csv_raw=True))
    assert CsvWriter.read_done(out) == {"'x.jpg": "ok"}
    neutralised = tmp_path / "safe.csv"
    _write(CsvWriter, neutralised, _row("'x.jpg"), _row("=y.jpg"))
    assert CsvWriter.read_done(neutralised) == {"'x.jpg": "ok", "=y.jpg": "ok"}


def test_read_jsonl_rows_gives_whole_rows_in_file_order_without_the_torn_tail(tmp_path):
    out = tmp_path / "rows.jsonl"
    _write(JsonlWriter, out, _row("b.jpg"), _row("caf\u00e9.jpg", status="error"))
    with open(out, "a", encoding="utf-8") as handle:
        handle.write('{"key": "torn.jpg", "pa')
    rows = list(read_jsonl_rows(out))
    assert rows == [_row("b.jpg"), _row("caf\u00e9.jpg", status="error")]


# --------------------------------------------------------------------------- writing


def test_jsonl_is_written_as_utf8_text_not_escapes(tmp_path):
    out = tmp_path / "rows.jsonl"
    _write(JsonlWriter, out, _row("caf\u00e9.jpg", caption="a caf\u00e9 \u2615"))
    line = out.read_bytes()
    assert b"caf\xc3\xa9.jpg" in line and b"\xe2\x98\x95" in line and b"\\u" not in line


def test_dropping_keys_keeps_the_other_rows_formula_cells_neutralised(tmp_path):
    out = tmp_path / "rows.csv"
    _write(CsvWriter, out, _row("a.jpg", caption="=1+1"), _row("b.jpg"), _row("c.jpg"))
    assert CsvWriter.drop_keys(out, {"b.jpg"}) == 1
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == ",".join(ROW_FIELDS)
    assert lines[1].startswith("a.jpg,/data/a.jpg,'=1+1,")  # still safe to open
    assert [line.split(",")[0] for line in lines[1:]] == ["a.jpg", "c.jpg"]
    assert CsvWriter.drop_keys(out, {"zzz.jpg"}) == 0
    assert CsvWriter.drop_keys(tmp_path / "missing.csv", {"a.jpg"}) == 0
    assert JsonlWriter.drop_keys(tmp_path / "missing.jsonl", {"a.jpg"}) == 0


def test_the_output_file_is_made_with_mode_644_and_its_folders(tmp_path):
    out = tmp_path / "new" / "deeper" / "rows.csv"
    old = os.umask(0o022)
    try:
        _write(CsvWriter, out, _row("a.jpg"))
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644


def test_a_link_planted_at_the_output_is_not_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    out = tmp_path / "rows.jsonl"
    out.symlink_to(victim)
    assert _refusal(lambda: JsonlWriter(out, append=False)).startswith(f"cannot write {out}: ")
    assert victim.read_text() == "keep me\n"


def test_closing_releases_the_file(tmp_path):
    before = len(os.listdir("/proc/self/fd"))
    writer = CsvWriter(tmp_path / "rows.csv", append=False)
    assert len(os.listdir("/proc/self/fd")) == before + 1
    writer.close()
    writer.close()  # twice is harmless
    assert len(os.listdir("/proc/self/fd")) == before


class _FailingHandle:
    """Stands in for the open file: the disk fills up on the next write or close."""

    def __init__(self, real) -> None:
        self.real, self.closed = real, False

    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self) -> None:
        self.real.close()
        raise OSError(errno.EIO, "Input/output error")


def test_write_and_close_errors_are_one_line_naming_the_output(tmp_path):
    out = tmp_path / "rows.csv"
    writer = CsvWriter(out, append=False)
    writer._handle = _FailingHandle(writer._handle)
    assert (
        _refusal(lambda: writer.write([_row("a.jpg")]))
        == f"cannot write {out}: No space left on device"
    )
    assert _refusal(lambda: writer.close()) == f"cannot write {out}: Input/output error"


def test_a_header_that_cannot_be_written_is_one_line_naming_the_output():
    full = Path("/dev/full")  # every write fails with ENOSPC
    if not os.access(full, os.W_OK):
        pytest.skip("/dev/full is not writable here")
    assert (
        _refusal(lambda: CsvWriter(full, append=False))
        == "cannot write /dev/full: No space left on device"
    )
