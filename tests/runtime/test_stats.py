"""The --stats-json document, the summary's error breakdown, caption text from token
ids and rows read back: exact values, as docs/runtime.md and docs/inputs-outputs.md
state them (these tests were written to kill surviving mutants, docs/testing.md)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from capbatch.errors import OutputError
from capbatch.job import RunSummary
from capbatch.rows import OK, OPTIONAL_FIELDS, Row
from capbatch.stats import reason_group, reason_lines, stats_record, write_stats
from capbatch.vocab import Vocab

REPO = Path(__file__).resolve().parents[2]


def row(key: str, status: str = OK, error: str | None = None, **flags) -> Row:
    return Row(
        key=key, path=None, caption="a" if status == OK else None, score=-0.5 if status == OK else None,
        status=status, error=error, width=8, height=8, model_id="m-1", **flags,
    )  # fmt: skip


def finished_summary() -> RunSummary:
    summary = RunSummary(out=Path("out/o.csv"), fmt="csv", started_at=0.0)
    summary.skipped = 4
    summary.count(
        [
            row("a", in_domain=True, truncated=False, repeated=False),
            row("b", in_domain=False, truncated=True, repeated=True),
            row("c", in_domain=True, truncated=True, repeated=False),
            row("d", "error", "image is 90000x90000 pixels"),
            row("e", "error", "image is 70000x70000 pixels"),
        ]
    )
    summary.elapsed_s = 0.123456  # images_per_s 40.50023...: 3 decimals show
    return summary


def test_stats_record_is_the_documented_document_exactly():
    record = stats_record(finished_summary(), 1, 86400.75)
    assert record == {
        "stats_version": 1,
        "model_id": "m-1",
        "encoder": None,
        "out": "out/o.csv",
        "format": "csv",
        "started_at": "1970-01-01T00:00:00+00:00",
        "ended_at": "1970-01-02T00:00:00+00:00",
        "elapsed_s": 0.123,
        "images_per_s": 40.5,
        "rows": 5,
        "status": {"ok": 3, "error": 2},
        "skipped": 4,
        "error_reasons": {"image is #x# pixels": 2},
        "in_domain": 2,
        "out_of_domain": 1,
        "truncated": 2,
        "repeated": 1,
        "interrupted": False,
        "exit_code": 1,
    }
    summary = finished_summary()
    summary.elapsed_s = 0.5
    assert stats_record(summary, 1, 0)["images_per_s"] == 10.0


def test_flags_no_row_carries_are_null_not_zero():
    summary = RunSummary(out=Path("o.csv"), fmt="csv")
    summary.count([row("a")])
    record = stats_record(summary, 0, 0)
    assert [record[k] for k in ("in_domain", "out_of_domain", "truncated", "repeated")] == [
        None
    ] * 4


def documented_stats_keys() -> set[str]:
    text = (REPO / "docs" / "runtime.md").read_text(encoding="utf-8")
    table = text.split("`--stats-json FILE` writes", 1)[1].split("\n\n", 2)[1]
    return {
        key for line in table.splitlines() for key in re.findall(r"`(\w+)`", line.split("|")[1])
    }


def test_every_documented_stats_key_is_written():
    assert documented_stats_keys() <= set(stats_record(finished_summary(), 0, 0))


def test_every_written_stats_key_is_documented():
    assert set(stats_record(finished_summary(), 0, 0)) <= documented_stats_keys()


def test_write_stats_creates_folders_and_writes_utf8_json_whole(tmp_path):
    path = tmp_path / "deep" / "er" / "stats.json"
    record = {"model_id": "modèle-π", "rows": 2}
    write_stats(path, record)
    raw = path.read_bytes().decode("utf-8")
    assert raw == '{\n  "model_id": "modèle-π",\n  "rows": 2\n}\n'
    assert sorted(p.name for p in path.parent.iterdir()) == ["stats.json"]  # no temporary left
    write_stats(path, {"rows": 3})  # replaced whole
    assert json.loads(path.read_text(encoding="utf-8")) == {"rows": 3}


def test_write_stats_failure_is_one_output_error_and_leaves_no_temporary(tmp_path):
    (tmp_path / "file").write_text("x")
    blocked = tmp_path / "file" / "stats.json"  # its folder is a file
    with pytest.raises(OutputError) as caught:
        write_stats(blocked, {"rows": 1})
    assert str(caught.value) == f"cannot write --stats-json {blocked}: Not a directory"
    target = tmp_path / "a-folder.json"
    target.mkdir()  # the rename onto it fails after the temporary was written
    with pytest.raises(OutputError, match=r"^cannot write --stats-json .*a-folder\.json: "):
        write_stats(target, {"rows": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-folder.json", "file"]


# -- the summary's breakdown ---------------------------------------------------------------


def test_reason_lines_show_the_top_five_and_count_the_rest():
    reasons = Counter({f"reason {c}": n for c, n in zip("abcdefg", (9, 8, 7, 6, 5, 2, 1))})
    assert reason_lines(reasons) == [
        "  9 x reason a",
        "  8 x reason b",
        "  7 x reason c",
        "  6 x reason d",
        "  5 x reason e",
        "  3 x 2 other reason(s) (see the error column)",
    ]
    assert reason_lines(Counter({"x": 2, "y": 1})) == ["  2 x x", "  1 x y"]


@pytest.mark.parametrize(
    "reason, group",
    [
        (None, "unknown error"),
        ("", "unknown error"),
        ("   ", "unknown error"),
        ("  image is 90000x90000 pixels, 1.5 MiB ", "image is #x# pixels, # MiB"),
    ],
)
def test_reason_group(reason, group):
    assert reason_group(reason) == group


# -- caption text from token ids -----------------------------------------------------------


def text_of(vocab: Vocab, ids: list[int]) -> str:
    return vocab.text(ids)


def test_word_vocab_joins_tokens_as_they_are():
    vocab = Vocab(("<end>", "a", "##b", "c"), "word", frozenset({0}))
    assert text_of(vocab, [1, 2, 0, 3]) == "a ##b c"


def test_wordpiece_glues_pieces_onto_the_last_word():
    vocab = Vocab(("<end>", "a", "b", "c", "##d", "##e"), "wordpiece", frozenset({0}))
    assert text_of(vocab, [1, 2, 3, 4, 5]) == "a b cde"
    assert text_of(vocab, [4, 1, 0]) == "d a"  # a leading piece starts a word


def test_vocab_refuses_unknown_styles_and_emptiness_by_name():
    with pytest.raises(
        ValueError, match=r"^unknown vocab style 'bpe'; expected one of \('word', 'wordpiece'\)$"
    ):
        Vocab(("a",), "bpe")
    with pytest.raises(ValueError, match="^vocab is empty$"):
        Vocab((), "word")


# -- rows read back ------------------------------------------------------------------------


def test_row_from_record_keeps_the_trust_signals_and_tolerates_their_absence():
    full = row("k", domain_distance=1.25, in_domain=False, truncated=True, repeated=False)
    assert Row.from_record({**full.to_record(), "extra": 1}) == full
    record = {k: v for k, v in full.to_record().items() if k not in OPTIONAL_FIELDS}
    assert Row.from_record(record) == row("k")
