"""Reading a run's output back, as capbatch/report/rows.py and docs/report.md promise it:
CSV, JSONL and Parquet files and Ray shard folders, read by column name; every value
checked and converted (a value that cannot be one is None, not a crash); error rows
always carry a reason; and a line that cannot be parsed is counted, never fatal.
"""

from __future__ import annotations

import datetime
import json
import math
import sys
from pathlib import Path

import pytest

from capbatch.errors import MissingDependencyError, UsageError
from capbatch.report import rows as rows_module
from capbatch.report.rows import (
    EXTRA_VALUE_CHARS,
    ReportRow,
    RowStream,
    open_rows,
    to_report_row,
)
from tests.report.test_report import FIELDS, page_rows, record, write_csv


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in records), encoding="utf-8")
    return path


def write_parquet(path: Path, records: list[dict]) -> Path:
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def keys(stream: RowStream) -> list[str]:
    return [row.key for row in stream]


# -- one record -> one row ----------------------------------------------------------------


def test_every_known_column_is_read_into_its_field():
    row = to_report_row(
        {"key": "k.png", "path": "/data/k.png", "caption": "a red square", "score": "-0.25",
         "status": "ok", "error": "", "width": "640", "height": "480", "model_id": "m-1",
         "in_domain": "yes", "domain_distance": "1.5", "truncated": "no", "repeated": "t",
         "attention": "maps/k.png"},
        index=7,
    )  # fmt: skip
    assert row == ReportRow(
        index=7, key="k.png", path="/data/k.png", caption="a red square", score=-0.25,
        status="ok", error=None, width=640, height=480, model_id="m-1", in_domain=True,
        domain_distance=1.5, truncated=False, repeated=True, attention="maps/k.png", extra={},
    )  # fmt: skip


def test_a_row_without_a_key_is_named_by_its_path_else_by_its_position():
    assert to_report_row({"path": "photos/a.png"}, index=4).key == "photos/a.png"
    # Positions are shown 1-based: the fifth row of the output is "row 5".
    assert to_report_row({"caption": "x"}, index=4).key == "row 5"
    assert to_report_row({"key": "", "path": ""}, index=0).key == "row 1"


def test_values_that_are_not_text_are_shown_as_text():
    # JSONL and Parquet carry numbers where CSV carries text: a key of 123 is "123".
    row = to_report_row({"key": 123, "path": 4.5, "caption": "x", "model_id": 7}, index=0)
    assert (row.key, row.path, row.model_id) == ("123", "4.5", "7")
    assert to_report_row({"key": None}, index=2).key == "row 3"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True), (False, False), ("TRUE", True), (" y ", True), ("1", True),
        ("No", False), ("f", False), ("0", False), ("maybe", None), ("", None), (None, None),
        (1, True), (0, False), (2, True), (1.0, True), (0.0, False), (float("nan"), None),
    ],
)  # fmt: skip
def test_flags_accept_the_usual_spellings_and_numbers_and_nothing_else(value, expected):
    row = to_report_row({"key": "a", "in_domain": value, "truncated": value}, index=0)
    assert row.in_domain is expected and row.truncated is expected


def test_a_nan_flag_from_jsonl_is_unknown_not_true(tmp_path):
    # JSON has no NaN, but Python's json writes and reads it: NaN is "not known".
    out = tmp_path / "run.jsonl"
    out.write_text('{"key": "a", "in_domain": NaN, "repeated": 1.0, "truncated": 0}\n')
    (row,) = open_rows(out)
    assert (row.in_domain, row.repeated, row.truncated) == (None, True, False)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("-0.5", -0.5), (2, 2.0), ("", None), (None, None), ("nan", None), ("inf", None),
     ("high", None), (True, None), (False, None), ([1], None)],
)  # fmt: skip
def test_scores_are_finite_numbers_or_nothing(value, expected):
    assert to_report_row({"key": "a", "score": value}, index=0).score == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("640", 640), (480.0, 480), ("12.5", None), ("wide", None), (True, None), ("", None)],
)
def test_sizes_are_whole_numbers_or_nothing(value, expected):
    row = to_report_row({"key": "a", "width": value, "height": value}, index=0)
    assert (row.width, row.height) == (expected, expected)


