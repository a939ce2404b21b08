"""The job's rules and the checks before the model loads, by their exact words and
values (written to kill mutants that survived the suite, docs/testing.md)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from capbatch import batch_rows
from capbatch.batch_rows import KeyedItem, decode_or_reason, row_for
from capbatch.captioner import CaptionResult
from capbatch.engines import open_engine
from capbatch.engines.ray_options import RayOptions
from capbatch.errors import InputDecodeError, UsageError
from capbatch.job import (
    Engine,
    RunOptions,
    RunSummary,
    check_engine_options,
    job_sources,
    resume_output,
)
from capbatch.output import open_output
from capbatch.preflight import check_inputs_exist, check_not_empty, dry_run
from capbatch.preprocess import PreprocessSpec
from capbatch.request import CaptionRequest
from tests.cli.test_caption_options import png

RESUME_HINT = (
    "pass --resume to continue it (--retry-errors to also redo failed images) "
    "or --overwrite to start over"
)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """In tmp_path: in/0.png .. in/6.png and in/sub/deep.png."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for i in range(7):
        (tmp_path / "in" / f"{i}.png").write_bytes(png(i))
    (tmp_path / "in" / "sub" / "deep.png").write_bytes(png(9))
    return Path("in")


# -- options -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"resume": True, "overwrite": True}, "--resume and --overwrite exclude each other"),
        (
            {"retry_errors": True, "overwrite": True},
            "--retry-errors and --overwrite exclude each other",
        ),
        ({"inputs": ()}, "no inputs: give files, folders or archives, or --from-list FILE"),
        ({"limit": 0}, "limit must be an integer >= 1, got 0"),
        ({"limit": "2"}, "limit must be an integer >= 1, got '2'"),
        ({"workers": 0}, "workers must be an integer >= 1, got 0"),
    ],
)
def test_run_options_refuse_with_these_words(settings, message):
    with pytest.raises(ValueError) as caught:
        RunOptions(**{"inputs": ("x",), **settings})
    assert str(caught.value) == message


def test_a_limit_of_one_is_allowed():
    assert RunOptions(inputs=("x",), limit=1).limit == 1


def test_every_flag_of_the_wrong_engine_is_checked_not_only_the_first():
    local_only = RunOptions(inputs=("x",), workers=2, limit=3)
    check_engine_options(Engine.local, local_only)
    with pytest.raises(UsageError, match=r"^--actors needs --engine ray$"):
        check_engine_options(Engine.local, local_only, RayOptions(actors=2))
    with pytest.raises(UsageError, match=r"^--limit applies to the local engine only \(Ray reads"):
        check_engine_options(Engine.ray, RunOptions(inputs=("x",), limit=3), RayOptions(actors=2))


# -- decoding and rows ---------------------------------------------------------------------


def test_decode_or_reason_gives_the_reason_text(monkeypatch):
    spec = PreprocessSpec(size=32)
    monkeypatch.setattr(
        batch_rows,
        "decode_image",
        lambda data, spec: (_ for _ in ()).throw(InputDecodeError("empty file (0 bytes)")),
    )
    assert decode_or_reason(b"", spec) == "empty file (0 bytes)"
    monkeypatch.setattr(
        batch_rows, "decode_image", lambda data, spec: (_ for _ in ()).throw(ValueError("bad bits"))
    )
    assert decode_or_reason(b"x", spec) == "decode failed: ValueError: bad bits"


def test_row_for_rounds_score_to_6_and_domain_distance_to_2_decimals():
    result = CaptionResult(
        caption="a", score=-0.12345678, tokens=(4,), status="ok", error=None, width=3, height=4,
        domain_distance=1.23456, in_domain=True, truncated=False, repeated=True,
    )  # fmt: skip
    row = row_for(KeyedItem("k", "p"), result, "m")
    assert (row.score, row.domain_distance) == (-0.123457, 1.23)
    assert (row.in_domain, row.truncated, row.repeated, row.model_id) == (True, False, True, "m")


def test_elapsed_time_counts_up_from_the_start():
    summary = RunSummary(out=Path("o.csv"), fmt="csv")
    summary.tick()
    assert 0 <= summary.elapsed_s <= time.monotonic() - summary.started


# -- inputs and outputs --------------------------------------------------------------------


def test_job_sources_read_a_list_file(folder, tmp_path):
    (tmp_path / "list.txt").write_text("in/1.png\nin/3.png\n")
    options = RunOptions(from_list="list.txt")
    assert [item.key for item in job_sources(options)] == ["in/1.png", "in/3.png"]


