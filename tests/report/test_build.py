"""The page write_report builds, as capbatch/report/build.py and docs/report.md promise it:
the header (title, output, when it was written and when the report was made), one JSON
record per row with exactly the row's known values, thumbnails found by path then key
and written in row order with at most 4 x workers in flight, a Content-Security-Policy
that names the page's own script and style by hash, and a page that is whole or absent.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from capbatch.attention_maps import save_attention_map
from capbatch.errors import OutputError
from capbatch.output import durable
from capbatch.report import build, images, write_report
from capbatch.report.build import TEMPLATES, ReportOptions, _page_context, _RowWriter
from capbatch.report.rows import RowStream, open_rows
from capbatch.report.summary import RunSummary
from tests.io_fixtures import BLUE, GREEN, RED, encode, solid
from tests.report.test_report import FIELDS, decode_uri, mean_colour, page_rows, record, write_csv

FLAGS = ["in_domain", "domain_distance", "truncated", "repeated"]


def page_text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def fact(page: Path, term: str) -> str:
    """The header's <dd> for a <dt>, unescaped."""
    match = re.search(rf"<dt>{re.escape(term)}</dt><dd[^>]*>(.*?)</dd>", page_text(page), re.S)
    assert match, f"no {term!r} in the header"
    return html.unescape(" ".join(match.group(1).split()))


def sha256_source(text: str) -> str:
    return (
        "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"
    )


def brightest(uri: str) -> int:
    """0, 1 or 2: which channel of the thumbnail is the strongest."""
    colour = mean_colour(decode_uri(uri))
    return colour.index(max(colour))