# -- status and error ---------------------------------------------------------------------


def test_a_row_without_a_status_is_an_error_exactly_when_it_names_one():
    failed = to_report_row({"key": "a", "error": "truncated PNG"}, index=0)
    assert (failed.status, failed.ok, failed.error) == ("error", False, "truncated PNG")
    fine = to_report_row({"key": "b", "caption": "x", "error": ""}, index=1)
    assert (fine.status, fine.ok, fine.error) == ("ok", True, None)


@pytest.mark.parametrize(
    ("status", "error", "reason"),
    [
        ("skipped", None, "status 'skipped'"),  # any status but ok is an error: says which
        ("OK", "", "status 'OK'"),
        ("error", None, "error (no reason given)"),
        ("skipped", "too big", "too big"),  # a given reason wins
    ],
)
def test_a_status_other_than_ok_is_an_error_with_a_reason(status, error, reason):
    row = to_report_row({"key": "a", "status": status, "error": error}, index=0)
    assert (row.status, row.ok, row.error) == ("error", False, reason)


# -- columns this version does not know ---------------------------------------------------


def test_unknown_columns_are_kept_as_text_and_bookkeeping_columns_are_hidden():
    when = datetime.datetime(2024, 1, 2, 3, 4, 5)
    row = to_report_row(
        {"key": "a", "lang": "en", "tries": 3, "tags": ["x", "y"], "meta": {"a": 1},
         "taken": when, "empty": "", "none": None, "long": "z" * (EXTRA_VALUE_CHARS + 50),
         "shard": 2, "end": False, "count": 9, "__index_level_0__": 4},
        index=0,
    )  # fmt: skip
    assert row.extra == {
        "lang": "en",
        "tries": "3",
        "tags": '["x", "y"]',
        "meta": '{"a": 1}',
        "taken": '"2024-01-02 03:04:05"',  # what JSON cannot hold is shown as its text
        "long": "z" * EXTRA_VALUE_CHARS,  # cut: a column is not a place for a file
    }
    assert all(isinstance(value, str) for value in row.extra.values())


def test_a_parquet_timestamp_column_is_shown_as_text(tmp_path):
    when = datetime.datetime(2023, 5, 6, 7, 8, 9)
    out = write_parquet(tmp_path / "run.parquet", [{"key": "a.png", "taken": when, "n": 2}])
    (row,) = open_rows(out)
    assert row.extra == {"taken": '"2023-05-06 07:08:09"', "n": "2"}


# -- CSV ----------------------------------------------------------------------------------


def test_csv_cells_keep_their_embedded_line_breaks(tmp_path):
    # The csv module must see the file's own line ends to keep "\r\n" inside a quoted cell.
    caption = "line one\r\nline two"
    out = write_csv(tmp_path / "run.csv", [record("a.png", caption=caption)])
    (row,) = open_rows(out)
    assert row.caption == caption


def test_bytes_that_are_not_utf8_are_replaced_not_fatal(tmp_path):
    csv_out = tmp_path / "run.csv"
    csv_out.write_bytes(b"key,caption,status\na.png,caf\xe9 au lait,ok\nb.png,tea,ok\n")
    jsonl_out = tmp_path / "run.jsonl"
    jsonl_out.write_bytes(
        b'{"key": "a.png", "caption": "caf\xe9 au lait"}\n{"key": "b.png", "caption": "tea"}\n'
    )
    for out in (csv_out, jsonl_out):
        stream = open_rows(out)
        assert [(r.key, r.caption) for r in stream] == [
            ("a.png", "caf\ufffd au lait"),
            ("b.png", "tea"),
        ]
        assert stream.unreadable == 0


