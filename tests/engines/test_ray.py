"""`--engine ray`: the same rows as the local engine, per-key resume, the install hint.

The Ray tests share one local Ray instance (module fixture, ~10-20 s to start on
the 2-core build machine) and skip cleanly where `ray` is not installed.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from capbatch.captioner import Captioner, CaptionerArgs
from capbatch.cli import main
from capbatch.engines.local import run_captioning
from capbatch.engines.ray_driver import ShardFiles, run_on_ray
from capbatch.engines.ray_options import RayOptions, RaySummary, check_resources
from capbatch.engines.ray_plan import DONE_FILE, OutputLayout, plan_shards
from capbatch.engines.ray_stages import caption_dataset
from capbatch.errors import ExitCode, UsageError
from capbatch.job import Engine, RunOptions, check_engine_options
from tests.runtime_fakes import make_fake_bundle

REPO = Path(__file__).resolve().parents[2]
HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="needs the ray extra (pip install 'ray[data]')")
# Ray Data's own context copies warn about its renamed settings; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_fake_bundle(tmp_path_factory.mktemp("fake") / "bundle")


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance for the module; run_on_ray joins it instead of starting one."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=3, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def png_bytes(seed: int, size=(40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def inputs(tmp_path):
    """A folder (with a broken image), a webdataset tar shard and a list file, as
    relative paths from tmp_path (the working directory): keys stay short."""
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for i in range(5):
        (photos / f"{i}.png").write_bytes(png_bytes(i))
    (photos / "sub" / "tall.png").write_bytes(png_bytes(9, (50, 70)))
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    # A Latin-1 file name: not valid UTF-8, so its key and path are escaped.
    (photos / os.fsdecode(b"caf\xe9.png")).write_bytes(png_bytes(7))
    with tarfile.open(tmp_path / "shard-000.tar", "w") as archive:
        for i in range(4):
            data = png_bytes(100 + i)
            info = tarfile.TarInfo(f"{i:06d}.png")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    (tmp_path / "list.txt").write_text("photos/0.png\nmissing.png\nphotos/sub\n")
    return tmp_path


def local_rows(bundle, out: Path, **options) -> list[dict]:
    captioner = Captioner(bundle, device="cpu", batch_size=4)
    run_captioning(captioner, RunOptions(out=out, workers=1, **options))
    return read_rows(out)


def read_rows(out: Path) -> list[dict]:
    if out.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(out).to_pylist()
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


# -- without Ray running --------------------------------------------------------------


def test_plan_shards_archives_alone_runs_of_shard_size(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("a.jpg", "b.jpg", "c.jpg", "s-0.tar", "s-1.tar"):
        Path(name).write_bytes(b"x")
    Path("more.txt").write_text("c.jpg\nd.jpg\n")
    options = RunOptions(inputs=("a.jpg", "b.jpg", "s-{0..1}.tar", "c.jpg"), from_list="more.txt")
    shards = plan_shards(options, shard_size=2)
    assert [s.inputs for s in shards] == [
        ("a.jpg", "b.jpg"),
        ("s-0.tar",),
        ("s-1.tar",),
        ("c.jpg", "c.jpg"),
        ("d.jpg",),
    ]
    assert [s.index for s in shards] == [0, 1, 2, 3, 4]


def test_output_layout(tmp_path):
    merged = OutputLayout.for_output(tmp_path / "out.csv", None)
    assert (merged.merged, merged.fmt, merged.shard_fmt) == (tmp_path / "out.csv", "csv", "jsonl")
    assert merged.shard_file(3) == tmp_path / "out.csv.shards" / "shard-00003.jsonl"
    folder = OutputLayout.for_output(tmp_path / "shards", None)
    assert (folder.merged, folder.shards_dir, folder.shard_fmt) == (
        None,
        tmp_path / "shards",
        "parquet",
    )
    with pytest.raises(UsageError, match="sidecars"):
        check_engine_options(Engine.ray, RunOptions(inputs=("x",), fmt="txt"))


def test_shard_with_missing_rows_is_failed_not_done(tmp_path):
    """A shard whose blocks were lost (fewer rows than its end marker counts) is
    reported as failed and not recorded as done; the rows that came stay in its
    file for --resume but are not counted (they are not in --out)."""
    layout = OutputLayout.for_output(tmp_path / "out.jsonl", None)
    layout.shards_dir.mkdir()
    summary = RaySummary(out=tmp_path / "out.jsonl", fmt="jsonl")
    files = ShardFiles(layout, summary)

    def row(shard, key, status="ok"):
        caption = "a cube" if status == "ok" else None
        error = None if status == "ok" else "bad"
        return dict(
            shard=shard, end=False, count=0, key=key, path=key, caption=caption, score=-0.5,
            status=status, error=error, width=4, height=4, model_id="m",
        )  # fmt: skip

    end = dict(shard=0, end=True, count=2, key="")
    files.add([row(0, "a"), row(0, "a"), row(0, "b", "error"), end])  # a repeat is dropped
    files.add([row(1, "c"), dict(end, shard=1, count=2)])  # one of two rows lost
    files.add([row(2, "d")])  # no end marker: its task failed for good
    files.close([0, 1, 2, 3], interrupted=False)  # shard 3: not a single row came
    assert layout.read_done() == {0: {"shard": 0, "rows": 2, "errors": 1}}
    assert summary.failed_shards == [1, 2, 3]
    assert [r.key for r in layout.read_rows(1)] == ["c"]  # kept for --resume
    assert [r.key for r in layout.read_rows(2)] == ["d"]
    assert not layout.shard_file(3).exists()
    assert (summary.ok, summary.errors, summary.exit_code) == (1, 1, ExitCode.SOME_FAILED)


def test_jobs_the_cluster_cannot_schedule_are_refused():
    check_resources({"CPU": 3.0}, "cpu", RayOptions(actors=2))
    with pytest.raises(UsageError, match="needs 3 CPUs"):
        check_resources({"CPU": 2.0}, "cpu", RayOptions(actors=2))
    with pytest.raises(UsageError, match="needs 2 GPUs"):
        check_resources({"CPU": 8.0, "GPU": 1.0}, "cuda", RayOptions(actors=2))
    half = RayOptions(actors=2, gpus_per_actor=0.5)
    check_resources({"CPU": 8.0, "GPU": 1.0}, "cuda", half)


def test_ray_options_without_engine_ray_are_refused(capsys, bundle, inputs):
    code = main(["caption", str(inputs / "photos"), "--out", str(inputs / "o.csv"),
                 "--model", str(bundle), "--actors", "2"])  # fmt: skip
    assert code == ExitCode.FATAL
    assert "--engine ray" in capsys.readouterr().err


RAY_BLOCKER = "raise ImportError('No module named ray (blocked by the test)')\n"


def test_engine_ray_without_ray_says_what_to_install(bundle, inputs):
    blocker = inputs / "blocker" / "ray"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(RAY_BLOCKER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocker.parent), str(REPO)]))
    done = subprocess.run(
        [sys.executable, "-m", "capbatch", "caption", "photos", "--out", "o.csv",
         "--model", str(bundle), "--engine", "ray"],
        env=env, capture_output=True, text=True, timeout=120, cwd=inputs,
    )  # fmt: skip
    assert done.returncode == ExitCode.FATAL
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "pip install 'capbatch[ray]'" in lines[0]
    assert not (inputs / "o.csv").exists()


# -- on a local Ray instance ---------------------------------------------------------------


@needs_ray
def test_cli_rows_equal_local_engine(ray_local, capsys, bundle, inputs, monkeypatch):
    monkeypatch.chdir(inputs)
    args = ("photos", "shard-000.tar")
    expected = local_rows(bundle, inputs / "local.jsonl", inputs=args, from_list="list.txt")
    code = main(["caption", *args, "--from-list", "list.txt", "--out", "ray.jsonl",
                 "--model", str(bundle), "--device", "cpu", "--batch-size", "4",
                 "--engine", "ray", "--actors", "2", "-q"])  # fmt: skip
    assert code == ExitCode.SOME_FAILED  # broken.jpg and missing.png
    rows = read_rows(inputs / "ray.jsonl")
    assert rows == expected  # same fields, captions, scores and order
    assert {r["key"] for r in rows if r["status"] == "error"} == {
        "photos/broken.jpg",
        "missing.png",
    }
    assert "shard-000.tar::000003.png" in {r["key"] for r in rows}
    assert "photos/caf\\xe9.png" in {r["key"] for r in rows}
    # photos/ (1 input) + shard-000.tar + the list file's 3 entries (shard_size 256)
    layout = OutputLayout.for_output(inputs / "ray.jsonl", None)
    assert sorted(layout.read_done()) == [0, 1, 2]
    assert (
        sum(len(list(layout.read_rows(i))) for i in range(3)) == len(rows) + 2
    )  # 0.png, tall.png twice


@needs_ray
@pytest.mark.parametrize(("out", "fmt"), [("shards", "jsonl"), ("existing", None)])
def test_cli_out_folder_keeps_the_shards_only(
    ray_local, capsys, bundle, inputs, monkeypatch, out, fmt
):
    """docs/scale-out.md: --out DIR (an existing folder, or a name without extension)
    keeps the shards only; the checks before the model once refused it."""
    monkeypatch.chdir(inputs)
    (inputs / "existing").mkdir()
    expected = local_rows(bundle, inputs / "local.jsonl", inputs=("photos",))
    extra = ["--format", fmt] if fmt else []
    code = main(["caption", "photos", "--out", out, *extra, "--model", str(bundle),
                 "--device", "cpu", "--batch-size", "4", "--engine", "ray", "-q"])  # fmt: skip
    assert code == ExitCode.SOME_FAILED, capsys.readouterr().err  # broken.jpg
    layout = OutputLayout.for_output(inputs / out, fmt)
    assert layout.merged is None and layout.shard_fmt == (fmt or "parquet")
    assert sorted(p.name for p in (inputs / out).iterdir()) == [
        "done.jsonl", "plan.json", f"shard-00000.{layout.shard_fmt}"
    ]  # fmt: skip
    assert [row.key for row in layout.read_rows(0)] == [row["key"] for row in expected]
    # A dry run of the resume counts the rows the shard files hold as done.
    capsys.readouterr()
    code = main(["caption", "photos", "--out", out, *extra, "--model", str(bundle),
                 "--engine", "ray", "--resume", "--dry-run"])  # fmt: skip
    assert code == ExitCode.OK
    assert capsys.readouterr().out.splitlines()[0] == (
        f"dry run: 8 input(s) found, 8 already done, 0 to caption -> {out} "
        f"({layout.shard_fmt}); nothing written"
    )


@needs_ray
def test_resume_skips_finished_shards(ray_local, bundle, inputs, monkeypatch):
    monkeypatch.chdir(inputs)
    args = ("shard-000.tar", "photos")
    expected = local_rows(bundle, inputs / "local.parquet", inputs=args)
    options = RunOptions(inputs=args, out=inputs / "ray.parquet")
    model = CaptionerArgs(str(bundle), device="cpu", batch_size=4)
    first = run_on_ray(options, model, RayOptions(shard_size=3))
    assert (first.shards, first.shards_done) == (2, 2)
    assert read_rows(inputs / "ray.parquet") == expected

    # As if the run had died in shard 1, after 3 of its 8 rows: not recorded as done,
    # no merged file yet.
    layout = OutputLayout.for_output(options.out, None)
    done_path = layout.shards_dir / DONE_FILE
    done_path.write_text(done_path.read_text().splitlines(keepends=True)[0])
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pq.read_table(layout.shard_file(1)).slice(0, 3), layout.shard_file(1))
    (inputs / "ray.parquet").unlink()
    # Shard 0's archive is gone: reading it again would give an error row, not captions.
    (inputs / "shard-000.tar").rename(inputs / "moved.tar")

    with pytest.raises(UsageError, match="--resume"):
        run_on_ray(options, model, RayOptions(shard_size=3))
    resumed = run_on_ray(
        RunOptions(inputs=args, out=options.out, resume=True), model, RayOptions(shard_size=3)
    )
    # Per key: shard 0 whole (4 rows, never read), shard 1's first 3 rows.
    assert (resumed.shards_skipped, resumed.shards_done, resumed.skipped) == (1, 1, 7)
    assert resumed.processed == len(expected) - 7
    assert read_rows(inputs / "ray.parquet") == expected


@needs_ray
def test_failing_shard_is_retried_then_reported(ray_local, bundle, inputs, monkeypatch):
    """A path with a NUL byte makes the sources raise in the read task: that shard is
    retried, then reported as failed (no rows, not done); the other shard is written."""
    monkeypatch.chdir(inputs)
    options = RunOptions(inputs=("photos", "bad\x00.png"), out=inputs / "ray.jsonl")
    model = CaptionerArgs(str(bundle), device="cpu", batch_size=4)
    summary = run_on_ray(options, model, RayOptions(shard_size=1, shard_retries=1))
    assert summary.failed_shards == [1]
    assert (summary.shards_done, summary.ok, summary.errors) == (1, 7, 1)
    assert summary.exit_code == ExitCode.SOME_FAILED
    layout = OutputLayout.for_output(options.out, None)
    assert sorted(layout.read_done()) == [0]
    assert len(read_rows(options.out)) == 8  # photos/ only
    assert not layout.shard_file(1).exists()


@needs_ray
def test_caption_dataset_inside_a_ray_program(ray_local, bundle, inputs, monkeypatch):
    monkeypatch.chdir(inputs)
    names = ("photos/0.png", "photos/broken.jpg", "photos/sub/tall.png")
    expected = local_rows(bundle, inputs / "local.jsonl", inputs=names)
    # key + bytes for the first two, key + path (read by the worker) for the last
    records = [{"key": n, "path": n, "data": Path(n).read_bytes()} for n in names[:2]]
    records.append({"key": names[2], "path": str(inputs / names[2]), "data": None})
    items = ray_local.data.from_items(records)
    context = ray_local.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    try:
        model = CaptionerArgs(str(bundle), device="cpu", batch_size=4)
        rows = caption_dataset(items, model, actors=1).take_all()
    finally:
        context.execution_options.preserve_order = False
    expected[2]["path"] = str(inputs / names[2])
    assert rows == expected


@needs_ray
def test_interrupted_job_resumes_to_the_same_rows_on_both_engines(
    ray_local, bundle, inputs, monkeypatch
):
    """One job (a folder with a broken and a Latin-1-named image, a tar shard, a list
    file with a missing path), stopped after its first batch and resumed, on each
    engine: both end with the uninterrupted run's rows, and both resumes skip
    exactly the rows the first run wrote (per key, even mid-shard on Ray)."""
    monkeypatch.chdir(inputs)
    job = RunOptions(inputs=("photos", "shard-000.tar"), from_list="list.txt")
    whole = local_rows(bundle, inputs / "whole.jsonl", inputs=job.inputs, from_list="list.txt")
    captioner = Captioner(bundle, device="cpu", batch_size=4)
    model = CaptionerArgs(str(bundle), device="cpu", batch_size=4)
    engines = {
        "local": lambda options, **kw: run_captioning(captioner, replace(options, workers=1), **kw),
        "ray": lambda options, **kw: run_on_ray(options, model, RayOptions(shard_size=2), **kw),
    }
    for name, run in engines.items():
        options = replace(job, out=inputs / f"{name}.jsonl")
        stop = threading.Event()
        first = run(options, stop=stop, on_progress=lambda _, stop=stop: stop.set())
        assert first.interrupted and 0 < first.processed < len(whole), name
        resumed = run(replace(options, resume=True))
        assert resumed.skipped == first.processed, name
        assert resumed.exit_code == ExitCode.SOME_FAILED, name  # broken.jpg, missing.png
        assert read_rows(options.out) == whole, name


@needs_ray
def test_retry_errors_redoes_only_the_failed_keys_on_both_engines(
    ray_local, bundle, inputs, monkeypatch
):
    """--retry-errors is per key on both engines: only the key whose row was an error
    is captioned again (not its whole shard), and each key stays once."""
    monkeypatch.chdir(inputs)
    captioner = Captioner(bundle, device="cpu", batch_size=4)
    model = CaptionerArgs(str(bundle), device="cpu", batch_size=4)
    engines = {
        "local": lambda options: run_captioning(captioner, replace(options, workers=1)),
        "ray": lambda options: run_on_ray(options, model, RayOptions(shard_size=2)),
    }
    broken = inputs / "photos" / "broken.jpg"
    for name, run in engines.items():
        broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        options = RunOptions(inputs=("photos",), out=inputs / f"{name}.jsonl")
        assert run(options).errors == 1, name
        broken.write_bytes(png_bytes(42))
        retried = run(replace(options, retry_errors=True))
        assert (retried.skipped, retried.ok, retried.errors) == (7, 1, 0), name
    local, ray = read_rows(inputs / "local.jsonl"), read_rows(inputs / "ray.jsonl")
    assert sorted(local, key=lambda r: r["key"]) == sorted(ray, key=lambda r: r["key"])
    assert len(ray) == 8 and all(r["status"] == "ok" for r in ray)
