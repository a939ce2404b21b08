"""`capbatch caption` / `capbatch info` end to end on real image files (fake-weight bundle)."""

from __future__ import annotations

import csv
import io
import json
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from capbatch.cli import main
from capbatch.errors import ExitCode
from capbatch.output_lock import OutputLock
from tests.runtime.test_captioner import REPO, run_without_torch
from tests.runtime_fakes import make_fake_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_fake_bundle(tmp_path_factory.mktemp("fake") / "bundle")


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """capbatch.cli.main in-process: (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return int(code or 0), captured.out, captured.err


def png_bytes(seed: int, size=(40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def photos(tmp_path):
    """photos/a.png, photos/b.jpg, photos/nested/deeper/c.png, photos/broken.jpg."""
    root = tmp_path / "photos"
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "a.png").write_bytes(png_bytes(1))
    Image.open(io.BytesIO(png_bytes(2))).save(root / "b.jpg", quality=90)
    (root / "nested" / "deeper" / "c.png").write_bytes(png_bytes(3, (50, 70)))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_folder_to_csv_with_error_rows(capsys, bundle, photos, tmp_path):
    out = tmp_path / "captions.csv"
    code, _, err = run_cli(
        capsys, "caption", photos, "--out", out, "--model", bundle, "--device", "cpu"
    )
    assert code == ExitCode.SOME_FAILED
    rows = read_csv(out)
    keys = [r["key"] for r in rows]
    # sorted walk, depth first: input order
    assert keys == [
        str(photos / n) for n in ("a.png", "b.jpg", "broken.jpg", "nested/deeper/c.png")
    ]
    status = {r["key"].rsplit("/", 1)[1]: r for r in rows}
    assert status["broken.jpg"]["status"] == "error" and status["broken.jpg"]["error"]
    assert all(status[n]["status"] == "ok" and status[n]["caption"] for n in ("a.png", "c.png"))
    assert (status["c.png"]["width"], status["c.png"]["height"]) == ("50", "70")
    assert "3 captioned, 1 failed" in err


def test_all_good_exit_zero_and_jsonl(capsys, bundle, photos, tmp_path):
    (photos / "broken.jpg").unlink()
    out = tmp_path / "captions.jsonl"
    code, _, _ = run_cli(
        capsys,
        "caption",
        photos,
        "-o",
        out,
        "--model",
        bundle,
        "--beam-size",
        "3",
        "-q",
        "--threads",
        "1",
    )
    assert code == ExitCode.OK
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(r["status"] == "ok" and r["score"] <= 0 for r in rows)


def test_tar_and_zip_archives_to_parquet(capsys, bundle, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    tar_path = tmp_path / "shard.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name, seed in (("x/1.png", 1), ("x/2.png", 2)):
            data = png_bytes(seed)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    zip_path = tmp_path / "more.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("3.png", png_bytes(3))
        archive.writestr("bad.png", b"nope")
    out = tmp_path / "captions.parquet"
    code, _, _ = run_cli(
        capsys, "caption", tar_path, zip_path, "--out", out, "--model", bundle, "-q"
    )
    assert code == ExitCode.SOME_FAILED
    table = pq.read_table(out).to_pylist()
    assert [r["key"] for r in table] == [
        f"{tar_path}::x/1.png",
        f"{tar_path}::x/2.png",
        f"{zip_path}::3.png",
        f"{zip_path}::bad.png",
    ]
    assert [r["status"] for r in table] == ["ok", "ok", "ok", "error"]
    assert table[0]["path"] is None


def test_sidecars(capsys, bundle, photos, tmp_path):
    journal = tmp_path / "journal.jsonl"
    (photos / "a.txt").write_text("my own caption\n")
    code, _, _ = run_cli(
        capsys, "caption", photos, "--format", "txt", "--out", journal, "--model", bundle, "-q"
    )
    assert code == ExitCode.SOME_FAILED  # broken.jpg, and a.txt is never overwritten
    assert (photos / "a.txt").read_text() == "my own caption\n"
    assert (photos / "b.txt").read_text().strip()
    assert (photos / "nested" / "deeper" / "c.txt").read_text().strip()
    rows = {json.loads(line)["key"]: json.loads(line) for line in journal.read_text().splitlines()}
    assert rows[str(photos / "a.png")]["status"] == "error"


def test_resume_after_partial_run_gives_each_key_once(capsys, bundle, photos, tmp_path):
    out = tmp_path / "captions.csv"
    first = [photos / "a.png", photos / "b.jpg"]
    code, _, _ = run_cli(capsys, "caption", *first, "--out", out, "--model", bundle, "-q")
    assert code == ExitCode.OK
    with open(out, "a", encoding="utf-8") as handle:
        handle.write(f"{photos / 'broken.jpg'},torn row with no newline")  # a crash mid-row
    code, _, err = run_cli(capsys, "caption", photos, "--out", out, "--model", bundle)
    assert code == ExitCode.FATAL and "--resume" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "caption", photos, "--out", out, "--model", bundle, "--resume")
    assert code == ExitCode.SOME_FAILED
    assert "2 already done" in err
    keys = [r["key"] for r in read_csv(out)]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 4


def test_locked_output_is_refused(capsys, bundle, photos, tmp_path):
    out = tmp_path / "captions.csv"
    with OutputLock(out):
        code, _, err = run_cli(capsys, "caption", photos, "--out", out, "--model", bundle)
    assert code == ExitCode.FATAL
    assert err.count("\n") <= 2 and "being written by" in err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--resume", "--overwrite"], "exclude each other"),
        (["--format", "xml"], "xml"),
        (["--beam-size", "0"], "beam-size"),
        (["--device", "cuda"], "--device cuda"),
        (["--threads", "0"], "--threads"),
        (["--threads", "1", "--engine", "ray"], "local engine only"),
    ],
)
def test_bad_options_are_one_line_fatal(capsys, bundle, photos, tmp_path, args, message):
    code, _, err = run_cli(
        capsys, "caption", photos, "--out", tmp_path / "o.csv", "--model", bundle, *args
    )
    assert code == ExitCode.FATAL
    assert message in err and "Traceback" not in err


def test_bad_model_is_one_line_fatal(capsys, photos, tmp_path):
    code, _, err = run_cli(
        capsys, "caption", photos, "--out", tmp_path / "o.csv", "--model", tmp_path
    )
    assert code == ExitCode.FATAL
    assert err.startswith("capbatch: error:") and "manifest.json" in err


def test_info(capsys, bundle, monkeypatch, tmp_path):
    code, out, _ = run_cli(capsys, "info", "--model", bundle)
    assert code == ExitCode.OK
    for expected in ("onnxruntime", "numpy", "pillow", "CPUExecutionProvider", "fake-0", "bleu4"):
        assert expected in out
    from capbatch import bundle as bundle_module

    monkeypatch.setattr(bundle_module, "DEFAULT_BUNDLE_DIR", tmp_path / "none")
    code, out, _ = run_cli(capsys, "info")
    assert code == ExitCode.OK and "no default model is installed" in out


def test_help_has_examples(capsys):
    code, out, _ = run_cli(capsys, "caption", "--help")
    assert code == ExitCode.OK
    assert "Examples" in out and "--resume" in out and "Exit codes" in out


def test_cli_runs_without_torch(bundle, photos, tmp_path):
    out = tmp_path / "no-torch.csv"
    done = run_without_torch(
        tmp_path,
        f"""
        import sys
        from capbatch.cli import main
        try:
            code = main(["caption", {str(photos)!r}, "--out", {str(out)!r},
                         "--model", {str(bundle)!r}, "-q"])
        except SystemExit as exc:
            code = exc.code
        assert "torch" not in sys.modules, "torch was imported"
        print("EXIT", code)
        """,
    )
    assert done.returncode == 0, done.stderr
    assert "EXIT 1" in done.stdout  # broken.jpg: some failed
    assert len(read_csv(out)) == 4


def test_sigint_exits_3_with_whole_rows(bundle, photos, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "interrupted.csv"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(
        [sys.executable, "-m", "capbatch", "caption", "--from-list", "-", "--out", str(out),
         "--model", str(bundle), "--batch-size", "1"],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    process.stdin.write(f"{photos / 'a.png'}\n{photos / 'b.jpg'}\n".encode())
    process.stdin.flush()
    process.stderr.readline()  # "model ... on ...": loaded, now waiting for more of the list
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    process.stdin.close()
    assert process.wait(timeout=60) == ExitCode.INTERRUPTED
    err = process.stderr.read().decode()
    assert "Traceback" not in err
    if out.exists():  # only whole rows, never a torn one
        text = out.read_text()
        assert text.endswith("\n")
        assert all(r["status"] in ("ok", "error") for r in read_csv(out))


def test_fatal_error_before_any_row_leaves_no_output(capsys, bundle, tmp_path):
    out = tmp_path / "never.csv"
    args = ("caption", "--from-list", tmp_path / "missing.txt", "--out", out, "--model", bundle)
    code, _, err = run_cli(capsys, *args)
    assert code == ExitCode.FATAL and "cannot read list file" in err
    assert not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    for _ in range(2):  # a header-only CSV from a run over nothing does not block a rerun
        args = ("caption", empty, "--out", out, "--model", bundle, "-q", "--allow-empty")
        code, _, _ = run_cli(capsys, *args)
        assert code == ExitCode.OK


def test_pillow_warnings_do_not_reach_stderr(bundle, tmp_path):
    """A JPEG with corrupt EXIF makes Pillow warn; the run captions it quietly."""
    import subprocess
    import sys

    photos = tmp_path / "photos"
    photos.mkdir()
    buffer = io.BytesIO()
    corrupt_exif = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00\x12\x01\x03\x00\x01\x00"
    Image.new("RGB", (40, 30), "red").save(buffer, "JPEG", exif=corrupt_exif)
    (photos / "exif.jpg").write_bytes(buffer.getvalue())
    out = tmp_path / "o.csv"
    result = subprocess.run(
        [sys.executable, "-W", "always", "-m", "capbatch", "caption", str(photos)]
        + ["--out", str(out), "--model", str(bundle), "--quiet"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert read_csv(out)[0]["status"] == "ok"
    assert "EXIF" not in result.stderr and "Warning" not in result.stderr, result.stderr


def test_refused_sidecars_are_counted_as_failed(capsys, bundle, photos, tmp_path):
    """A sidecar the writer refuses (one left with another caption) is an error row,
    and the summary line, the exit code and the journal all say so."""
    (photos / "broken.jpg").unlink()
    journal = tmp_path / "journal.jsonl"
    args = ("caption", photos, "--format", "txt", "--out", journal, "--model", bundle)
    code, _, err = run_cli(capsys, *args)
    assert code == ExitCode.OK and "3 captioned, 0 failed" in err
    (photos / "a.txt").write_text("a caption from another run\n")
    code, _, err = run_cli(capsys, *args, "--overwrite", "--beam-size", "3")
    rows = [json.loads(line) for line in journal.read_text().splitlines()]
    errors = {r["key"]: r["error"] for r in rows if r["status"] == "error"}
    # a.txt for sure; beam 3 changes the fake model's other captions too
    assert "sidecar a.txt exists" in errors[str(photos / "a.png")]
    assert f"{3 - len(errors)} captioned, {len(errors)} failed" in err
    assert code == ExitCode.SOME_FAILED
    assert (photos / "a.txt").read_text() == "a caption from another run\n"


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--model", "{tmp}"], ExitCode.FATAL),  # a bundle error
        (["--resume", "--overwrite"], ExitCode.FATAL),  # a usage error
        (["--model", "{bundle}"], ExitCode.SOME_FAILED),  # broken.jpg
        (["--model", "{bundle}", "--beam-size", "zero"], ExitCode.FATAL),  # click's own
    ],
)
def test_debug_keeps_every_exit_code(capsys, bundle, photos, tmp_path, args, expected):
    """--debug adds the traceback; it never changes what a scheduler sees."""
    args = [a.format(tmp=tmp_path, bundle=bundle) for a in args]
    out = ("caption", photos, "--out", tmp_path / "o.csv", "-q", *args)
    code, _, plain = run_cli(capsys, *out)
    assert code == expected
    (tmp_path / "o.csv").unlink(missing_ok=True)
    code, _, debug = run_cli(capsys, "--debug", *out)
    assert code == expected
    if expected == ExitCode.FATAL and "zero" not in args:
        assert "Traceback" in debug and "Traceback" not in plain


def test_debug_keeps_the_exit_code_of_an_internal_error(
    capsys, bundle, photos, tmp_path, monkeypatch
):
    from capbatch import captioner

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(captioner, "load_bundle", broken)
    out = ("caption", photos, "--out", tmp_path / "o.csv", "--model", bundle, "-q")
    for debug in ((), ("--debug",)):
        code, _, err = run_cli(capsys, *debug, *out)
        assert code == ExitCode.FATAL and "a bug" in err