def test_csv_lines_with_more_fields_than_the_header_are_counted_and_skipped(tmp_path):
    out = tmp_path / "run.csv"
    out.write_text(
        "key,caption,status\n"
        "a.png,one,ok\n"
        "b.png,two,ok,surplus\n"
        "c.png,three,ok\n"
        "d.png,four,ok,x,y\n"
        "e.png,five,ok\n",
        encoding="utf-8",
    )
    stream = open_rows(out)
    assert keys(stream) == ["a.png", "c.png", "e.png"]
    assert stream.unreadable == 2
    # Each pass counts afresh: reading twice does not double the count.
    assert keys(stream) == ["a.png", "c.png", "e.png"] and stream.unreadable == 2


def test_a_csv_with_a_very_long_caption_is_read_whole(tmp_path):
    caption = "word " * 40_000  # 200 kB: past the csv module's default field limit
    out = write_csv(tmp_path / "run.csv", [record("a.png", caption=caption.strip())])
    (row,) = open_rows(out)
    assert row.caption == caption.strip()


# -- JSONL --------------------------------------------------------------------------------


def test_jsonl_blank_lines_are_ignored_and_damaged_lines_counted(tmp_path):
    out = tmp_path / "run.jsonl"
    out.write_text(
        '{"key": "a.png"}\n'
        "\n"
        "   \n"
        '{"key": "b.png", "capt\n'  # not JSON
        "[1, 2]\n"  # JSON, but not a row
        '{"key": "c.png"}\n'
        "not json either\n"
        '"a string"\n'  # JSON, not a row
        '{"key": "d.png"}\n',
        encoding="utf-8",
    )
    stream = open_rows(out)
    assert keys(stream) == ["a.png", "c.png", "d.png"]
    assert stream.unreadable == 4


def test_the_count_of_damaged_lines_reaches_the_page(tmp_path):
    out = tmp_path / "run.jsonl"
    out.write_text('42\n{"key": "a.png"}\n{"key\n[]\n', encoding="utf-8")
    from capbatch.report import write_report

    result = write_report(out, tmp_path / "r.html")
    assert [row["key"] for row in page_rows(result.out)] == ["a.png"]
    assert 'id="count-unreadable">3 (skipped)</dd>' in result.out.read_text(encoding="utf-8")


# -- which format -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("run.csv", "csv"), ("run.JSONL", "jsonl"), ("run.NDJSON", "jsonl"), ("run.jsonl", "jsonl")],
)
def test_the_suffix_names_the_format_even_for_an_empty_output(tmp_path, name, fmt):
    # An empty output (a run that has written nothing yet) is still its format.
    (tmp_path / name).write_bytes(b"")
    stream = open_rows(tmp_path / name)
    assert (stream.fmt, stream.files, stream.source) == (
        fmt,
        (tmp_path / name,),
        tmp_path / name,
    )
    assert list(stream) == []


def test_a_parquet_suffix_in_capitals_is_parquet(tmp_path):
    out = write_parquet(tmp_path / "run.PARQUET", [{"key": "a.png", "status": "ok"}])
    stream = open_rows(out)
    assert stream.fmt == "parquet" and keys(stream) == ["a.png"]


@pytest.mark.parametrize(
    ("head", "fmt", "found"),
    [
        (b'{"key": "a.png"}\n', "jsonl", ["a.png"]),
        (b' \t\r\n\n{"key": "a.png"}\n', "jsonl", ["a.png"]),  # leading blank space
        (b"key,caption\na.png,x\n", "csv", ["a.png"]),
        (b"", "csv", []),  # an empty run
        (b"key,caption\n", "csv", []),  # a header alone: no row yet
    ],
)
def test_an_output_without_a_known_suffix_is_recognised_by_its_first_bytes(
    tmp_path, head, fmt, found
):
    out = tmp_path / "run.out"
    out.write_bytes(head)
    stream = open_rows(out)
    assert (stream.fmt, keys(stream)) == (fmt, found)


