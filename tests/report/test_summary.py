"""The report's header, as docs/report.md promises it: rows, captioned and errors with
their rates, the score's mean and range, the model ids, the error reasons grouped by
their numbers (with their counts, most frequent first), the flag counts when the rows
carry them, and the first 100 error rows listed under the grid.

The counting is checked on RunSummary (what write_report returns) and, where the page
shows it, in the page itself.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from capbatch.report import write_report
from capbatch.report.rows import to_report_row
from capbatch.report.summary import (
    LISTED_ERRORS,
    MAX_REASON_GROUPS,
    RunSummary,
    reason_pattern,
)
from tests.report.test_report import write_csv as report_csv

FIELDS = ["key", "path", "caption", "score", "status", "error", "model_id"]


def ok(key: str, **fields) -> dict:
    return {"key": key, "caption": "a red square", "status": "ok", **fields}


def failed(key: str, error: str, **fields) -> dict:
    return {"key": key, "status": "error", "error": error, **fields}


def summarise(records: list[dict]) -> RunSummary:
    summary = RunSummary()
    for index, record in enumerate(records):
        summary.add(to_report_row(record, index))
    return summary


def write_csv(path: Path, records: list[dict], fields: list[str] | None = None) -> Path:
    return report_csv(path, records, fields or FIELDS)  # this file's columns by default


def header_text(page: Path, element_id: str) -> str:
    text = page.read_text(encoding="utf-8")
    match = re.search(rf'id="{element_id}">(.*?)</dd>', text, re.S)
    assert match, f"no #{element_id} in the page"
    return " ".join(match.group(1).split())


def reason_list(page: Path) -> list[tuple[str, str, int]]:
    """(data-reason, label, count) per reason button, in page order."""
    text = page.read_text(encoding="utf-8")
    found = re.findall(
        r'<button type="button" class="reason" data-reason="(\d+)">(.*?)</button>'
        r' <span class="n">(\d+)</span>',
        text,
    )
    return [(index, html.unescape(label), int(count)) for index, label, count in found]


# -- reason groups ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "pattern"),
    [
        ("image too large: 90000 pixels > limit 1000", "image too large: # pixels > limit #"),
        ("empty file (0 bytes)", "empty file (# bytes)"),
        ("truncated PNG", "truncated PNG"),
        ("", "unknown error"),
        ("scale 1.5 refused", "scale # refused"),
    ],
)
def test_reasons_that_differ_only_in_numbers_share_one_pattern(reason, pattern):
    assert reason_pattern(reason) == pattern


def test_each_reason_group_counts_its_rows_and_keeps_the_first_full_reason():
    summary = summarise(
        [
            failed("a.png", "image too large: 900 pixels > limit 10"),
            ok("b.png"),
            failed("c.png", "image too large: 800 pixels > limit 10"),
            failed("d.png", "truncated PNG"),
            failed("e.png", "image too large: 700 pixels > limit 20"),
        ]
    )
    assert [(g.pattern, g.count, g.example) for g in summary.reasons] == [
        ("image too large: # pixels > limit #", 3, "image too large: 900 pixels > limit 10"),
        ("truncated PNG", 1, "truncated PNG"),
    ]
    assert summary.group_of("image too large: 1 pixels > limit 2") == 0
    assert summary.group_of("truncated PNG") == 1
    # Asking for a reason's group does not count a row.
    assert [g.count for g in summary.reasons] == [3, 1]


def test_top_reasons_puts_the_most_frequent_first_and_keeps_first_seen_order_on_ties():
    summary = summarise(
        [
            failed("a", "first"),
            failed("b", "second"),
            failed("c", "third 1"),
            failed("d", "third 2"),
            failed("e", "fourth"),
            failed("f", "third 3"),
        ]
    )
    assert [(g.pattern, g.count) for g in summary.top_reasons()] == [
        ("third #", 3),
        ("first", 1),
        ("second", 1),
        ("fourth", 1),
    ]
    # The groups' indices (what the cards' "reason" points at) stay in first-seen order.
    assert [g.pattern for g in summary.reasons] == ["first", "second", "third #", "fourth"]


def test_reason_groups_are_capped_and_the_rest_share_one_other_group():
    distinct = [f"reason {chr(0x4E00 + i)}" for i in range(MAX_REASON_GROUPS + 3)]
    records = [failed(f"{i}.png", reason) for i, reason in enumerate(distinct)]
    records.append(failed("again.png", distinct[0]))  # a known group still counts in its own
    summary = summarise(records)
    assert len(summary.reasons) == MAX_REASON_GROUPS + 1
    other = summary.reasons[-1]
    assert (other.pattern, other.count, other.example) == ("(other reasons)", 3, distinct[-3])
    assert summary.reasons[0].count == 2
    assert summary.group_of(distinct[-1]) == MAX_REASON_GROUPS
    assert summary.group_of("yet another reason") == MAX_REASON_GROUPS
    assert summary.groups["(other reasons)"] == MAX_REASON_GROUPS


# -- counts -------------------------------------------------------------------------------


def test_rows_captioned_errors_and_models_are_counted():
    summary = summarise(
        [
            ok("a.png", model_id="m-1"),
            ok("b.png", model_id="m-2"),
            failed("c.png", "truncated PNG", model_id="m-1"),
            ok("d.png"),
        ]
    )
    assert (summary.rows, summary.ok, summary.errors) == (4, 3, 1)
    assert dict(summary.models) == {"m-1": 2, "m-2": 1}
    assert summary.percent(summary.ok) == "75.0 %"
    assert summary.percent(1) == "25.0 %"
    assert summary.percent(0) == "0.0 %"


def test_an_empty_run_has_no_rates_and_no_score():
    summary = RunSummary()
    assert summary.percent(0) == "-"
    assert summary.score_mean is None
    assert not (summary.has_domain or summary.has_truncation or summary.has_repetition)


def test_score_mean_and_range_count_only_scored_rows():
    summary = summarise(
        [
            ok("a", score="-0.5"),
            ok("b", score="0.0"),
            failed("c", "truncated PNG"),
            ok("d", score="-1.5"),
            ok("e", score="-0.25"),
            ok("f"),
        ]
    )
    assert summary.scored == 4
    assert summary.score_min == -1.5 and summary.score_max == 0.0
    assert summary.score_total == pytest.approx(-2.25)
    assert summary.score_mean == pytest.approx(-0.5625)


def test_a_single_negative_score_is_its_own_range():
    summary = summarise([ok("a", score="-2.0")])
    assert (summary.score_min, summary.score_max, summary.score_mean) == (-2.0, -2.0, -2.0)


def test_flag_counts_count_only_rows_that_carry_the_flag():
    summary = summarise(
        [
            ok("a", in_domain="true", truncated="false", repeated="true"),
            ok("b", in_domain="false", truncated="true", repeated="false"),
            ok("c", in_domain="false", truncated="true"),
            ok("d"),
        ]
    )
    assert (summary.domain_known, summary.in_domain, summary.out_of_domain) == (3, 1, 2)
    assert (summary.truncation_known, summary.truncated) == (3, 2)
    assert (summary.repetition_known, summary.repeated) == (2, 1)
    assert summary.has_domain and summary.has_truncation and summary.has_repetition


@pytest.mark.parametrize("flag", ["in_domain", "truncated", "repeated"])
def test_one_row_carrying_a_flag_is_enough_to_show_it(flag):
    summary = summarise([ok("a"), ok("b", **{flag: "false"})])
    shown = {
        "in_domain": summary.has_domain,
        "truncated": summary.has_truncation,
        "repeated": summary.has_repetition,
    }
    assert shown == {name: name == flag for name in shown}


# -- listed errors ------------------------------------------------------------------------


def test_the_first_hundred_error_rows_are_listed_with_their_reasons():
    records = [failed(f"{i:03d}.png", f"bad {i}") for i in range(LISTED_ERRORS + 5)]
    summary = summarise([ok("fine.png"), *records])
    assert summary.errors == LISTED_ERRORS + 5
    assert len(summary.listed_errors) == LISTED_ERRORS
    assert summary.listed_errors[0] == ("000.png", "bad 0")
    assert summary.listed_errors[-1] == ("099.png", "bad 99")


# -- the page -----------------------------------------------------------------------------


def test_the_header_shows_counts_rates_score_and_models(tmp_path):
    records = [
        ok("a.png", score="-0.5", model_id="m-1"),
        ok("b.png", score="-0.125", model_id="m-1"),
        ok("c.png", score="-2.0", model_id="m-2"),
        failed("d.png", "truncated PNG", model_id="m-1"),
    ]
    page = write_report(write_csv(tmp_path / "run.csv", records), tmp_path / "r.html").out
    assert header_text(page, "count-rows") == "4"
    assert header_text(page, "count-ok") == "3 (75.0 %)"
    assert header_text(page, "count-errors") == "1 (25.0 %)"
    text = page.read_text(encoding="utf-8")
    assert "mean -0.875, from -2.000 to -0.125" in text
    assert re.sub(r"\s+", " ", header_text(page, "models")) == (
        "<code>m-1</code> (3), <code>m-2</code> (1)"
    )


def test_an_empty_run_shows_zero_rows_without_rates_or_score(tmp_path):
    page = write_report(write_csv(tmp_path / "run.csv", []), tmp_path / "r.html").out
    assert header_text(page, "count-rows") == "0"
    assert header_text(page, "count-errors") == "0 (-)"
    assert header_text(page, "models") == "unknown"
    text = page.read_text(encoding="utf-8")
    assert "<dt>score</dt>" not in text and 'id="reasons"' not in text
    assert 'id="error-list"' not in text


def test_the_pages_reasons_list_most_frequent_first_with_a_lone_reason_in_full(tmp_path):
    records = [
        failed("a.png", "empty file (0 bytes)"),
        failed("b.png", "image too large: 900 pixels > limit 10"),
        ok("c.png"),
        failed("d.png", "image too large: 800 pixels > limit 10"),
    ]
    result = write_report(write_csv(tmp_path / "run.csv", records), tmp_path / "r.html")
    assert reason_list(result.out) == [
        ("1", "image too large: # pixels > limit #", 2),
        ("0", "empty file (0 bytes)", 1),
    ]


def test_the_pages_error_list_says_when_it_shows_only_the_first_hundred(tmp_path):
    records = [failed(f"{i:03d}.png", "truncated PNG") for i in range(LISTED_ERRORS + 1)]
    page = write_report(write_csv(tmp_path / "run.csv", records), tmp_path / "r.html").out
    text = page.read_text(encoding="utf-8")
    assert f'Errors (first {LISTED_ERRORS} of {LISTED_ERRORS + 1}; "errors only"' in text
    listed = re.findall(r"<tr><td><code>(.*?)</code></td><td>(.*?)</td></tr>", text)
    assert len(listed) == LISTED_ERRORS
    assert listed[0] == ("000.png", "truncated PNG") and listed[-1][0] == "099.png"


def test_the_page_shows_flag_counts_and_filters_for_flags_the_rows_carry(tmp_path):
    fields = [*FIELDS, "in_domain", "truncated", "repeated"]
    records = [
        ok("a.png", in_domain="false", truncated="true", repeated="false"),
        ok("b.png", in_domain="true", truncated="false"),
        ok("c.png", in_domain="false", truncated="true"),
        ok("d.png", in_domain="true", truncated="false"),
    ]
    page = write_report(write_csv(tmp_path / "run.csv", records, fields), tmp_path / "r.html").out
    assert header_text(page, "count-in-domain") == "2"
    assert header_text(page, "count-out-of-domain") == "2 (50.0 %)"
    assert header_text(page, "count-truncated") == "2 (50.0 %)"
    assert header_text(page, "count-repeated") == "0 (0.0 %)"
    text = page.read_text(encoding="utf-8")
    assert '"hasDomain":true,"hasTruncation":true' in text
