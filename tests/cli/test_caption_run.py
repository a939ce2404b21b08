"""What `capbatch caption` does around the job (capbatch/caption_run.py, docs/runtime.md):
the progress line on stderr, --dry-run's plan on stdout, the summary lines, the end of
a run (--report, --stats-json, failed Ray shards, the exit code) and model warnings."""

# ruff: noqa: F811 (the fixtures bundle and photos are imported by name, then requested)

from __future__ import annotations

import json
import os
import re
import signal
import threading
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer

from capbatch import bundle as bundle_module
from capbatch.api import RunResult, finish
from capbatch.caption_run import Progress, end_of_run, summary_lines
from capbatch.engines import local as local_engine
from capbatch.engines.local import capped
from capbatch.errors import ExitCode
from capbatch.job import RunHooks, RunOptions, RunSummary
from capbatch.request import CaptionRequest
from tests.cli.test_caption import bundle, photos, run_cli  # noqa: F401 (fixtures)
from tests.report.test_report import page_rows

DONE = SimpleNamespace(processed=3, skipped=1, images_per_s=2.5, errors=1)


# -- the progress line ----------------------------------------------------------------


def progress(capsys, *, quiet=False, total_before=None, total_after=None, starts=1) -> str:
    with Progress(quiet) as shown:
        if total_before is not None:
            shown.set_total(total_before)
        for _ in range(starts):
            shown.start()
        if total_after is not None:
            shown.set_total(total_after)
        shown.update(DONE)
    return capsys.readouterr().err


def line_shape(done_of_total: str, eta: str) -> re.Pattern:
    """One line: spinner, label, bar, done/total, rate, errors, elapsed, ETA."""
    return re.compile(
        rf"^\S captioning ━+╸? +{re.escape(done_of_total)} 2\.5 img/s 1 errors "
        rf"\d:\d\d:\d\d ETA {re.escape(eta)}\n$"
    )


def test_progress_counts_done_and_skipped_against_the_total_with_rate_and_errors(capsys):
    assert line_shape("4/7", "-:--:--").match(progress(capsys, total_before=7))


def test_a_total_counted_after_the_start_still_reaches_the_line(capsys):
    assert line_shape("4/9", "-:--:--").match(progress(capsys, total_after=9))


def test_an_unknown_or_zero_total_shows_a_question_mark(capsys):
    for total in (0, None):
        err = progress(capsys, total_after=total)
        assert re.match(r"^\S captioning ━+ 4/\? 2\.5 img/s 1 errors", err), err


def test_progress_starts_once_however_often_start_is_called(capsys):
    assert line_shape("4/7", "-:--:--").match(progress(capsys, total_before=7, starts=3))


def test_quiet_progress_prints_nothing(capsys):
    assert progress(capsys, quiet=True, total_before=7, total_after=9) == ""


@pytest.mark.parametrize(
    ("total", "limit", "shown"),
    [(10, 3, 3), (2, 3, 2), (3, 3, 3), (None, 3, None), (10, None, 10), (None, None, None)],
)
def test_the_progress_total_is_capped_by_limit(total, limit, shown):
    assert capped(total, limit) == shown


# -- the summary lines ------------------------------------------------------------------


def summary(**fields) -> RunSummary:
    result = RunSummary(out=Path("out/c.csv"), fmt="csv", elapsed_s=2.0)
    for name, value in fields.items():
        setattr(result, name, value)
    return result


def test_the_first_summary_line_counts_rates_and_names_the_output():
    assert summary_lines(summary(ok=3, errors=1)) == [
        "3 captioned, 1 failed in 2.0 s (2.0 images/s) -> out/c.csv"
    ]
    assert summary_lines(summary(ok=3, skipped=2, out=Path("-"))) == [
        "3 captioned, 0 failed, 2 already done in 2.0 s (1.5 images/s) -> stdout"
    ]


def test_an_interrupted_run_says_how_to_continue():
    assert summary_lines(summary(ok=1, interrupted=True)) == [
        "interrupted: 1 captioned, 0 failed in 2.0 s (0.5 images/s) -> out/c.csv; "
        "rerun with --resume to continue"
    ]