@pytest.mark.parametrize("head", [b"[1]\n", b"# notes\n\nsome text\n", b'{"event": 1}\n'])
def test_a_file_without_a_key_column_is_not_a_run_output(tmp_path, head):
    out = tmp_path / "notes.out"
    out.write_bytes(head)
    with pytest.raises(UsageError, match=r"is not a capbatch run output \(no key column\)"):
        open_rows(out)


def test_a_byte_order_mark_does_not_hide_a_jsonl_output(tmp_path):
    # Editors on Windows put a UTF-8 BOM before the first "{": still JSONL, not CSV.
    out = tmp_path / "run.out"
    out.write_bytes(b'\xef\xbb\xbf\r\n{"key": "a.png"}\n{"key": "b.png"}\n')
    assert open_rows(out).fmt == "jsonl"


def test_a_parquet_output_is_recognised_by_its_magic_bytes(tmp_path):
    named = write_parquet(tmp_path / "run.parquet", [{"key": "a.png"}, {"key": "b.png"}])
    out = tmp_path / "captions.out"
    out.write_bytes(named.read_bytes())
    stream = open_rows(out)
    assert stream.fmt == "parquet" and keys(stream) == ["a.png", "b.png"]


def test_an_output_that_cannot_be_read_says_why(tmp_path, monkeypatch):
    out = tmp_path / "run.out"
    out.write_text("key\n")

    def refuse(*args, **kwargs):  # the tests run as root: no file mode makes a file unreadable
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rows_module, "open", refuse, raising=False)
    with pytest.raises(UsageError) as caught:
        open_rows(out)
    assert str(caught.value) == f"cannot read {out}: Permission denied"


def test_a_missing_output_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError) as caught:
        open_rows(tmp_path / "gone.csv")
    assert str(caught.value) == f"no such output file: {tmp_path / 'gone.csv'}"


def test_a_file_that_is_not_parquet_says_so(tmp_path):
    pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "run.parquet"
    out.write_bytes(b"PAR1 but nothing else")
    with pytest.raises(UsageError) as caught:
        list(open_rows(out))
    assert str(caught.value).startswith(f"{out} is not a readable Parquet file: ")


def test_parquet_without_pyarrow_names_the_extra_to_install(tmp_path, monkeypatch):
    out = tmp_path / "run.parquet"
    out.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import fails as if absent
    with pytest.raises(MissingDependencyError) as caught:
        list(open_rows(out))
    assert str(caught.value) == (
        "reading Parquet output needs pyarrow: pip install 'capbatch[parquet]'"
    )


def test_parquet_rows_are_read_in_order_across_batches(tmp_path):
    records = [
        {"key": f"{i:04d}.png", "score": -i / 10} for i in range(rows_module.PARQUET_BATCH_ROWS + 5)
    ]
    stream = open_rows(write_parquet(tmp_path / "run.parquet", records))
    rows = list(stream)
    assert [r.key for r in rows] == [r["key"] for r in records]
    assert [r.index for r in rows] == list(range(len(records)))
    assert math.isclose(rows[-1].score, -(len(records) - 1) / 10)


# -- Ray shard folders --------------------------------------------------------------------


def shard_record(shard: int, key: str) -> dict:
    return {"shard": shard, "end": False, "count": None, **record(key)}


def end_marker(shard: int, count: int) -> dict:
    return {"shard": shard, "end": True, "count": count, "key": "", "path": None}


def test_a_folder_of_parquet_shards_is_read_in_shard_order(tmp_path):
    shards = tmp_path / "out.shards"
    shards.mkdir()
    write_parquet(shards / "shard-00001.parquet", [shard_record(1, "c"), end_marker(1, 1)])
    write_parquet(shards / "shard-00000.parquet", [shard_record(0, "a"), shard_record(0, "b"), end_marker(0, 2)])  # fmt: skip
    (shards / "shard-00002.jsonl").write_text('{"key": "ignored"}\n')  # Parquet shards win
    stream = open_rows(shards)
    assert (stream.source, stream.fmt) == (shards, "parquet")
    assert stream.files == (shards / "shard-00000.parquet", shards / "shard-00001.parquet")
    rows = list(stream)
    assert [(r.index, r.key) for r in rows] == [(0, "a"), (1, "b"), (2, "c")]
    assert all(r.extra == {} for r in rows)  # shard bookkeeping is not row data


