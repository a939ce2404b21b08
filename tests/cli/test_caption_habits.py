"""`capbatch caption` as schedulers and pipes use it: checks before the model loads,
honest exit codes for typos and empty inputs, --out -, --limit, --dry-run,
--stats-json, the error breakdown, flags as flags, the built-in model's notice."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from capbatch.errors import ExitCode
from capbatch.output import format_for
from capbatch.stats import reason_group
from tests.cli import test_caption
from tests.cli.test_caption import read_csv, run_cli
from tests.runtime.test_captioner import REPO
from tests.runtime_fakes import make_fake_bundle

photos = test_caption.photos  # the same four-image folder fixture

NO_MODEL = "/nonexistent/bundle"  # loading it would fail: its error must not come first


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_fake_bundle(tmp_path_factory.mktemp("fake") / "bundle")


def caption(capsys, *args):
    return run_cli(capsys, "caption", *args)


# -- checked before the model loads ----------------------------------------------------


def test_typo_input_is_exit_2_one_line_and_no_output(capsys, photos, tmp_path):
    out = tmp_path / "c.csv"
    code, _, err = caption(capsys, photos, tmp_path / "photoz", "--out", out, "--model", NO_MODEL)
    assert code == ExitCode.FATAL
    assert err.strip().splitlines() == [
        f"capbatch: error: input {tmp_path / 'photoz'} does not exist"
    ]
    assert not out.exists() and not (tmp_path / "c.csv.lock").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--format", "csv", "--out", "x.jsonl"), "--format csv does not match --out 'x.jsonl'"),
        (("--format", "txt", "--out", "x.csv"), "--format txt does not match"),
        (("--out", "x.parquet", "--engine", "ray", "--limit", "2"), "--limit applies to the local"),
        (("--out", "-", "--engine", "ray"), "--out - applies to the local engine only"),
        (("--out", "existing.jsonl"), "existing.jsonl already exists; pass --resume"),
        (("--out", "x.csv", "--glob", "*.nothing"), "no images found under"),
        # written at the end of the run: a target that cannot be written is refused now
        (("--out", "x.csv", "--stats-json", "existing.jsonl/s.json"),
         "--stats-json existing.jsonl/s.json: "),
        (("--out", "x.csv", "--stats-json", "."), "--stats-json . is a directory"),
        (("--out", "x.csv", "--stats-json", "x.csv"), "would overwrite the output itself"),
    ],
)
def test_option_errors_come_before_the_model_loads(
    capsys, photos, tmp_path, monkeypatch, extra, message
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing.jsonl").write_text('{"key": "k", "status": "ok"}\n')
    code, _, err = caption(capsys, photos, "--model", NO_MODEL, *extra)
    assert code == ExitCode.FATAL
    assert message in err and "bundle" not in err, err
    assert len(err.strip().splitlines()) == 1


def test_missing_pyarrow_is_reported_before_the_model_loads(capsys, photos, tmp_path, monkeypatch):
    for name in ("pyarrow", "pyarrow.compute", "pyarrow.parquet"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as when not installed
    code, _, err = caption(capsys, photos, "--out", tmp_path / "x.parquet", "--model", NO_MODEL)
    assert code == ExitCode.FATAL and "pip install 'capbatch[parquet]'" in err


def test_format_and_extension_rules():
    assert format_for("run.journal.jsonl", "txt") == "txt"  # the sidecar journal is JSONL
    assert format_for("captions.tsv", "csv") == "csv"  # an unknown extension is the user's call
    assert format_for("x.NDJSON", "jsonl") == "jsonl"


def test_no_images_found_is_exit_2_unless_allow_empty(capsys, bundle, tmp_path):
    empty, out = tmp_path / "empty", tmp_path / "c.csv"
    empty.mkdir()
    code, _, err = caption(capsys, empty, "--out", out, "--model", bundle)
    assert code == ExitCode.FATAL and f"no images found under {empty}" in err
    assert not out.exists()
    code, _, _ = caption(capsys, empty, "--out", out, "--model", bundle, "--allow-empty", "-q")
    assert code == ExitCode.OK and read_csv(out) == [] and out.read_text().startswith("key,")


def test_an_empty_list_on_stdin_is_exit_2_and_leaves_no_output(
    capsys, bundle, tmp_path, monkeypatch
):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\n")))
    out = tmp_path / "c.jsonl"
    code, _, err = caption(capsys, "--from-list", "-", "--out", out, "--model", bundle, "-q")
    assert code == ExitCode.FATAL and "no images found under stdin" in err
    assert not out.exists()


def test_quiet_true_is_a_flag_and_a_leftover_input(capsys, bundle, photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = caption(capsys, photos, "--out", "c.csv", "--quiet", "true", "--model", bundle)
    assert code == ExitCode.FATAL
    assert "input true does not exist; boolean options are flags" in err
    code, out, _ = run_cli(capsys, "caption", "--help")
    assert code == 0 and "--quiet" in out and "<bool>" not in out


# -- error breakdown, --stats-json -------------------------------------------------------


def test_reasons_that_differ_only_in_numbers_are_one_reason():
    assert reason_group("image is 90000x90000 pixels") == reason_group("image is 7x8 pixels")
    assert reason_group("truncated file") != reason_group("not an image")


def test_summary_breaks_errors_down_and_stats_json_matches_the_rows(
    capsys, bundle, photos, tmp_path
):
    (photos / "junk.png").write_bytes(b"not a png either")
    out, stats_file = tmp_path / "c.csv", tmp_path / "stats" / "run.json"
    code, _, err = caption(
        capsys, photos, "--out", out, "--model", bundle, "--stats-json", stats_file
    )
    assert code == ExitCode.SOME_FAILED
    rows = read_csv(out)
    errors = [r for r in rows if r["status"] == "error"]
    assert len(errors) == 2
    assert "failed, by reason:" in err
    stats = json.loads(stats_file.read_text())
    assert stats["rows"] == len(rows)
    assert stats["status"] == {
        "ok": sum(r["status"] == "ok" for r in rows),
        "error": len(errors),
    }
    assert sum(stats["error_reasons"].values()) == len(errors)
    assert set(stats["error_reasons"]) == {reason_group(r["error"]) for r in errors}
    for reason, count in stats["error_reasons"].items():
        assert f"  {count} x {reason}" in err
    assert stats["model_id"] == rows[0]["model_id"]
    assert stats["exit_code"] == 1 and stats["interrupted"] is False
    assert stats["started_at"] <= stats["ended_at"] and stats["images_per_s"] > 0
    # The fake bundle has no domain statistics: that count is unknown (null), never a
    # made-up 0; the truncation flags are counted from the rows as written.
    assert stats["in_domain"] is None and stats["out_of_domain"] is None
    ok_rows = [r for r in rows if r["status"] == "ok"]
    assert stats["truncated"] == sum(r["truncated"] == "True" for r in ok_rows)
    assert stats["repeated"] == sum(r["repeated"] == "True" for r in ok_rows)


# -- --limit, --dry-run, --out - --------------------------------------------------------


def test_limit_takes_the_first_n_inputs(capsys, bundle, photos, tmp_path):
    out = tmp_path / "c.jsonl"
    code, _, _ = caption(capsys, photos, "--out", out, "--model", bundle, "--limit", "2", "-q")
    keys = [json.loads(line)["key"] for line in out.read_text().splitlines()]
    assert code == ExitCode.OK and keys == [str(photos / "a.png"), str(photos / "b.jpg")]


def test_dry_run_resolves_checks_the_model_and_writes_nothing(capsys, bundle, photos, tmp_path):
    out = tmp_path / "c.csv"
    code, stdout, _ = caption(capsys, photos, "--out", out, "--model", bundle, "--dry-run",
                              "--stats-json", tmp_path / "s.json")  # fmt: skip
    assert code == ExitCode.OK
    assert "dry run: 4 input(s) found, 0 already done, 4 to caption" in stdout
    assert f"  {photos / 'a.png'}" in stdout and "model fake-" in stdout
    assert sorted(os.listdir(tmp_path)) == ["photos"]  # no output, lock or stats
    code, _, err = caption(capsys, photos, "--out", out, "--model", NO_MODEL, "--dry-run")
    assert code == ExitCode.FATAL and NO_MODEL in err  # the model is checked too


def test_out_dash_streams_csv_rows_and_nothing_else_to_stdout(
    capsys, bundle, photos, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    code, stdout, err = caption(capsys, photos, "--out", "-", "--format", "csv", "--model", bundle)
    assert code == ExitCode.SOME_FAILED
    rows = list(csv.DictReader(io.StringIO(stdout)))
    assert [r["key"] for r in rows][:2] == [str(photos / "a.png"), str(photos / "b.jpg")]
    assert len(rows) == 4 and "3 captioned, 1 failed" in err and "-> stdout" in err
    assert sorted(os.listdir(tmp_path)) == ["photos"]  # no file named "-", no lock


def test_out_dash_piped_into_another_program(bundle, photos, tmp_path):
    reader = (
        "import json, sys; rows = [json.loads(line) for line in sys.stdin]; "
        "print(len(rows), sum(r['status'] == 'ok' for r in rows))"
    )
    command = (
        f"{sys.executable} -m capbatch caption '{photos}' --out - --model '{bundle}' "
        f'--device cpu | {sys.executable} -c "{reader}"'
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)  # fmt: skip
    assert done.stdout.split() == ["4", "3"], done.stderr
    assert "3 captioned, 1 failed" in done.stderr


# -- the built-in model says what it knows -----------------------------------------------


def test_builtin_model_prints_its_notice_and_info_its_card(capsys, tmp_path):
    sample = REPO / "samples" / "scene_000451.jpg"
    code, _, err = caption(capsys, sample, "--out", tmp_path / "c.csv", "-q", "--device", "cpu")
    assert code == ExitCode.OK
    notes = [line for line in err.splitlines() if line.startswith("capbatch: note:")]
    assert len(notes) == 1 and "not photos" in notes[0] and "docs/model-card.md" in notes[0]
    code, out, _ = run_cli(capsys, "info")
    assert code == 0 and "model card" in out
    for field in ("domain", "training data", "metrics"):
        assert any(line.strip().startswith(field) for line in out.splitlines()), field


def test_a_bundle_without_a_card_prints_no_notice(capsys, bundle, photos, tmp_path):
    code, _, err = caption(capsys, photos / "a.png", "--out", tmp_path / "c.csv", "--model", bundle)
    assert code == ExitCode.OK and "capbatch: note:" not in err
    code, out, _ = run_cli(capsys, "info", "--model", bundle)
    assert "model card   - (none in this bundle" in out


def test_summary_lines_say_how_many_rows_are_flagged(tmp_path):
    """What the lead's per-row flags will print once rows carry them."""
    from capbatch.caption_run import summary_lines as _summary_lines
    from capbatch.job import RunSummary

    summary = RunSummary(out=tmp_path / "o.csv", fmt="csv", ok=20)
    summary.flag_rows.update(in_domain=20, truncated=20)
    summary.flags.update(in_domain=6, truncated=2)
    lines = _summary_lines(summary)
    assert "14 of 20 images look unlike the model's training data (in_domain=false)" in lines
    assert "2 caption(s) stopped at the length limit without an end (truncated=true)" in lines
    assert not any("unlike" in line for line in _summary_lines(RunSummary(tmp_path, "csv")))
