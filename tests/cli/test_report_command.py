"""What `capbatch report`'s options promise (capbatch/report_cli.py, docs/report.md's
option table): embedded thumbnails of 256 pixels unless told otherwise, the summary line
unless -q, the one-line refusals, and the hint when no image of the run was found."""

from __future__ import annotations

from pathlib import Path

import pytest

from capbatch import report as report_package
from capbatch.errors import ExitCode
from tests.io_fixtures import RED, solid
from tests.report.test_report import decode_uri, page_rows, record, run_cli, write_csv

HINT = (
    "capbatch report: no image of the run was found; run the report from the folder "
    "the caption run ran in (relative paths are tried there and beside the output)"
)


@pytest.fixture
def run(tmp_path) -> Path:
    """A run of one captioned 600x300 photo, referenced by absolute path."""
    photo = tmp_path / "photos" / "wide.png"
    photo.parent.mkdir()
    solid(RED, (600, 300)).save(photo)
    return write_csv(tmp_path / "run.csv", [record(str(photo), width=600, height=300)])


def test_by_default_thumbnails_are_embedded_256_pixel_squares_with_a_summary_line(run, capsys):
    out = run.parent / "r.html"
    code, err = run_cli(capsys, "report", run, "--out", out)
    assert code == ExitCode.OK, err
    (row,) = page_rows(out)
    assert decode_uri(row["img"]).size == (256, 256)
    lines = err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("report of 1 rows (1 captioned, 0 errors, 1 with images) in ")
    assert lines[0].endswith(f" s -> {out}")


def test_thumb_size_sets_the_thumbnails_side(run, capsys):
    out = run.parent / "r.html"
    code, err = run_cli(capsys, "report", run, "--out", out, "--thumb-size", "64", "-q")
    assert code == ExitCode.OK, err
    assert decode_uri(page_rows(out)[0]["img"]).size == (64, 64)


def test_link_images_references_the_original_instead_of_embedding(run, capsys):
    out = run.parent / "site" / "r.html"
    out.parent.mkdir()
    code, err = run_cli(capsys, "report", run, "--out", out, "--link-images", "-q")
    assert code == ExitCode.OK, err
    assert page_rows(out)[0]["img"] == "../photos/wide.png"


def test_quiet_prints_nothing_at_all(run, capsys):
    for flag in ("-q", "--quiet"):
        code, err = run_cli(capsys, "report", run, "--out", run.parent / "r.html", flag)
        assert (code, err) == (ExitCode.OK, "")


def test_every_option_reaches_write_report(run, capsys, monkeypatch):
    """--workers has no visible effect on the page (thumbnails keep row order), so
    this one is checked where the CLI hands it over."""
    calls = []
    real = report_package.write_report

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(report_package, "write_report", spy)
    maps = run.parent / "maps"
    maps.mkdir()
    out = run.parent / "r.html"
    code, err = run_cli(capsys, "report", run, "--out", out, "--workers", "3",
                        "--thumb-size", "48", "--link-images", "--attention-dir", maps, "-q")  # fmt: skip
    assert code == ExitCode.OK, err
    assert calls == [
        ((run, out), {"attention_dir": maps, "link_images": True, "thumb_size": 48, "workers": 3})
    ]
    calls.clear()
    assert run_cli(capsys, "report", run, "--out", out, "-q")[0] == ExitCode.OK
    assert calls == [
        ((run, out), {"attention_dir": None, "link_images": False, "thumb_size": 256,
                      "workers": None})
    ]  # fmt: skip


def test_refusals_are_one_exact_line_and_write_nothing(run, capsys):
    out = run.parent / "r.html"
    not_a_folder = run.parent / "maps.txt"
    not_a_folder.write_text("x")
    code, err = run_cli(capsys, "report", run, "--out", out, "--attention-dir", not_a_folder)
    assert (code, err) == (
        ExitCode.FATAL,
        f"capbatch: error: --attention-dir {not_a_folder} is not a folder\n",
    )
    code, err = run_cli(capsys, "report", run, "--out", run)
    assert (code, err) == (
        ExitCode.FATAL,
        "capbatch: error: --out would overwrite the run output it reports on\n",
    )
    assert not out.exists()


def test_the_no_image_hint_is_the_documented_line(tmp_path, capsys):
    run = write_csv(tmp_path / "run.csv", [record("photos/elsewhere.png")])
    code, err = run_cli(capsys, "report", run, "--out", tmp_path / "r.html", "-q")
    assert (code, err) == (ExitCode.OK, HINT + "\n")


def test_a_run_of_only_error_rows_gets_no_hint(tmp_path, capsys):
    # Error rows have no image to show: nothing is missing, so nothing to explain.
    run = write_csv(
        tmp_path / "run.csv",
        [record("gone.png", caption=None, score=None, status="error", error="truncated PNG")],
    )
    code, err = run_cli(capsys, "report", run, "--out", tmp_path / "r.html", "-q")
    assert (code, err) == (ExitCode.OK, "")