def test_flags_and_reasons_get_a_line_each_when_present():
    lines = summary_lines(
        summary(
            ok=4,
            errors=2,
            flags=Counter(in_domain=3, truncated=2, repeated=1),
            flag_rows=Counter(in_domain=4, truncated=4, repeated=4),
            reasons=Counter({"truncated PNG": 2}),
        )  # fmt: skip
    )
    assert lines[1:4] == [
        "1 of 4 images look unlike the model's training data (in_domain=false)",
        "2 caption(s) stopped at the length limit without an end (truncated=true)",
        "1 caption(s) repeat a word or phrase back to back (repeated=true)",
    ]
    assert lines[4] == "failed, by reason:"
    assert len(lines) == 6 and "truncated PNG" in lines[5] and "2" in lines[5]


def test_flags_no_row_carried_and_flags_never_true_get_no_line():
    quiet_flags = summary(ok=4, flags=Counter(), flag_rows=Counter(truncated=4, repeated=4))
    assert summary_lines(quiet_flags) == [
        "4 captioned, 0 failed in 2.0 s (2.0 images/s) -> out/c.csv"
    ]
    all_in = summary(ok=4, flags=Counter(in_domain=4), flag_rows=Counter(in_domain=4))
    assert summary_lines(all_in)[1] == (
        "0 of 4 images look unlike the model's training data (in_domain=false)"
    )


# -- the end of a run ---------------------------------------------------------------------


def test_failed_ray_shards_are_named_first_ten_at_most_then_the_exit_code(capsys, tmp_path):
    ended = summary(ok=2, errors=1)
    ended.failed_shards = list(range(12))
    with pytest.raises(typer.Exit) as exit_info:
        end_of_run(RunResult(ended), quiet=False)
    assert exit_info.value.exit_code == ExitCode.SOME_FAILED
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == (
        "capbatch: 12 shard(s) failed after retries (0, 1, 2, 3, 4, 5, 6, 7, 8, 9); "
        "rerun with --resume to retry them"
    )
    assert lines[1].startswith("2 captioned, 1 failed in 2.0 s")


def test_quiet_end_prints_nothing_but_keeps_the_exit_code_and_writes_stats(capsys, tmp_path):
    ended = summary(errors=1, reasons=Counter({"truncated PNG": 1}))
    ended.failed_shards = [3]
    options = RunOptions(inputs=("photos",), out=tmp_path / "c.csv")
    result = finish(CaptionRequest(job=options, stats_json=tmp_path / "s.json"), ended)
    with pytest.raises(typer.Exit) as exit_info:
        end_of_run(result, quiet=True)
    assert exit_info.value.exit_code == ExitCode.SOME_FAILED
    assert capsys.readouterr().err == ""
    stats = json.loads((tmp_path / "s.json").read_text())
    assert (stats["status"], stats["exit_code"]) == ({"ok": 0, "error": 1}, ExitCode.SOME_FAILED)


def test_a_whole_run_ends_without_raising(capsys, tmp_path):
    end_of_run(RunResult(summary(ok=2)), quiet=False)
    assert capsys.readouterr().err.startswith("2 captioned, 0 failed")


def test_report_with_attention_maps_through_the_cli(capsys, bundle, photos, tmp_path):
    out, page = tmp_path / "c.csv", tmp_path / "r.html"
    code, _, err = run_cli(capsys, "caption", photos, "--out", out, "--model", bundle,
                           "--report", page, "--attention-dir", tmp_path / "maps")  # fmt: skip
    assert code == ExitCode.SOME_FAILED  # broken.jpg
    assert f"report of 4 rows -> {page}\n" in err
    rows = page_rows(page)
    assert [bool(row.get("attention")) for row in rows] == [True, True, False, True]


def test_a_resumed_run_reports_all_its_rows_old_and_new(capsys, bundle, photos, tmp_path):
    out, page = tmp_path / "c.csv", tmp_path / "r.html"
    code, _, _ = run_cli(capsys, "caption", photos, "--out", out, "--model", bundle,
                         "--limit", "2", "-q")  # fmt: skip
    assert code == ExitCode.OK
    # 2 already done and 2 new: the report is written and holds all four rows.
    code, _, err = run_cli(capsys, "caption", photos, "--out", out, "--model", bundle,
                           "--resume", "--report", page, "--limit", "4")  # fmt: skip
    assert code == ExitCode.SOME_FAILED, err
    assert f"report of 4 rows -> {page}\n" in err
    assert len(page_rows(page)) == 4