@pytest.mark.parametrize(
    "settings, where",
    [
        ({"inputs": ("in", "more")}, "in, more"),
        ({"inputs": ("in",), "glob": "*.gif"}, "in matching --glob '*.gif'"),
        ({"from_list": "-"}, "stdin"),
        ({"from_list": "empty.txt"}, "the list empty.txt"),
    ],
)
def test_no_images_found_names_where_it_looked(folder, tmp_path, monkeypatch, settings, where):
    (tmp_path / "more").mkdir()
    (tmp_path / "empty.txt").write_text("")
    monkeypatch.setattr("sys.stdin", open(tmp_path / "empty.txt"))  # noqa: SIM115
    if "glob" not in settings and "from_list" not in settings:
        (tmp_path / "in").rename(tmp_path / "in-old")
        (tmp_path / "in").mkdir()
    with pytest.raises(UsageError) as caught:
        list(job_sources(RunOptions(**settings)))
    assert str(caught.value) == (
        f"no images found under {where} (pass --allow-empty if an empty input is expected)"
    )


def test_an_existing_output_is_refused_by_its_path(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text('{"key": "k", "status": "ok"}\n')
    output = open_output(out, None)
    with pytest.raises(UsageError) as caught:
        resume_output(output, RunOptions(inputs=("x",), out=out))
    assert str(caught.value) == f"{out} already exists; {RESUME_HINT}"
    with pytest.raises(UsageError) as caught:
        open_engine(CaptionRequest(job=RunOptions(inputs=("x",), out=out)))
    assert str(caught.value) == f"{out} already exists; {RESUME_HINT}"


# -- before the model loads ----------------------------------------------------------------


def test_a_missing_shard_of_a_brace_range_is_named(folder, tmp_path):
    for name in ("s-000.tar", "s-002.tar"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(UsageError) as caught:
        check_inputs_exist(RunOptions(inputs=("s-{000..002}.tar",)))
    assert str(caught.value) == "input s-001.tar (from s-{000..002}.tar) does not exist"
    (tmp_path / "s-001.tar").write_bytes(b"")
    check_inputs_exist(RunOptions(inputs=("s-{000..002}.tar",)))


def test_no_recursive_is_honoured_by_the_emptiness_check(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "top" / "sub").mkdir(parents=True)
    (tmp_path / "top" / "sub" / "x.png").write_bytes(png(1))
    check_not_empty(RunOptions(inputs=("top",)))
    with pytest.raises(UsageError, match="^no images found under top "):
        check_not_empty(RunOptions(inputs=("top",), recursive=False))


def test_only_parquet_needs_pyarrow(tmp_path, monkeypatch):
    import sys

    from capbatch.errors import MissingDependencyError

    for name in ("pyarrow", "pyarrow.compute", "pyarrow.parquet"):
        monkeypatch.setitem(sys.modules, name, None)
    open_engine(CaptionRequest(job=RunOptions(inputs=("x",), out=tmp_path / "o.csv")))
    with pytest.raises(MissingDependencyError):
        open_engine(CaptionRequest(job=RunOptions(inputs=("x",), out=tmp_path / "o.parquet")))


def test_dry_run_counts_done_keys_and_shows_the_first_five(folder, tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text('{"key": "in/1.png", "status": "ok"}\n{"key": "in/2.png", "status": "error"}\n')
    done = open_output(out, None).done()
    plan = dry_run(RunOptions(inputs=("in",), out=out, resume=True), done)
    assert (plan.inputs, plan.already_done) == (8, 2)
    assert plan.first_keys == ("in/0.png", "in/1.png", "in/2.png", "in/3.png", "in/4.png")
    retry = dry_run(RunOptions(inputs=("in",), out=out, retry_errors=True), done)
    assert retry.already_done == 1  # the error row is redone
    fresh = dry_run(RunOptions(inputs=("in",), out=out, overwrite=True), done)
    assert fresh.already_done == 0


def test_the_emptiness_check_never_reads_a_list_on_stdin(folder, monkeypatch):
    import io
    import sys

    stdin = io.TextIOWrapper(io.BytesIO(b"in/0.png\nin/1.png\n"))
    monkeypatch.setattr(sys, "stdin", stdin)
    check_not_empty(RunOptions(from_list="-"))  # a peek would eat the first path
    assert stdin.buffer.read() == b"in/0.png\nin/1.png\n"
