"""What the Ray engine's plan and options promise (capbatch/engines/ray_plan.py,
capbatch/engines/ray_options.py, docs/scale-out.md), checked without starting Ray:
how inputs become shards, where a run writes (merged file or shards folder), what
done.jsonl says and how a torn or damaged line reads, what --overwrite removes,
when an existing output is refused or resumed, what a resumed run still does per
shard and per key, RayOptions' bounds and defaults, the local instance's CPUs,
each actor's GPUs, the resource check's refusals and RaySummary's exit codes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from capbatch.captioner import CaptionerArgs
from capbatch.cli import main
from capbatch.engines import open_engine
from capbatch.engines import ray_options as ray_options_module
from capbatch.engines.ray_options import (
    INSTALL_HINT,
    RayOptions,
    RaySummary,
    check_resources,
    import_ray,
)
from capbatch.engines.ray_plan import (
    DONE_FILE,
    PLAN_FILE,
    PLAN_VERSION,
    OutputLayout,
    Shard,
    ShardRows,
    ShardWork,
    plan_record,
    plan_shards,
    plan_work,
    prepare_output,
)
from capbatch.errors import ExitCode, MissingDependencyError, UsageError
from capbatch.job import Engine, RunOptions
from capbatch.request import CaptionRequest
from capbatch.rows import Row
from tests.io_fixtures import png_bytes
from tests.runtime_fakes import make_fake_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_fake_bundle(tmp_path_factory.mktemp("fake") / "bundle")


def row(key: str, status: str = "ok") -> Row:
    ok = status == "ok"
    return Row(
        key=key, path=key, caption="a cube" if ok else None, score=-0.5 if ok else None,
        status=status, error=None if ok else "bad", width=4, height=4, model_id="m",
    )  # fmt: skip


def write_shard(layout: OutputLayout, index: int, rows: list[Row]) -> None:
    layout.shards_dir.mkdir(parents=True, exist_ok=True)
    with layout.shard_output(index) as output:
        output.begin(append=False)
        output.write(rows)


def shard_keys(layout: OutputLayout, index: int) -> list[str]:
    return [r.key for r in layout.read_rows(index)]


# -- the shard plan ---------------------------------------------------------------------


def test_inputs_become_strings_in_input_order_with_list_entries_last(tmp_path, monkeypatch):
    # Shards travel to workers as plain strings, as the user gave them.
    monkeypatch.chdir(tmp_path)
    Path("list.txt").write_text("x.jpg\n\ny.jpg\n")
    options = RunOptions(inputs=(Path("a.jpg"), Path("b.jpg")), from_list="list.txt")
    shards = plan_shards(options, shard_size=10)
    assert shards == [Shard(0, ("a.jpg", "b.jpg", "x.jpg", "y.jpg"))]
    assert all(type(name) is str for name in shards[0].inputs)


def test_an_archive_closes_the_run_before_it_and_is_a_shard_alone(tmp_path, monkeypatch):
    # By name only (the files need not exist): the plan must not change when files do.
    monkeypatch.chdir(tmp_path)
    options = RunOptions(inputs=("a.jpg", "b.jpg", "one.tar.gz", "two.ZIP", "c.jpg", "d", "e"))
    assert plan_shards(options, shard_size=3) == [
        Shard(0, ("a.jpg", "b.jpg")),
        Shard(1, ("one.tar.gz",)),
        Shard(2, ("two.ZIP",)),
        Shard(3, ("c.jpg", "d", "e")),
    ]


def test_shard_size_one_gives_every_input_its_own_shard(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shards = plan_shards(RunOptions(inputs=("a", "b", "c")), shard_size=1)
    assert [(s.index, s.inputs) for s in shards] == [(0, ("a",)), (1, ("b",)), (2, ("c",))]


def test_an_empty_list_file_plans_no_shards(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    assert plan_shards(RunOptions(from_list=str(tmp_path / "empty.txt")), shard_size=4) == []


def test_brace_patterns_expand_unless_a_file_has_the_literal_name(tmp_path, monkeypatch):
    # The sources' rule: a pattern is expanded only when no file has that name,
    # so every webdataset shard is a Ray shard even before the files exist.
    monkeypatch.chdir(tmp_path)
    Path("odd{1,2}.jpg").write_bytes(b"x")
    options = RunOptions(inputs=("s-{00..02}.tar", "odd{1,2}.jpg", "p{a,b}.jpg", "plain.jpg"))
    assert [s.inputs for s in plan_shards(options, shard_size=8)] == [
        ("s-00.tar",),
        ("s-01.tar",),
        ("s-02.tar",),
        ("odd{1,2}.jpg", "pa.jpg", "pb.jpg", "plain.jpg"),
    ]


# -- the output layout ------------------------------------------------------------------


def test_a_merged_output_keeps_its_shards_beside_it(tmp_path):
    # Parquet output: parquet shards; csv and jsonl (.ndjson too): jsonl shards.
    pq_out, nd_out = tmp_path / "out.parquet", tmp_path / "out.ndjson"
    pq = OutputLayout.for_output(pq_out, None)
    assert pq == OutputLayout(tmp_path / "out.parquet.shards", pq_out, "parquet", "parquet")
    nd = OutputLayout.for_output(str(nd_out), None)
    assert nd == OutputLayout(tmp_path / "out.ndjson.shards", nd_out, "jsonl", "jsonl")
    forced = OutputLayout.for_output(tmp_path / "out.csv", "CSV")
    assert (forced.fmt, forced.shard_fmt) == ("csv", "jsonl")
    assert pq.lock_target == tmp_path / "out.parquet"


def test_format_names_the_merged_format_when_the_extension_does_not(tmp_path):
    # docs/inputs-outputs.md: the format comes from --format or --out's extension.
    layout = OutputLayout.for_output(tmp_path / "captions.log", "parquet")
    assert layout == OutputLayout(
        tmp_path / "captions.log.shards", tmp_path / "captions.log", "parquet", "parquet"
    )


def test_a_shards_folder_holds_parquet_or_jsonl_shards_only(tmp_path):
    (tmp_path / "existing.d").mkdir()
    # An existing folder is a shards folder whatever its name; --format picks the shards.
    as_jsonl = OutputLayout.for_output(tmp_path / "existing.d", "jsonl")
    assert as_jsonl == OutputLayout(tmp_path / "existing.d", None, "jsonl", "jsonl")
    assert as_jsonl.lock_target == tmp_path / "existing.d"
    assert as_jsonl.shard_file(12) == tmp_path / "existing.d" / "shard-00012.jsonl"
    assert OutputLayout.for_output(tmp_path / "existing.d", None).shard_fmt == "parquet"
    with pytest.raises(UsageError) as refused:
        OutputLayout.for_output(tmp_path / "existing.d", "csv")
    assert str(refused.value) == "a shards-only --out folder holds jsonl or parquet shards"


def test_shard_files_lists_only_this_formats_shards_in_order(tmp_path):
    layout = OutputLayout.for_output(tmp_path / "out.jsonl", None)
    assert layout.shard_files() == []  # no folder yet
    layout.shards_dir.mkdir()
    for name in ("shard-00002.jsonl", "shard-00000.jsonl", "shard-00001.parquet", "notes.jsonl"):
        (layout.shards_dir / name).write_text("")
    assert layout.shard_files() == [
        layout.shards_dir / "shard-00000.jsonl",
        layout.shards_dir / "shard-00002.jsonl",
    ]


def test_rows_written_to_a_shard_read_back_in_order(tmp_path):
    layout = OutputLayout.for_output(tmp_path / "out.parquet", None)
    write_shard(layout, 3, [row("b"), row("a", "error")])
    assert layout.shard_file(3) == tmp_path / "out.parquet.shards" / "shard-00003.parquet"
    assert [(r.key, r.status) for r in layout.read_rows(3)] == [("b", "ok"), ("a", "error")]


# -- done.jsonl -------------------------------------------------------------------------


def test_done_records_are_one_json_line_each_and_read_back(tmp_path):
    layout = OutputLayout.for_output(tmp_path / "out.csv", None)
    assert layout.read_done() == {}  # no folder, no file
    layout.shards_dir.mkdir()
    assert layout.read_done() == {}
    layout.record_done({"shard": 4, "rows": 2, "errors": 0})
    layout.record_done({"shard": 1, "rows": 5, "errors": 1})
    assert (layout.shards_dir / DONE_FILE).read_text() == (
        '{"shard": 4, "rows": 2, "errors": 0}\n{"shard": 1, "rows": 5, "errors": 1}\n'
    )
    assert layout.read_done() == {
        4: {"shard": 4, "rows": 2, "errors": 0},
        1: {"shard": 1, "rows": 5, "errors": 1},
    }


def test_done_keeps_the_newest_record_and_skips_damaged_lines_and_a_torn_tail(tmp_path):
    # A shard finished again by --retry-errors gets a newer line; a crash can leave
    # a last line without its newline, which is ignored even when it parses.
    layout = OutputLayout.for_output(tmp_path / "out.jsonl", None)
    layout.shards_dir.mkdir()
    lines = [
        '{"shard": 0, "rows": 3, "errors": 2}',
        "not json",  # ValueError
        '{"rows": 1}',  # no shard: KeyError
        "[1, 2]",  # not an object: TypeError
        '{"shard": null, "rows": 1}',  # TypeError
        '{"shard": "x", "rows": 1}',  # ValueError
        '{"shard": 0, "rows": 3, "errors": 0}',
        '{"shard": "7", "rows": 1, "errors": 0}',
    ]
    torn = '{"shard": 9, "rows": 1, "errors": 0}'
    (layout.shards_dir / DONE_FILE).write_text("\n".join(lines) + "\n" + torn)
    assert layout.read_done() == {
        0: {"shard": 0, "rows": 3, "errors": 0},
        7: {"shard": "7", "rows": 1, "errors": 0},
    }


# -- --overwrite ------------------------------------------------------------------------


def test_clear_removes_only_capbatch_files_the_merged_file_and_its_parts(tmp_path):
    layout = OutputLayout.for_output(tmp_path / "out.parquet", None)
    layout.shards_dir.mkdir()
    for name in (PLAN_FILE, DONE_FILE, "shard-00000.parquet", "notes.txt", "plan.json.bak"):
        (layout.shards_dir / name).write_text("x")
    (layout.shards_dir / "shard-00001.parquet.parts").mkdir()  # a shard's parts folder
    (layout.shards_dir / "shard-00001.parquet.parts" / "part-0.parquet").write_text("x")
    (layout.shards_dir / "mine").mkdir()
    (tmp_path / "out.parquet").write_text("x")
    (tmp_path / "out.parquet.parts").mkdir()
    (tmp_path / "out.parquet.parts" / "part-0.parquet").write_text("x")
    layout.clear()
    left = sorted(p.name for p in layout.shards_dir.iterdir())
    assert left == ["mine", "notes.txt", "plan.json.bak"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet.shards"]
    layout.clear()  # nothing left to remove: not an error


def test_clear_of_an_output_never_written_does_nothing(tmp_path):
    OutputLayout.for_output(tmp_path / "out.jsonl", None).clear()
    OutputLayout(tmp_path / "shards", None, "parquet", "parquet").clear()
    assert list(tmp_path.iterdir()) == []


# -- the plan record and prepare_output -------------------------------------------------


def plan_of(options: RunOptions, shards, model_id: str = "m1", beam_size: int = 1) -> dict:
    return plan_record(shards, options, CaptionerArgs(beam_size=beam_size, max_len=12), model_id)


def test_plan_record_holds_what_a_resume_must_not_change():
    options = RunOptions(inputs=("a", "b.tar"), recursive=False, glob="*.png")
    shards = [Shard(0, ("a",)), Shard(1, ("b.tar",))]
    assert plan_of(options, shards, "model-x", beam_size=3) == {
        "version": PLAN_VERSION,
        "model_id": "model-x",
        "beam_size": 3,
        "max_len": 12,
        "encoder_runtime": "onnxruntime",
        "precision": "f32",
        "recursive": False,
        "glob": "*.png",
        "shards": [["a"], ["b.tar"]],
    }
    assert PLAN_VERSION == 2


def test_a_new_run_creates_the_shards_folder_and_writes_its_plan(tmp_path):
    out = tmp_path / "new" / "deeper" / "out.jsonl"
    layout = OutputLayout.for_output(out, None)
    options = RunOptions(inputs=("a",), out=out)
    plan = plan_of(options, [Shard(0, ("a",))])
    assert prepare_output(layout, options, plan) == {}
    plan_text = (layout.shards_dir / PLAN_FILE).read_text(encoding="utf-8")
    assert json.loads(plan_text) == plan
    assert plan_text == json.dumps(plan, indent=1)
    # A plan alone is no output yet: a second run (without --resume) may start.
    assert prepare_output(layout, options, plan_of(options, [Shard(0, ("b",))])) == {}
    assert json.loads((layout.shards_dir / PLAN_FILE).read_text())["shards"] == [["b"]]


def test_an_output_with_shard_rows_or_a_merged_file_is_refused_without_resume(tmp_path):
    options = RunOptions(inputs=("a",), out=tmp_path / "out.jsonl")
    plan = plan_of(options, [Shard(0, ("a",))])
    layout = OutputLayout.for_output(tmp_path / "out.jsonl", None)
    write_shard(layout, 0, [row("a")])  # rows of a shard cut short: no done record
    with pytest.raises(UsageError) as refused:
        prepare_output(layout, options, plan)
    assert str(refused.value) == (
        f"{tmp_path / 'out.jsonl'} already exists; pass --resume to continue it "
        "(--retry-errors to also redo failed images) or --overwrite to start over"
    )
    folder = OutputLayout(tmp_path / "folder", None, "jsonl", "jsonl")
    folder.shards_dir.mkdir()
    folder.record_done({"shard": 0, "rows": 1, "errors": 0})  # done, its file gone
    with pytest.raises(UsageError, match=f"^{tmp_path / 'folder'} already exists"):
        prepare_output(folder, options, plan)
    merged_only = OutputLayout.for_output(tmp_path / "m.jsonl", None)
    (tmp_path / "m.jsonl").write_text('{"key": "a"}\n')
    with pytest.raises(UsageError, match="already exists"):
        prepare_output(merged_only, options, plan)
    assert not merged_only.shards_dir.exists()  # refused before writing anything


def test_resuming_an_output_the_local_engine_wrote_is_refused(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"key": "a"}\n')
    layout = OutputLayout.for_output(out, None)
    options = RunOptions(inputs=("a",), out=out, retry_errors=True)
    with pytest.raises(UsageError) as refused:
        prepare_output(layout, options, plan_of(options, [Shard(0, ("a",))]))
    plan_path = layout.shards_dir / PLAN_FILE
    assert str(refused.value) == (
        f"{out} was not written by --engine ray (no {plan_path}); "
        "resume it with the local engine or pass --overwrite"
    )


def test_a_resume_with_other_inputs_or_model_options_is_refused(tmp_path):
    options = RunOptions(inputs=("a",), out=tmp_path / "out.jsonl", resume=True)
    first = plan_of(options, [Shard(0, ("a",))])
    layout = OutputLayout.for_output(tmp_path / "out.jsonl", None)
    assert prepare_output(layout, options, first) == {}
    write_shard(layout, 0, [row("a")])  # rows, but no done record yet
    with pytest.raises(UsageError) as refused:
        prepare_output(layout, options, plan_of(options, [Shard(0, ("a",))], beam_size=2))
    assert str(refused.value) == (
        f"the inputs or model options differ from the run that wrote {tmp_path / 'out.jsonl'} "
        "(--engine ray resumes the same inputs); pass --overwrite to start over"
    )
    # A done record alone counts as rows too.
    layout.shard_file(0).unlink()
    layout.record_done({"shard": 0, "rows": 1, "errors": 0})
    with pytest.raises(UsageError, match="differ from the run"):
        prepare_output(layout, options, plan_of(options, [Shard(0, ("b",))]))
    assert json.loads((layout.shards_dir / PLAN_FILE).read_text()) == first  # kept


def test_a_resume_with_the_same_plan_returns_the_done_records(tmp_path):
    options = RunOptions(inputs=("a", "b"), out=tmp_path / "out.jsonl", resume=True)
    plan = plan_of(options, [Shard(0, ("a",)), Shard(1, ("b",))])
    layout = OutputLayout.for_output(tmp_path / "out.jsonl", None)
    prepare_output(layout, options, plan)
    write_shard(layout, 0, [row("a")])
    layout.record_done({"shard": 0, "rows": 1, "errors": 0})
    assert prepare_output(layout, options, plan) == {0: {"shard": 0, "rows": 1, "errors": 0}}
    assert shard_keys(layout, 0) == ["a"]  # nothing removed


def test_a_merged_file_without_shard_rows_resumes_under_a_new_plan(tmp_path):
    # The merged file came from done shards, whose records are gone: no rows to match.
    out = tmp_path / "out.jsonl"
    options = RunOptions(inputs=("a",), out=out, resume=True)
    layout = OutputLayout.for_output(out, None)
    prepare_output(layout, options, plan_of(options, [Shard(0, ("a",))]))
    out.write_text('{"key": "a"}\n')
    new = plan_of(options, [Shard(0, ("z",))])
    assert prepare_output(layout, options, new) == {}
    assert json.loads((layout.shards_dir / PLAN_FILE).read_text()) == new


def test_overwrite_starts_over_whatever_was_there(tmp_path):
    out = tmp_path / "out.jsonl"
    layout = OutputLayout.for_output(out, None)
    write_shard(layout, 0, [row("a")])
    layout.record_done({"shard": 0, "rows": 1, "errors": 0})
    (layout.shards_dir / "notes.txt").write_text("mine")
    out.write_text('{"key": "a"}\n')  # and no plan: the local engine's output
    options = RunOptions(inputs=("b",), out=out, overwrite=True)
    plan = plan_of(options, [Shard(0, ("b",))])
    assert prepare_output(layout, options, plan) == {}
    assert sorted(p.name for p in layout.shards_dir.iterdir()) == ["notes.txt", PLAN_FILE]
    assert not out.exists()


# -- plan_work: what a resumed run still does -------------------------------------------


@pytest.fixture
def resumed(tmp_path):
    """Four shards: 0 done cleanly, 1 done with an error row, 2 cut short (a file, no
    record), 3 never started."""
    layout = OutputLayout.for_output(tmp_path / "out.jsonl", None)
    shards = [Shard(i, (f"in{i}",)) for i in range(4)]
    write_shard(layout, 0, [row("a"), row("b"), row("c")])
    write_shard(layout, 1, [row("d"), row("e", "error")])
    write_shard(layout, 2, [row("f"), row("g", "error")])
    for record in ({"shard": 0, "rows": 3, "errors": 0}, {"shard": 1, "rows": 2, "errors": 1}):
        layout.record_done(record)
    return layout, shards


def test_resume_skips_done_shards_whole_and_keeps_every_row_of_the_others(resumed, tmp_path):
    layout, shards = resumed
    options = RunOptions(inputs=("x",), out=tmp_path / "out.jsonl", resume=True)
    work = plan_work(layout, shards, options, layout.read_done())
    assert work.pending == [
        ShardWork(shards[2], {"f": "ok", "g": "error"}),
        ShardWork(shards[3], {}),
    ]
    assert (work.skipped_shards, work.skipped_rows) == (2, 3 + 2 + 2)
    assert shard_keys(layout, 2) == ["f", "g"]


def test_retry_errors_rereads_shards_with_errors_less_their_error_rows(resumed, tmp_path):
    layout, shards = resumed
    options = RunOptions(inputs=("x",), out=tmp_path / "out.jsonl", retry_errors=True)
    work = plan_work(layout, shards, options, layout.read_done())
    assert work.pending == [
        ShardWork(shards[1], {"d": "ok"}),
        ShardWork(shards[2], {"f": "ok"}),
        ShardWork(shards[3], {}),
    ]
    assert (work.skipped_shards, work.skipped_rows) == (1, 3 + 1 + 1)
    # Each key stays once: the error rows to redo are dropped from the files.
    assert (shard_keys(layout, 1), shard_keys(layout, 2)) == (["d"], ["f"])


def test_a_fresh_run_plans_every_shard_with_nothing_kept(tmp_path):
    layout = OutputLayout.for_output(tmp_path / "out.jsonl", None)
    shards = [Shard(0, ("a",)), Shard(1, ("b",))]
    work = plan_work(layout, shards, RunOptions(inputs=("a",)), {})
    assert work.pending == [ShardWork(shards[0], {}), ShardWork(shards[1], {})]
    assert (work.skipped_shards, work.skipped_rows) == (0, 0)


# -- RayOptions -------------------------------------------------------------------------


def test_ray_options_defaults_are_the_documented_ones():
    options = RayOptions()
    assert (options.address, options.actors, options.shard_size, options.shard_retries) == (
        None, 1, 256, 2,
    )  # fmt: skip
    assert (options.num_cpus, options.gpus_per_actor) == (None, None)


def test_ray_options_accept_their_smallest_values():
    options = RayOptions(actors=1, shard_size=1, shard_retries=0, num_cpus=1, gpus_per_actor=0)
    assert (options.actors, options.shard_size, options.shard_retries) == (1, 1, 0)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"actors": 0}, "actors must be an integer >= 1, got 0"),
        ({"actors": 2.0}, "actors must be an integer >= 1, got 2.0"),
        ({"shard_size": 0}, "shard_size must be an integer >= 1, got 0"),
        ({"shard_size": "8"}, "shard_size must be an integer >= 1, got '8'"),
        ({"shard_retries": -1}, "shard_retries must be an integer >= 0, got -1"),
        ({"shard_retries": 1.0}, "shard_retries must be an integer >= 0, got 1.0"),
        ({"num_cpus": 0}, "num_cpus must be >= 1, got 0"),
        ({"gpus_per_actor": -0.5}, "gpus_per_actor must be >= 0, got -0.5"),
    ],
)
def test_ray_options_out_of_bounds_are_refused_with_the_value(given, message):
    with pytest.raises(ValueError) as refused:
        RayOptions(**given)
    assert str(refused.value) == message


def test_each_actor_asks_one_gpu_with_device_cuda_and_none_otherwise():
    assert RayOptions().actor_gpus("cuda") == 1.0
    assert RayOptions().actor_gpus("CUDA") == 1.0
    assert RayOptions().actor_gpus("auto") == 0.0
    assert RayOptions().actor_gpus("cpu") == 0.0
    # An explicit share wins, zero included.
    assert RayOptions(gpus_per_actor=0.5).actor_gpus("cpu") == 0.5
    assert RayOptions(gpus_per_actor=0).actor_gpus("cuda") == 0


def test_a_local_instance_gets_max_of_cores_and_actors_plus_one_cpus(monkeypatch):
    # One CPU slot per actor for its lifetime plus one for the read + decode tasks.
    monkeypatch.setattr(ray_options_module, "cpu_thread_count", lambda: 4)
    assert RayOptions(actors=1).local_cpus() == 4
    assert RayOptions(actors=3).local_cpus() == 4
    assert RayOptions(actors=4).local_cpus() == 5
    assert RayOptions(actors=6).local_cpus() == 7
    assert RayOptions(actors=6, num_cpus=2).local_cpus() == 2  # as given


def test_without_ray_the_error_is_the_one_line_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(MissingDependencyError) as missing:
        import_ray()
    assert str(missing.value) == "--engine ray needs Ray: pip install 'capbatch[ray]'"
    assert INSTALL_HINT == str(missing.value)
    assert missing.value.__cause__ is None and missing.value.__suppress_context__


def test_ray_without_ray_data_is_missing_too_and_with_it_ray_is_returned(monkeypatch):
    fake = ModuleType("ray")
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(MissingDependencyError, match="pip install 'capbatch\\[ray\\]'"):
        import_ray()
    monkeypatch.setitem(sys.modules, "ray.data", ModuleType("ray.data"))
    assert import_ray() is fake


# -- the resource check and the summary -------------------------------------------------


def test_too_few_cpus_are_refused_with_what_is_needed_and_what_there_is():
    check_resources({"CPU": 4.0}, "cpu", RayOptions(actors=3))  # exactly enough
    with pytest.raises(UsageError) as refused:
        check_resources({"CPU": 2.5}, "cpu", RayOptions(actors=2))
    assert str(refused.value) == (
        "--actors 2 needs 3 CPUs in Ray (one per actor, one for reading); the cluster has 2.5"
    )
    with pytest.raises(UsageError, match="needs 2 CPUs .*; the cluster has 0$"):
        check_resources({}, "cpu", RayOptions())


def test_too_few_gpus_are_refused_with_what_is_needed_and_what_there_is():
    check_resources({"CPU": 8.0, "GPU": 2.0}, "cuda", RayOptions(actors=2))  # exactly enough
    check_resources({"CPU": 8.0}, "cpu", RayOptions(actors=2))  # cpu asks for none
    with pytest.raises(UsageError) as refused:
        check_resources({"CPU": 8.0, "GPU": 1.5}, "cuda", RayOptions(actors=2))
    assert str(refused.value) == (
        "--device cuda with 2 actor(s) needs 2 GPUs in Ray; the cluster has 1.5"
    )
    with pytest.raises(UsageError, match="needs 0.75 GPUs in Ray; the cluster has 0$"):
        check_resources({"CPU": 8.0}, "auto", RayOptions(actors=3, gpus_per_actor=0.25))


def test_summary_exit_code_interrupt_first_then_errors_or_failed_shards():
    def summary(**fields) -> RaySummary:
        return RaySummary(out=Path("o.jsonl"), fmt="jsonl", **fields)

    fresh = summary()
    counts = (fresh.shards, fresh.shards_done, fresh.shards_skipped, fresh.failed_shards)
    assert counts == (0, 0, 0, [])
    assert fresh.exit_code == ExitCode.OK
    assert summary(ok=5, skipped=2, shards_done=1).exit_code == ExitCode.OK
    assert summary(errors=1).exit_code == ExitCode.SOME_FAILED
    assert summary(failed_shards=[3]).exit_code == ExitCode.SOME_FAILED
    assert summary(failed_shards=[3], errors=1, interrupted=True).exit_code == ExitCode.INTERRUPTED


# -- through the CLI, before Ray starts -------------------------------------------------


@pytest.fixture
def ray_installed():
    """The CLI asks for Ray before it reads the output: without it, the install hint."""
    pytest.importorskip("ray", reason="needs the ray extra (pip install 'ray[data]')",
                        exc_type=ImportError)  # fmt: skip


def test_cli_resume_of_a_local_engine_output_is_refused_before_ray_starts(
    ray_installed, bundle, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    Path("photos").mkdir()
    Path("photos/a.png").write_bytes(png_bytes())
    Path("out.jsonl").write_text('{"key": "a.png"}\n')  # no out.jsonl.shards/plan.json
    code = main(["caption", "photos", "--out", "out.jsonl", "--model", str(bundle),
                 "--engine", "ray", "--resume", "--quiet"])  # fmt: skip
    assert code == ExitCode.FATAL
    err = capsys.readouterr().err
    assert "out.jsonl was not written by --engine ray" in err
    assert Path("out.jsonl").read_text() == '{"key": "a.png"}\n'
    assert not Path("out.jsonl.shards").exists()


def test_cli_ray_output_with_shard_rows_is_refused_without_resume(
    ray_installed, bundle, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    Path("photos").mkdir()
    Path("photos/a.png").write_bytes(png_bytes())
    layout = OutputLayout.for_output(Path("out.csv"), None)
    write_shard(layout, 0, [row("a.png")])
    code = main(["caption", "photos", "--out", "out.csv", "--model", str(bundle),
                 "--engine", "ray", "--quiet"])  # fmt: skip
    assert code == ExitCode.FATAL
    assert "out.csv already exists; pass --resume" in capsys.readouterr().err
    assert shard_keys(layout, 0) == ["a.png"]


def test_ray_shards_folder_out_passes_the_checks_before_the_model(tmp_path):
    # Found by this file's author: preflight opened --out as a file for both engines.
    pytest.importorskip("ray")

    def check_output(options, engine):
        open_engine(CaptionRequest(job=options, engine=engine))

    (tmp_path / "existing").mkdir()
    for out, fmt in (
        (tmp_path / "existing", None),
        (tmp_path / "existing", "jsonl"),
        (tmp_path / "new", None),
        (tmp_path / "new", "jsonl"),
    ):
        assert check_output(RunOptions(inputs=("x",), out=out, fmt=fmt), Engine.ray) is None
    with pytest.raises(UsageError, match="holds jsonl or parquet shards"):
        check_output(RunOptions(inputs=("x",), out=tmp_path / "new", fmt="csv"), Engine.ray)


def test_a_new_name_without_extension_is_a_shards_folder_whatever_the_format(tmp_path):
    assert OutputLayout.for_output(tmp_path / "new", "jsonl") == OutputLayout(
        tmp_path / "new", None, "jsonl", "jsonl"
    )


def test_a_dry_run_reads_the_rows_of_every_shard_file_as_done(tmp_path):
    layout = OutputLayout.for_output(tmp_path / "shards", "jsonl")
    rows = ShardRows(layout)
    assert (rows.fmt, rows.done()) == ("jsonl", {})  # nothing run yet: no folder
    layout.shards_dir.mkdir()
    (layout.shards_dir / "shard-00000.jsonl").write_text(
        '{"key": "a", "status": "ok"}\n{"key": "b", "status": "error"}\n'
    )
    (layout.shards_dir / "shard-00001.jsonl").write_text('{"key": "c", "status": "ok"}\n')
    (layout.shards_dir / "shard-00002.parquet").write_text("not this layout's format")
    assert rows.done() == {"a": "ok", "b": "error", "c": "ok"}
    merged = ShardRows(OutputLayout.for_output(tmp_path / "run.parquet", None))
    assert merged.fmt == "parquet"