def test_quiet_report_is_written_without_its_line(capsys, bundle, photos, tmp_path):
    page = tmp_path / "r.html"
    code, _, err = run_cli(capsys, "caption", photos, "--out", tmp_path / "c.csv",
                           "--model", bundle, "--report", page, "-q")  # fmt: skip
    assert code == ExitCode.SOME_FAILED
    assert "report of" not in err and len(page_rows(page)) == 4


# -- --dry-run -----------------------------------------------------------------------------


def test_dry_run_prints_the_whole_plan_on_stdout(capsys, bundle, photos, tmp_path):
    code, out, err = run_cli(capsys, "caption", photos, "--out", "-", "--format", "jsonl",
                             "--model", bundle, "--dry-run")  # fmt: skip
    assert (code, err) == (ExitCode.OK, "")
    assert out.splitlines() == [
        "dry run: 4 input(s) found, 0 already done, 4 to caption -> stdout (jsonl); "
        "nothing written",
        f"  {photos / 'a.png'}",
        f"  {photos / 'b.jpg'}",
        f"  {photos / 'broken.jpg'}",
        f"  {photos / 'nested' / 'deeper' / 'c.png'}",
        "model fake-0 ok on CPUExecutionProvider, encoder onnxruntime-f32",
    ]


def test_dry_run_of_a_resumed_run_counts_what_is_left(capsys, bundle, photos, tmp_path):
    for index in range(3):
        (photos / f"more{index}.png").write_bytes((photos / "a.png").read_bytes())
    out = tmp_path / "c.csv"
    assert run_cli(capsys, "caption", photos, "--out", out, "--model", bundle,
                   "--limit", "2", "-q")[0] == ExitCode.OK  # fmt: skip
    code, stdout, _ = run_cli(capsys, "caption", photos, "--out", out, "--model", bundle,
                              "--resume", "--dry-run")  # fmt: skip
    assert code == ExitCode.OK
    lines = stdout.splitlines()
    assert lines[0] == (
        f"dry run: 7 input(s) found, 2 already done, 5 to caption -> {out} (csv); nothing written"
    )
    assert len(lines) == 1 + 5 + 2 and lines[6] == "  ... and 2 more"


def test_model_warnings_reach_stderr_in_dry_runs_and_real_runs(
    capsys,
    bundle,
    photos,
    tmp_path,
    monkeypatch,
):
    monkeypatch.setattr(bundle_module, "fallback_warning", lambda requested, active: "slow path")
    code, _, err = run_cli(capsys, "caption", photos, "--out", tmp_path / "c.csv",
                           "--model", bundle, "--dry-run")  # fmt: skip
    assert code == ExitCode.OK and err == "capbatch: warning: slow path\n"
    code, _, err = run_cli(capsys, "caption", photos, "--out", tmp_path / "c.csv",
                           "--model", bundle, "-q")  # fmt: skip
    assert code == ExitCode.SOME_FAILED and err == "capbatch: warning: slow path\n"


# -- the local run: signals and the counted total ---------------------------------------


def test_sigterm_mid_run_finishes_the_batch_flushes_and_exits_3(
    capsys, bundle, photos, tmp_path, monkeypatch
):
    """In-process, so that mutation testing sees it: the first progress update sends
    SIGTERM to this process; the handler capbatch installed must stop the run after
    that batch and be replaced by the previous one afterwards."""
    real_update = Progress.update
    sent = []

    def update_then_signal(self, summary):
        real_update(self, summary)
        if not sent:
            sent.append(summary.processed)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Progress, "update", update_then_signal)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "c.csv"
    code, _, err = run_cli(capsys, "caption", photos, "--out", out, "--model", bundle,
                           "--batch-size", "1")  # fmt: skip
    assert code == ExitCode.INTERRUPTED, err
    assert signal.getsignal(signal.SIGTERM) is before
    rows = out.read_text().splitlines()[1:]
    assert sent == [1] and 1 <= len(rows) < 4  # the batch in flight may still land
    assert "interrupted: " in err and "; rerun with --resume to continue" in err