def test_ray_part_files_with_end_markers_between_rows_keep_every_row(tmp_path):
    # A Ray stage writes batches that can hold several shards: markers fall mid-file.
    parts = tmp_path / "out.parts"
    parts.mkdir()
    write_parquet(
        parts / "part-00000.parquet",
        [shard_record(0, "a"), end_marker(0, 1), shard_record(1, "b"), shard_record(1, "c"),
         end_marker(1, 2)],
    )  # fmt: skip
    write_parquet(parts / "part-00001.parquet", [end_marker(2, 1), shard_record(2, "d")])
    stream = open_rows(parts)
    assert stream.fmt == "parquet"
    assert [(r.index, r.key) for r in stream] == [(0, "a"), (1, "b"), (2, "c"), (3, "d")]


def test_jsonl_shards_skip_their_end_markers_wherever_they_are(tmp_path):
    shards = tmp_path / "out.shards"
    shards.mkdir()
    write_jsonl(shards / "shard-00000.jsonl", [shard_record(0, "a"), end_marker(0, 1), shard_record(0, "b")])  # fmt: skip
    write_jsonl(shards / "shard-00001.jsonl", [shard_record(1, "c"), end_marker(1, 1)])
    stream = open_rows(shards)
    assert stream.fmt == "jsonl" and keys(stream) == ["a", "b", "c"]


def test_a_folder_without_shards_says_what_to_give_instead(tmp_path):
    (tmp_path / "run.csv").write_text("key\n")
    with pytest.raises(UsageError) as caught:
        open_rows(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path} is a folder without capbatch shards (shard-*.jsonl, shard-*.parquet "
        "or part-*.parquet); give the merged CSV, JSONL or Parquet file instead"
    )


def test_every_format_reads_the_same_rows(tmp_path):
    records = [
        record("a.png", score=-0.25, in_domain=True),
        record("b.png", caption=None, score=None, status="error", error="truncated PNG", in_domain=False),
        record("c.png", width=12, height=34, path="photos/c.png", in_domain=None),
    ]  # fmt: skip
    fields = [*FIELDS, "in_domain"]
    outputs = [
        write_csv(tmp_path / "run.csv", records, fields),
        write_jsonl(tmp_path / "run.jsonl", records),
        write_parquet(tmp_path / "run.parquet", records),
    ]
    seen = [list(open_rows(out)) for out in outputs]
    assert seen[0] == seen[1] == seen[2]
    assert [(r.path, r.width, r.height, r.in_domain, r.error) for r in seen[0]] == [
        ("a.png", 40, 30, True, None),
        ("b.png", 40, 30, False, "truncated PNG"),
        ("photos/c.png", 12, 34, None, None),
    ]


def test_a_jsonl_output_with_a_byte_order_mark_keeps_its_first_row(tmp_path):
    # Found by this file's author: the BOM was sniffed past, then read as text.
    out = tmp_path / "run.jsonl"
    out.write_bytes(b'\xef\xbb\xbf{"key": "a.png"}\n{"key": "b.png"}\n')
    stream = open_rows(out)
    assert [r.key for r in stream] == ["a.png", "b.png"] and stream.unreadable == 0


def test_a_csv_output_with_a_byte_order_mark_keeps_its_key_column(tmp_path):
    out = tmp_path / "run.csv"  # as a spreadsheet saves it again
    out.write_bytes(b"\xef\xbb\xbfkey,caption,status\na.png,x,ok\n")
    (row,) = open_rows(out)
    assert (row.key, row.extra) == ("a.png", {})