@pytest.fixture
def far_from_utc():
    """Local time 5:30 ahead of UTC, so a time shown "UTC" must really be UTC."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "XYZ-05:30"
    time.tzset()
    yield
    if saved is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = saved
    time.tzset()


# -- the header ---------------------------------------------------------------------------


def test_the_title_is_the_output_name_unless_given(tmp_path):
    run = write_csv(tmp_path / "run.csv", [record("a.png")])
    page = write_report(run, tmp_path / "r.html").out
    assert re.findall(r"<title>(.*?)</title>|<h1>(.*?)</h1>", page_text(page)) == [
        ("capbatch report: run.csv", ""),
        ("", "capbatch report: run.csv"),
    ]
    titled = write_report(run, tmp_path / "t.html", title="Run <7> & co").out
    assert re.findall(r"<title>(.*?)</title>", page_text(titled)) == ["Run &lt;7&gt; &amp; co"]
    assert re.findall(r"<h1>(.*?)</h1>", page_text(titled)) == ["Run &lt;7&gt; &amp; co"]


def test_the_header_names_the_output_and_its_format(tmp_path):
    run = tmp_path / "run.jsonl"
    run.write_text(json.dumps(record("a.png")) + "\n")
    page = write_report(run, tmp_path / "r.html").out
    assert fact(page, "output") == f"<code>{run}</code> (jsonl)"


def test_the_header_says_when_the_output_was_written_in_utc(tmp_path, far_from_utc):
    run = write_csv(tmp_path / "run.csv", [record("a.png")])
    written = datetime(2021, 3, 4, 5, 6, 7, tzinfo=timezone.utc).timestamp()
    os.utime(run, (written, written))
    page = write_report(run, tmp_path / "r.html").out
    assert fact(page, "output written") == "2021-03-04 05:06 UTC"


def test_a_shards_folder_was_written_when_its_last_shard_was(tmp_path, far_from_utc):
    shards = tmp_path / "out.shards"
    shards.mkdir()
    for index, day in enumerate((1, 2, 9)):
        shard = shards / f"shard-{index:05d}.jsonl"
        shard.write_text(json.dumps(record(f"{index}.png")) + "\n")
        stamp = datetime(2022, 7, day, 23, 45, tzinfo=timezone.utc).timestamp()
        os.utime(shard, (stamp, stamp))
    page = write_report(shards, tmp_path / "r.html").out
    assert fact(page, "output written") == "2022-07-09 23:45 UTC"


def test_the_header_says_when_the_report_was_made_in_utc(tmp_path, far_from_utc):
    run = write_csv(tmp_path / "run.csv", [record("a.png")])
    before = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = write_report(run, tmp_path / "r.html").out
    after = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    assert fact(page, "report made") in {before, after}


def test_an_output_whose_files_cannot_be_dated_has_no_written_time(tmp_path):
    rows = RowStream(tmp_path / "gone.csv", "csv", ())
    context = _page_context(rows, RunSummary(), ReportOptions())
    assert context["finished"] is None
    gone = RowStream(tmp_path / "gone.csv", "csv", (tmp_path / "gone.csv",))
    assert _page_context(gone, RunSummary(), ReportOptions())["finished"] is None


def test_template_tags_leave_no_blank_lines_or_stray_indentation(tmp_path):
    records = [
        record("a.png", in_domain="true", truncated="false", repeated="false"),
        record("b.png", status="error", caption="", error="bad 1"),
    ]
    run = write_csv(tmp_path / "run.csv", records, [*FIELDS, *FLAGS])
    text = page_text(write_report(run, tmp_path / "r.html").out)
    markup = text[text.index("<header") : text.index('<dialog id="detail"')]
    # The template's own blank lines part its sections; none may appear inside one.
    for start, end in (("<header", "</header>"), ("<nav", "</nav>"), ("<details", "</details>")):
        section = markup[markup.index(start) : markup.index(end)]
        assert re.findall(r"\n[ \t]*\n", section) == [], start
    # Tags start where the template indents them, not where its {% %} lines were.
    assert "\n    <div><dt>rows</dt>" in markup and '\n  <section id="reasons">\n' in markup
    assert "\n</header>\n" in markup
    assert "\n    <div><dt>score</dt><dd>mean -0.500, from -0.500 to -0.500</dd></div>\n" in markup


# -- safety -------------------------------------------------------------------------------


def test_the_policy_allows_exactly_the_pages_own_script_and_style(tmp_path):
    run = write_csv(tmp_path / "run.csv", [record("a.png")])
    text = page_text(write_report(run, tmp_path / "r.html").out)
    style = re.search(r"<style>(.*?)</style>", text, re.S).group(1)
    scripts = re.findall(r"<script>(.*?)</script>", text, re.S)
    assert style == (TEMPLATES / "report.css").read_text(encoding="utf-8")
    assert scripts == [(TEMPLATES / "report.js").read_text(encoding="utf-8")]
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', text).group(1)
    assert html.unescape(policy) == (
        f"default-src 'none'; img-src data:; style-src {sha256_source(style)}; "
        f"script-src {sha256_source(scripts[0])}; base-uri 'none'; form-action 'none'"
    )


def test_text_outside_ascii_is_written_as_is(tmp_path):
    caption = "café ☕ naïve 猫"
    run = write_csv(tmp_path / "run.csv", [record("ü.png", caption=caption)])
    page = write_report(run, tmp_path / "r.html").out
    block = re.search(r'id="report-rows">(.*?)</script>', page_text(page), re.S).group(1)
    assert f'"key":"ü.png","path":"ü.png","caption":"{caption}"' in block
    assert page_rows(page)[0]["caption"] == caption


# -- one record per row -------------------------------------------------------------------


def test_each_row_carries_exactly_its_known_values(tmp_path):
    records = [
        record("a.png", caption="two dots", score=-0.5, model_id="m-2", in_domain="false",
               domain_distance="0.75", truncated="true", repeated="false", lang="en"),
        record("b.png", caption="", score="", status="error", error="image too large: 9 > 2",
               width="", height="", model_id=""),
        record("c.png", path="", caption="x", score="", width="", height="", model_id=""),
    ]  # fmt: skip
    run = write_csv(tmp_path / "run.csv", records, [*FIELDS, *FLAGS, "lang"])
    rows = page_rows(write_report(run, tmp_path / "r.html").out)
    assert rows == [
        {"i": 0, "key": "a.png", "path": "a.png", "caption": "two dots", "score": -0.5,
         "ok": True, "width": 40, "height": 30, "model": "m-2", "inDomain": False,
         "distance": 0.75, "truncated": True, "repeated": False, "extra": {"lang": "en"},
         "imgError": "image not found"},
        {"i": 1, "key": "b.png", "path": "b.png", "ok": False,
         "error": "image too large: 9 > 2", "reason": 0},
        {"i": 2, "key": "c.png", "caption": "x", "ok": True, "imgError": "image not found"},
    ]  # fmt: skip


# -- thumbnails ---------------------------------------------------------------------------


def test_a_rows_image_is_its_path_else_its_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, colour in (("red.png", RED), ("green.png", GREEN), ("blue.png", BLUE)):
        (tmp_path / name).write_bytes(encode(solid(colour, (24, 24)), "PNG"))
    records = [
        record("blue.png", path="red.png"),  # both name a file: the path wins
        record("green.png", path=""),  # no path: the key
        record("blue.png", path="missing.png"),  # a path that is not there: the key
    ]
    result = write_report(write_csv(tmp_path / "run.csv", records), tmp_path / "r.html",
                          thumb_size=32, workers=1)  # fmt: skip
    assert [brightest(row["img"]) for row in page_rows(result.out)] == [0, 1, 2]
    assert result.thumbnails == 3


def test_images_are_found_beside_the_output_file_or_inside_the_shards_folder(tmp_path, monkeypatch):
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    out = tmp_path / "out"
    (out / "photos").mkdir(parents=True)
    (out / "photos" / "red.png").write_bytes(encode(solid(RED, (24, 24)), "PNG"))
    run = write_csv(out / "run.csv", [record("photos/red.png")])
    rows = page_rows(write_report(run, tmp_path / "r.html", thumb_size=32).out)
    assert brightest(rows[0]["img"]) == 0

    shards = tmp_path / "run.shards"
    shards.mkdir()
    (shards / "blue.png").write_bytes(encode(solid(BLUE, (24, 24)), "PNG"))
    (shards / "shard-00000.jsonl").write_text(json.dumps(record("blue.png")) + "\n")
    rows = page_rows(write_report(shards, tmp_path / "s.html", thumb_size=32).out)
    assert brightest(rows[0]["img"]) == 2


def test_an_image_that_cannot_be_decoded_says_why_on_its_card(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "text.png").write_bytes(b"not an image at all")
    (tmp_path / "red.png").write_bytes(encode(solid(RED, (24, 24)), "PNG"))
    with pytest.raises(Exception) as decoding:
        images.thumbnail_uri(b"not an image at all", 32)
    run = write_csv(tmp_path / "run.csv", [record("text.png"), record("red.png")])
    result = write_report(run, tmp_path / "r.html", thumb_size=32)
    rows = page_rows(result.out)
    assert rows[0]["imgError"] == str(decoding.value) and "img" not in rows[0]
    assert brightest(rows[1]["img"]) == 0 and result.thumbnails == 1


def test_a_failure_without_a_message_is_named_by_its_type(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.png").write_bytes(b"x")

    def broken(data, size):
        raise RuntimeError()

    monkeypatch.setattr(build, "thumbnail_uri", broken)
    rows = page_rows(write_report(write_csv(tmp_path / "run.csv", [record("a.png")]), tmp_path / "r.html").out)  # fmt: skip
    assert rows[0]["imgError"] == "RuntimeError"


def test_thumbnails_are_made_by_the_given_number_of_named_threads(tmp_path, monkeypatch):
    seen: list[tuple] = []

    class Recording(ThreadPoolExecutor):
        def __init__(self, max_workers=None, thread_name_prefix="", **kwargs):
            seen.append((max_workers, thread_name_prefix))
            super().__init__(max_workers, thread_name_prefix, **kwargs)

    monkeypatch.setattr(build, "ThreadPoolExecutor", Recording)
    monkeypatch.setattr(build, "cpu_thread_count", lambda: 5)
    run = write_csv(tmp_path / "run.csv", [record("a.png")])
    write_report(run, tmp_path / "r.html", workers=3)
    write_report(run, tmp_path / "r.html")  # default: one per usable core
    assert seen == [(3, "report-thumb"), (5, "report-thumb")]


class CountingRows(RowStream):
    """Rows that note how many the writer has taken, and when it has taken them all."""

    def start(self) -> CountingRows:
        self.taken = 0
        self.reached = {}  # count -> Event, set once that many rows were taken
        self.exhausted = threading.Event()
        return self

    def when_taken(self, count: int) -> threading.Event:
        return self.reached.setdefault(count, threading.Event())

    def __iter__(self):
        for row in super().__iter__():
            self.taken += 1
            self.when_taken(self.taken).set()
            yield row
        self.exhausted.set()


def counting_rows(tmp_path: Path, records: list[dict]) -> CountingRows:
    run = write_csv(tmp_path / "run.csv", records)
    opened = open_rows(run)
    return CountingRows(opened.source, opened.fmt, opened.files).start()


def write_rows(rows: CountingRows, workers: int) -> list[tuple[int, str]]:
    """(rows taken so far, chunk) per chunk the writer hands to the page."""
    summary = RunSummary()
    for row in rows:
        summary.add(row)
    rows.start()
    writer = _RowWriter(rows, summary, ReportOptions(workers=workers), rows.source.parent)
    return [(rows.taken, str(chunk)) for chunk in writer.chunks()]


def fake_thumbnails(monkeypatch, wait_for) -> None:
    """Thumbnails that are the file's name; the first row's waits for an event."""

    def thumbnail(data: bytes, size: int) -> str:
        name = data.decode()
        if name.endswith("000.png"):
            wait_for().wait(10)
        return "data:image/webp;base64," + Path(name).name

    monkeypatch.setattr(build, "read_file", lambda path: path.encode())
    monkeypatch.setattr(build, "thumbnail_uri", thumbnail)


def test_up_to_four_thumbnails_per_worker_are_in_flight_while_the_first_is_slow(
    tmp_path, monkeypatch
):
    for index in range(10):
        (tmp_path / f"{index:03d}.png").write_bytes(b"")
    rows = counting_rows(tmp_path, [record(str(tmp_path / f"{i:03d}.png")) for i in range(10)])
    # The first thumbnail finishes only once 4 rows (4 x 1 worker) have been taken.
    fake_thumbnails(monkeypatch, lambda: rows.when_taken(4))
    written = write_rows(rows, workers=1)
    assert written[0][0] == 4  # the window filled, then waited for the first row
    assert all(taken - done <= 4 for done, (taken, _) in enumerate(written))
    chunks = [chunk for _, chunk in written]
    payloads = json.loads("[" + "".join(chunks) + "]")
    assert [p["img"] for p in payloads] == [
        f"data:image/webp;base64,{i:03d}.png" for i in range(10)
    ]


def test_rows_without_a_thumbnail_are_written_at_once(tmp_path):
    records = [record(f"{i}.png", status="error", error=f"bad {i}") for i in range(6)]
    rows = counting_rows(tmp_path, records)
    written = write_rows(rows, workers=1)
    assert [taken for taken, _ in written] == [1, 2, 3, 4, 5, 6]
    assert [json.loads(chunk.lstrip(","))["i"] for _, chunk in written] == list(range(6))


def test_rows_still_in_flight_when_reading_ends_are_written_as_one_json_list(tmp_path, monkeypatch):
    for index in range(2):
        (tmp_path / f"{index:03d}.png").write_bytes(b"")
    rows = counting_rows(tmp_path, [record(str(tmp_path / f"{i:03d}.png")) for i in range(2)])
    fake_thumbnails(monkeypatch, lambda: rows.exhausted)  # done only after the last row
    written = write_rows(rows, workers=1)
    chunks = [chunk for _, chunk in written]
    assert [chunk[0] for chunk in chunks] == ["{", ","]
    assert [p["i"] for p in json.loads("[" + "".join(chunks) + "]")] == [0, 1]


# -- attention ----------------------------------------------------------------------------


def attention_sheet(directory: Path, key: str, words: list[str]) -> Path:
    pixels = np.full((32, 32, 3), 120, np.uint8)
    alphas = np.full((len(words) + 1, 4), 0.25, np.float32)
    return save_attention_map(directory, key, pixels, words, alphas)


def test_an_attention_column_is_read_relative_to_the_output(tmp_path, monkeypatch):
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    out = tmp_path / "out"
    sheet = attention_sheet(out / "maps", "a.png", ["two", "dots"])
    named = f"maps/{sheet.name}"
    records = [
        record("a.png", caption="two dots", attention=named),
        record("b.png", caption="", status="error", error="bad", attention=named),
    ]
    run = write_csv(out / "run.csv", records, [*FIELDS, "attention"])
    rows = page_rows(write_report(run, tmp_path / "r.html").out)
    attention = rows[0]["attention"]
    assert {k: attention[k] for k in ("panel", "label", "columns", "rows", "steps")} == {
        "panel": 32, "label": 14, "columns": 3, "rows": 1, "steps": 3,
    }  # fmt: skip
    assert attention["src"].startswith("data:image/")
    assert "attention" not in rows[1]  # an error row shows its reason, not a map


def test_linked_images_link_the_attention_sheet_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sheet = attention_sheet(tmp_path / "maps", "a.png", ["one"])
    run = write_csv(tmp_path / "run.csv", [record("a.png", caption="one")])
    (tmp_path / "site").mkdir()
    page = write_report(run, tmp_path / "site" / "r.html", attention_dir="maps", link_images=True)
    attention = page_rows(page.out)[0]["attention"]
    assert attention["src"] == f"../maps/{sheet.name}"
    embedded = write_report(run, tmp_path / "site" / "e.html", attention_dir="maps")
    assert page_rows(embedded.out)[0]["attention"]["src"].startswith("data:image/")


# -- options ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 33, 1023, 1024])
def test_thumbnail_sizes_from_32_to_1024_are_accepted(size):
    assert ReportOptions(thumb_size=size).thumb_size == size


@pytest.mark.parametrize("size", [31, 1025, 0, 64.0, "64", None])
def test_other_thumbnail_sizes_are_refused_with_the_range(size):
    with pytest.raises(ValueError) as caught:
        ReportOptions(thumb_size=size)
    assert str(caught.value) == f"thumbnail size must be an integer in 32..1024, got {size!r}"


@pytest.mark.parametrize("workers", [None, 1, 2, 64])
def test_one_or_more_workers_are_accepted(workers):
    assert ReportOptions(workers=workers).workers == workers


@pytest.mark.parametrize("workers", [0, -1, 1.0, "2"])
def test_other_worker_counts_are_refused(workers):
    with pytest.raises(ValueError) as caught:
        ReportOptions(workers=workers)
    assert str(caught.value) == f"workers must be an integer >= 1, got {workers!r}"


def test_write_report_refuses_bad_options_before_reading(tmp_path):
    with pytest.raises(ValueError, match="^workers must be an integer >= 1, got 0$"):
        write_report(tmp_path / "missing.csv", tmp_path / "r.html", workers=0)


def test_the_result_says_how_long_the_report_took(tmp_path):
    run = write_csv(tmp_path / "run.csv", [record("a.png")])
    before = time.monotonic()
    result = write_report(run, tmp_path / "r.html")
    took = time.monotonic() - before
    assert 0 <= result.elapsed_s <= took
    assert (result.out, result.summary.rows, result.thumbnails) == (tmp_path / "r.html", 1, 0)


# -- whole or absent ----------------------------------------------------------------------


def test_the_page_is_written_beside_its_place_then_renamed(tmp_path, monkeypatch):
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    renamed: list[tuple[str, str, int]] = []
    real_replace = os.replace

    def replace(source, target, *, src_dir_fd=None, dst_dir_fd=None):
        # Names relative to the target's folder, opened once (capbatch/output/durable.py).
        assert src_dir_fd is not None and src_dir_fd == dst_dir_fd
        renamed.append((source, target, os.path.realpath(f"/proc/self/fd/{src_dir_fd}")))
        real_replace(source, target, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    monkeypatch.setattr(durable.os, "replace", replace)
    run = write_csv(tmp_path / "run.csv", [record("a.png")])
    out = tmp_path / "site" / "deep" / "r.html"  # folders that do not exist yet
    write_report(run, out)
    ((temporary, target, folder),) = renamed
    assert target == "r.html" and folder == str(out.parent)
    assert temporary.startswith(".r.html.tmp-") and "/" not in temporary
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.html"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert page_rows(out)[0]["key"] == "a.png"


def test_a_folder_that_cannot_be_made_is_an_output_error(tmp_path):
    run = write_csv(tmp_path / "run.csv", [record("a.png")])
    (tmp_path / "file").write_text("in the way")
    out = tmp_path / "file" / "r.html"
    with pytest.raises(OutputError) as caught:
        write_report(run, out)
    assert str(caught.value) == f"cannot write {out}: Not a directory"


def test_a_page_that_cannot_be_put_in_place_leaves_nothing_behind(tmp_path):
    run = write_csv(tmp_path / "run.csv", [record("a.png")])
    out = tmp_path / "r.html"
    out.mkdir()
    (out / "inside").write_text("kept")
    with pytest.raises(OutputError) as caught:
        write_report(run, out)
    assert str(caught.value) == f"cannot write {out}: Is a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html", "run.csv"]
    assert (out / "inside").read_text() == "kept"