@pytest.mark.parametrize(("limit", "total"), [(None, "4/4"), ("2", "2/2")])
def test_the_counted_total_capped_by_limit_reaches_the_progress_line(
    capsys, bundle, photos, tmp_path, monkeypatch, limit, total
):
    # The count runs in its own thread; the run waits for it here so the line is known.
    counted = threading.Event()
    real_set_total = Progress.set_total

    def set_total_then_tell(self, value):
        real_set_total(self, value)
        counted.set()

    real_run = local_engine.run_captioning

    def run_after_the_count(*args, **kwargs):
        assert counted.wait(30)
        return real_run(*args, **kwargs)

    monkeypatch.setattr(Progress, "set_total", set_total_then_tell)
    monkeypatch.setattr(local_engine, "run_captioning", run_after_the_count)
    extra = ["--limit", limit] if limit else []
    code, _, err = run_cli(capsys, "caption", photos, "--out", tmp_path / "c.csv",
                           "--model", bundle, *extra)  # fmt: skip
    assert code in (ExitCode.OK, ExitCode.SOME_FAILED), err
    (line,) = [line for line in err.splitlines() if "captioning" in line]
    assert f" {total} " in line


# -- handing the run to Ray ----------------------------------------------------------


@pytest.fixture
def fake_ray_driver(monkeypatch):
    pytest.importorskip("ray")
    from capbatch.engines import ray_driver
    from capbatch.engines.ray_options import RaySummary

    calls = []

    def run_on_ray(options, args, ray_options, *, stop, on_progress, on_start):
        # What the driver sees while it runs: capbatch's signal handler, a live stop.
        handler = signal.getsignal(signal.SIGTERM)
        was_set = stop.is_set()
        handler(signal.SIGTERM, None)  # a first SIGTERM during the run: the stop flag
        calls.append((options, args, ray_options, (was_set, stop.is_set()), handler))
        on_start()
        on_progress(DONE)
        return RaySummary(out=options.out, fmt="csv")

    monkeypatch.setattr(ray_driver, "run_on_ray", run_on_ray)
    return calls


def test_the_ray_engine_says_where_and_hands_the_driver_its_options(
    capsys, fake_ray_driver, bundle, photos, tmp_path
):
    from capbatch.api import caption
    from capbatch.cli_options import build

    before = signal.getsignal(signal.SIGTERM)
    lines = []
    common = {"inputs": [str(photos)], "engine": "ray", "model": bundle}
    first = build(CaptionRequest, {**common, "out": tmp_path / "a.csv"})
    second = build(
        CaptionRequest,
        {**common, "out": tmp_path / "b.csv", "address": "ray://head:10001", "actors": 3},
    )
    for request in (first, second):
        with Progress(quiet=False) as shown:
            hooks = RunHooks(on_start=shown.start, on_progress=shown.update, say=lines.append,
                             handle_signals=True)  # fmt: skip
            result = caption(request, hooks)
        assert result.summary.encoder == "onnxruntime-f32"  # named when no row was new
    assert lines == [
        "engine ray on a local Ray instance, 1 captioning actor(s)",
        "engine ray on ray://head:10001, 3 captioning actor(s)",
    ]
    assert re.match(r"^\S captioning ━+ 4/\? 2\.5 img/s 1 errors", capsys.readouterr().err)
    (one, two) = fake_ray_driver
    assert one[0] == first.job and two[0] == second.job
    assert one[1].model == str(Path(bundle).resolve())  # absolute for the actors
    assert (one[2].address, one[2].actors) == (None, 1)
    assert (two[2].address, two[2].actors) == ("ray://head:10001", 3)
    assert one[3] == (False, True) and one[4] is not before  # capbatch's handler
    assert signal.getsignal(signal.SIGTERM) is before  # and the previous one after


def test_bad_ray_options_are_refused_in_one_line():
    from capbatch.cli_options import build
    from capbatch.errors import UsageError

    with pytest.raises(UsageError) as raised:
        build(CaptionRequest, {"inputs": ["photos"], "engine": "ray", "actors": -2})
    assert str(raised.value) == "actors must be an integer >= 1, got -2"


