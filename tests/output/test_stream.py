"""`--out -` (capbatch.output.stream): what reaches the pipe, batch by batch, and
what is refused. Written from the survivors of the output/ mutation run
(docs/testing.md)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from capbatch.errors import OutputError, UsageError
from capbatch.output.stream import StreamOutput, is_stdout
from tests.output.test_round_trips import row


def test_formats_other_than_jsonl_and_csv_are_refused_by_name():
    with pytest.raises(UsageError) as caught:
        StreamOutput("parquet", io.StringIO())
    assert str(caught.value) == "--out - streams jsonl or csv, not parquet"
    assert StreamOutput(None, io.StringIO()).fmt == "jsonl"  # the default
    assert StreamOutput("CSV", io.StringIO()).fmt == "csv"


def test_jsonl_rows_are_emitted_and_flushed_per_write():
    class Recording(io.StringIO):
        flushes = 0

        def flush(self):
            Recording.flushes += 1
            super().flush()

    stream = Recording()
    out = StreamOutput("jsonl", stream)
    with pytest.raises(RuntimeError, match=r"^write\(\) before begin\(\)$"):
        out.write([row("a.png")])
    out.begin(append=False)
    assert stream.getvalue() == "" and Recording.flushes == 0  # JSONL has no header
    assert out.write([row("a.png"), row("b.png", caption=None, status="error", error="bad")])
    first = Recording.flushes
    out.write([])  # an empty batch writes and flushes nothing
    out.write([row("c.png")])
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["key"] for r in lines] == ["a.png", "b.png", "c.png"]
    assert lines[1]["status"] == "error" and lines[1]["error"] == "bad"
    assert first == 1 and Recording.flushes == 2


def test_csv_header_once_and_cells_neutralised_unless_raw():
    for raw, expected in ((False, "'=1+2"), (True, "=1+2")):
        stream = io.StringIO()
        out = StreamOutput("csv", stream, csv_raw=raw)
        out.begin(append=False)
        out.begin(append=True)  # a second begin writes no second header
        out.write([row("a.png", caption="=1+2")])
        rows = list(csv.DictReader(io.StringIO(stream.getvalue())))
        assert [r["caption"] for r in rows] == [expected]
        assert stream.getvalue().count("key,path,caption") == 1


def test_a_closed_pipe_is_one_output_error_and_nothing_is_kept():
    class Closed(io.StringIO):
        def write(self, text):
            raise BrokenPipeError

    out = StreamOutput("jsonl", Closed())
    out.begin(append=False)
    with pytest.raises(OutputError, match="^stdout was closed by the reading program$"):
        out.write([row("a.png")])
    assert out.done() == {} and out.drop({"a.png"}) == 0 and not out.has_content({"a.png"})


def test_only_a_lone_dash_is_stdout():
    assert is_stdout("-") and is_stdout(Path("-"))
    assert not is_stdout(None) and not is_stdout("./-") and not is_stdout("--")