def test_the_model_line_names_every_provider(capsys, bundle, photos, tmp_path, monkeypatch):
    # On a GPU machine a session has two: both are named, in onnxruntime's order.
    from capbatch.captioner import Captioner

    two = property(lambda self: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(Captioner, "providers", two)
    out = tmp_path / "c.csv"
    _, _, err = run_cli(capsys, "caption", photos, "--out", out, "--model", bundle)
    assert err.splitlines()[0] == "model fake-0 on CUDAExecutionProvider, CPUExecutionProvider, encoder onnxruntime-f32"
    _, stdout, _ = run_cli(capsys, "caption", photos, "--out", tmp_path / "d.csv",
                           "--model", bundle, "--dry-run")  # fmt: skip
    assert stdout.splitlines()[-1] == (
        "model fake-0 ok on CUDAExecutionProvider, CPUExecutionProvider, encoder onnxruntime-f32"
    )


def test_dry_run_takes_the_format_from_format_over_the_extension(capsys, bundle, photos, tmp_path):
    out = tmp_path / "rows.log"
    code, stdout, err = run_cli(capsys, "caption", photos, "--out", out, "--format", "csv",
                                "--model", bundle, "--dry-run")  # fmt: skip
    assert code == ExitCode.OK, err
    assert stdout.splitlines()[0].endswith(f"-> {out} (csv); nothing written")


def test_dry_run_of_a_ray_shards_folder_counts_the_rows_its_shards_hold(
    capsys, bundle, photos, tmp_path, monkeypatch
):
    """Without Ray: the folder is what an interrupted --engine ray run leaves."""
    from capbatch.engines import ray_options

    monkeypatch.setattr(ray_options, "import_ray", lambda: None)
    shards = tmp_path / "shards"
    shards.mkdir()
    done = [str(photos / "a.png"), str(photos / "b.jpg")]
    (shards / "shard-00000.jsonl").write_text(
        "".join(json.dumps({"key": key, "status": "ok"}) + "\n" for key in done)
    )
    code, stdout, err = run_cli(capsys, "caption", photos, "--out", shards, "--format", "jsonl",
                                "--model", bundle, "--engine", "ray", "--resume", "--dry-run")  # fmt: skip
    assert code == ExitCode.OK, err
    assert stdout.splitlines()[0] == (
        f"dry run: 4 input(s) found, 2 already done, 2 to caption -> {shards} (jsonl); "
        "nothing written"
    )


def test_a_progress_line_before_any_batch_shows_zero_rate_and_errors(capsys):
    with Progress(False) as shown:
        shown.start()
    assert re.match(r"^\S captioning ━+ 0/\? 0\.0 img/s 0 errors ", capsys.readouterr().err)


def test_a_folder_without_write_and_search_permission_is_refused(
    capsys, bundle, photos, tmp_path, monkeypatch
):
    # Root may write anywhere, so the permission check is observed where it asks.
    import capbatch.write_targets as module

    asked = []
    real_access = os.access

    def access(path, mode, **kwargs):
        if Path(path) != tmp_path:
            return real_access(path, mode, **kwargs)
        asked.append(mode)
        return mode != os.W_OK | os.X_OK  # this folder: readable, not writable

    monkeypatch.setattr(module.os, "access", access)
    (tmp_path / "out").mkdir()
    code, _, err = run_cli(capsys, "caption", photos, "--out", tmp_path / "out" / "c.csv",
                           "--model", bundle, "--stats-json", tmp_path / "s.json")  # fmt: skip
    assert (code, err) == (
        ExitCode.FATAL,
        f"capbatch: error: --stats-json {tmp_path / 's.json'}: no permission to write in "
        f"{tmp_path}\n",
    )
    assert asked == [os.W_OK | os.X_OK]


def test_a_resumed_run_with_nothing_new_still_names_its_model(capsys, bundle, photos, tmp_path):
    out, stats = tmp_path / "c.csv", tmp_path / "s.json"
    args = ("caption", photos, "--out", out, "--model", bundle, "-q")
    assert run_cli(capsys, *args)[0] == ExitCode.SOME_FAILED
    code, _, _ = run_cli(capsys, *args, "--resume", "--stats-json", stats)
    assert code == ExitCode.OK  # nothing was redone: the error row stays an old row
    recorded = json.loads(stats.read_text())
    assert (recorded["model_id"], recorded["skipped"], recorded["rows"]) == ("fake-0", 4, 0)
