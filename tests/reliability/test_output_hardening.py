"""Issue 18 (outputs): no row lost on resume, the lock keyed on the file, no write
through a planted link, outputs that are regular files, flat memory for failing inputs.

Each test goes through the CLI (`capbatch.cli.main` in-process, or a real process
where a signal, a pipe or a child's peak memory is involved).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from dataclasses import replace
from pathlib import Path

import pytest

from capbatch.cli import main
from capbatch.errors import ExitCode
from capbatch.output import open_output
from capbatch.output_lock import OutputLock, lock_path_for
from capbatch.rows import Row
from tests.io_fixtures import png_bytes
from tests.reliability import test_crash
from tests.runtime_fakes import make_fake_bundle

REPO = Path(__file__).resolve().parents[2]
small_tmpfs = test_crash.small_tmpfs  # a real 64 KiB tmpfs (root), else skipped
ENV = dict(os.environ, PYTHONPATH=str(REPO))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_fake_bundle(tmp_path_factory.mktemp("fake") / "bundle")


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    for index in range(4):
        (root / f"{index}.png").write_bytes(png_bytes((index * 50, 90, 200), (40 + index, 30)))
    return root


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return int(code or 0), capsys.readouterr().err


def one_fatal_line(code: int, err: str) -> str:
    assert code == ExitCode.FATAL, err
    assert "internal error" not in err and "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith("capbatch:")]
    assert len(lines) == 1 and lines[0].startswith("capbatch: error: "), err
    return lines[0]


def row(key: str) -> Row:
    return Row(key, key, "a caption", -0.5, "ok", None, 4, 3, "m")


# -- 1: a resumed Parquet run that fails before its first row keeps the saved rows ----


def test_parquet_resume_failing_before_the_first_row_keeps_saved_rows(capsys, bundle, tmp_path):
    pytest.importorskip("pyarrow")
    out = tmp_path / "rows.parquet"
    killed = open_output(out, "parquet")
    killed.begin(append=False)
    # Rows of the fake bundle's model (a resume of another model's rows is refused first).
    saved = [replace(row(k), model_id="fake-0", encoder="onnxruntime-f32") for k in ("k1", "k2")]
    killed.write(saved)  # never closed: the run was killed, rows in parts
    assert open_output(out, "parquet").done() == {"k1": "ok", "k2": "ok"}

    code, err = run_cli(
        capsys, "caption", "--from-list", tmp_path / "missing.txt", "--out", out,
        "--model", bundle, "--resume", "-q",
    )  # fmt: skip
    assert "cannot read list file" in one_fatal_line(code, err)
    assert open_output(out, "parquet").done() == {"k1": "ok", "k2": "ok"}


# -- 2: --resume never truncates a JSONL file that holds no capbatch rows -------------


@pytest.mark.parametrize(
    "fmt,foreign,message",
    [
        ("jsonl", '{"id": 1}\n{"id": 2, "name": "x"}\n', "is not a capbatch JSONL file"),
        ("jsonl", '{"id": 1}', "is not a capbatch JSONL file"),  # one line, no newline
        ("csv", "id,name", "is not a capbatch CSV"),
    ],
)
def test_resume_refuses_a_file_without_capbatch_rows(
    capsys, bundle, photos, tmp_path, fmt, foreign, message
):
    out = tmp_path / f"foreign.{fmt}"
    out.write_text(foreign)
    for flag in ("--resume", "--retry-errors"):
        code, err = run_cli(capsys, "caption", photos, "--out", out, "--model", bundle, flag)
        assert message in one_fatal_line(code, err)
        assert out.read_text() == foreign


# -- 3: the lock is keyed on the file, not on the spelling of its path ----------------


def test_two_runs_through_a_symlink_alias_conflict(capsys, bundle, photos, tmp_path):
    real = tmp_path / "real.csv"
    real.write_text("")  # the first run's output, just created
    alias = tmp_path / "alias.csv"
    alias.symlink_to(real.name)
    linked_dir = tmp_path / "linked"
    linked_dir.symlink_to(tmp_path, target_is_directory=True)
    assert lock_path_for(alias) == lock_path_for(real) == lock_path_for(linked_dir / "real.csv")
    with OutputLock(real):
        for out in (alias, linked_dir / "real.csv"):
            code, err = run_cli(capsys, "caption", photos, "--out", out, "--model", bundle)
            assert "is being written by another capbatch run" in one_fatal_line(code, err)
    assert real.read_text() == ""


# -- 4: files capbatch creates never follow a planted link ----------------------------


def test_sidecar_temp_name_planted_as_a_link_is_not_followed(capsys, bundle, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(png_bytes())
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    # The name the previous code used, predictable from the pid (this process's).
    (images / f"a.txt.tmp-{os.getpid()}").symlink_to(victim)
    code, err = run_cli(
        capsys, "caption", images, "--format", "txt", "--out", tmp_path / "j.jsonl",
        "--model", bundle, "-q",
    )  # fmt: skip
    assert code == ExitCode.OK, err
    assert victim.read_text() == "precious\n"
    assert (images / "a.txt").read_text().strip() and not (images / "a.txt").is_symlink()


@pytest.mark.parametrize("overwrite", [False, True])
def test_sidecar_that_is_a_symlink_is_refused_not_followed(capsys, bundle, tmp_path, overwrite):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(png_bytes())
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (images / "a.txt").symlink_to(victim)
    journal = tmp_path / "j.jsonl"
    extra = ["--overwrite-sidecars"] if overwrite else []
    code, err = run_cli(
        capsys, "caption", images, "--format", "txt", "--out", journal, "--model", bundle, *extra
    )
    assert code == ExitCode.SOME_FAILED, err
    (record,) = [json.loads(line) for line in journal.read_text().splitlines()]
    assert record["status"] == "error"
    assert record["error"] == "sidecar a.txt is a symbolic link (not followed)"
    assert victim.read_text() == "precious\n" and (images / "a.txt").is_symlink()


def test_parquet_merge_temp_name_planted_as_a_link_is_not_followed(
    capsys, bundle, photos, tmp_path
):
    pytest.importorskip("pyarrow")
    out = tmp_path / "rows.parquet"
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"precious")
    out.with_name(f"{out.name}.tmp-{os.getpid()}").symlink_to(victim)
    code, err = run_cli(capsys, "caption", photos, "--out", out, "--model", bundle, "-q")
    assert code == ExitCode.OK, err
    assert victim.read_bytes() == b"precious"
    assert len(open_output(out, "parquet").done()) == 4


def test_lock_name_planted_as_a_link_is_refused_not_followed(capsys, bundle, photos, tmp_path):
    out = tmp_path / "rows.csv"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    lock_path_for(out).symlink_to(victim)
    code, err = run_cli(capsys, "caption", photos, "--out", out, "--model", bundle)
    assert f"cannot create the lock {lock_path_for(out)}" in one_fatal_line(code, err)
    assert victim.read_text() == "precious\n" and not out.exists()


# -- 5: --out naming a symlink: written through, the link stays, every format ---------


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_out_symlink_writes_the_file_it_names_and_stays_a_link(
    capsys, bundle, photos, tmp_path, fmt
):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    target_dir = tmp_path / "store"
    target_dir.mkdir()
    target = target_dir / f"rows.{fmt}"
    link = tmp_path / f"link.{fmt}"
    link.symlink_to(target)
    code, err = run_cli(capsys, "caption", photos / "0.png", "--out", link, "--model", bundle)
    assert "symbolic link to a missing file" in one_fatal_line(code, err)  # dangling: refused
    assert not target.exists()

    open_output(target, fmt).begin(append=False)  # an empty output ...
    run_cli(capsys, "caption", photos / "0.png", "--out", target, "--model", bundle, "--overwrite")
    code, err = run_cli(
        capsys, "caption", photos, "--out", link, "--model", bundle, "--resume", "-q"
    )  # ... resumed through the link
    assert code == ExitCode.OK, err
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert len(open_output(target, fmt).done()) == 4
    assert sorted(p.name for p in target_dir.iterdir()) == [target.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["photos", "store", link.name])


# -- 11: an --out that is not a regular file or a new path, refused before the model --


def _refused_before_the_model(out: Path, tmp_path: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "capbatch", "caption", str(tmp_path), "--out", str(out),
         "--format", "csv", "--model", str(tmp_path / "no-such-bundle")],
        capture_output=True, env=ENV, timeout=120,
    )  # fmt: skip
    return one_fatal_line(done.returncode, done.stderr.decode())


def test_out_that_is_a_device_or_a_fifo_is_refused_before_loading_the_model(tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    link = tmp_path / "full.csv"
    link.symlink_to("/dev/full")
    stray_lock = Path("/dev/full.lock")
    existed = stray_lock.exists()
    try:
        for out, kind in ((Path("/dev/full"), "a character device"), (link, "a character device"),
                          (fifo, "a FIFO")):  # fmt: skip
            line = _refused_before_the_model(out, tmp_path)
            assert f"is {kind}; --out must name a regular file or a new path" in line, line
            assert not lock_path_for(out).exists() or existed
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and link.is_symlink()
        assert not (tmp_path / "pipe.csv.lock").exists()
        assert stray_lock.exists() == existed
    finally:
        if stray_lock.exists() and not existed:
            stray_lock.unlink()


# -- 6: failing inputs count toward a batch: rows flush, memory stays flat ------------


def _zip_of_zeros(path: Path, members: int, size: int) -> None:
    """A small zip of `members` deflated members of `size` zero bytes (compressed once)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    payload = b"".join(packer.compress(chunk) for _ in range(size // len(chunk))) + packer.flush()
    crc = 0
    for _ in range(size // len(chunk)):
        crc = zlib.crc32(chunk, crc)
    body, directory = bytearray(), bytearray()
    for index in range(members):
        name = f"zeros-{index:02d}.jpg".encode()
        offset = len(body)
        fields = (20, 0, 8, 0, 0, crc, len(payload), size, len(name), 0)
        body += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", *fields) + name + payload
        directory += struct.pack(
            "<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, *fields, 0, 0, 0, 0, offset
        ) + name  # fmt: skip
    end = struct.pack(
        "<4sHHHHIIH", b"PK\x05\x06", 0, 0, members, members, len(directory), len(body), 0
    )
    path.write_bytes(bytes(body + directory + end))


def _empty_tar(path: Path, members: int) -> None:
    with tarfile.open(path, "w") as archive:
        for index in range(members):
            archive.addfile(tarfile.TarInfo(f"empty-{index:06d}.jpg"))


def _run_blocked_on_the_list(
    bundle: Path, archive: Path, out: Path, *, batch: int, rows_before: int
) -> tuple[int, int]:
    """Run over `archive` named in a list on a pipe kept open: once the archive is read,
    the run waits for more of the list, and by then every batch but the last window's
    must be on disk. Returns (rows on disk while it waits, its peak RSS in kB)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "capbatch", "caption", "--from-list", "-", "--out", str(out),
         "--model", str(bundle), "--workers", "1", "--batch-size", str(batch), "-q"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV,
    )  # fmt: skip
    try:
        process.stdin.write(f"{archive}\n".encode())
        process.stdin.flush()
        rows = 0
        deadline = time.monotonic() + 180  # a generous bound, not a timing assert
        while process.poll() is None and rows < rows_before and time.monotonic() < deadline:
            time.sleep(0.05)
            rows = out.read_bytes().count(b"\n") if out.exists() else 0
        assert process.poll() is None, process.stderr.read().decode()
        status = Path(f"/proc/{process.pid}/status").read_text()
        peak_kb = int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM")).split()[1])
        process.stdin.close()
        assert process.wait(timeout=300) == ExitCode.SOME_FAILED, process.stderr.read()
        return rows, peak_kb
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_empty_tar_members_flush_rows_per_batch_with_flat_memory(bundle, tmp_path):
    archive = tmp_path / "empties.tar"
    _empty_tar(archive, 20_000)
    out = tmp_path / "rows.jsonl"
    # The window (2 x 32 + 2 x 1 items) and the batch being filled (< 32) wait: the rest
    # must be written.
    rows, peak_kb = _run_blocked_on_the_list(bundle, archive, out, batch=32, rows_before=19_900)
    assert rows >= 19_900
    assert peak_kb <= 1024 * 1024, f"peak RSS {peak_kb} kB"
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 20_000 and records[0]["error"] == "empty file (0 bytes)"


def test_zip_of_large_undecodable_members_keeps_memory_bounded(bundle, tmp_path):
    archive = tmp_path / "zeros.zip"
    _zip_of_zeros(archive, members=20, size=100 << 20)
    assert archive.stat().st_size < 5 << 20
    out = tmp_path / "rows.jsonl"
    # Waiting: the window (2 x 4 + 2 x 1 items) and a batch being filled (< 4).
    rows, peak_kb = _run_blocked_on_the_list(bundle, archive, out, batch=4, rows_before=7)
    assert rows >= 7
    print(f"peak RSS {peak_kb} kB")
    assert peak_kb <= 1024 * 1024, f"peak RSS {peak_kb} kB"
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 20 and all(r["status"] == "error" for r in records)


# -- 14: Parquet on a full disk, a double Ctrl-C on Parquet, CSV formula injection ----


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(
    capsys, bundle, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # relative keys, so a key starts with the file name
    names = ["=HYPERLINK(1).png", "+1.png", "-2.png", "@sum.png", "'quoted.png", "plain.png"]
    for name in names:
        Path(name).write_bytes(png_bytes())
    Path("=broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    inputs = [*names, "=broken.jpg"]
    args = ("caption", "--out", "rows.csv", "--model", bundle)
    code, err = run_cli(capsys, *args, "--", *inputs)
    assert code == ExitCode.SOME_FAILED, err
    with open("rows.csv", newline="", encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))
    assert [r["key"] for r in records] == ["'" + n if n != "plain.png" else n for n in inputs]
    for record in records:
        for name in ("key", "path", "caption", "error", "model_id"):
            assert record[name][:1] not in ("=", "+", "-", "@"), record
    assert all(r["score"].startswith("-") for r in records if r["status"] == "ok")  # numbers
    # Resume reads the keys back as they were: every input is done, none redone.
    assert sorted(open_output(Path("rows.csv"), "csv").done()) == sorted(inputs)
    code, err = run_cli(capsys, *args, "--resume", "--", *inputs)
    assert code == ExitCode.OK and "0 captioned, 0 failed, 7 already done" in err, err


def test_csv_raw_keeps_cells_as_they_are(capsys, bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("=a.png").write_bytes(png_bytes())
    code, err = run_cli(capsys, "caption", "=a.png", "--out", "rows.csv", "--model", bundle, "--csv-raw")
    assert code == ExitCode.OK, err
    with open("rows.csv", newline="", encoding="utf-8") as handle:
        (record,) = list(csv.DictReader(handle))
    assert record["key"] == "=a.png" and record["path"] == "=a.png"


def test_double_interrupt_on_parquet_exits_3_with_a_message(bundle, tmp_path):
    pytest.importorskip("pyarrow")
    images = tmp_path / "images"
    images.mkdir()
    for index in range(8):
        (images / f"{index}.png").write_bytes(png_bytes((index * 30, 20, 20)))
    out = tmp_path / "rows.parquet"
    process = subprocess.Popen(
        [sys.executable, "-m", "capbatch", "caption", "--from-list", "-", "--out", str(out),
         "--model", str(bundle), "--batch-size", "1", "--workers", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV,
    )  # fmt: skip
    try:
        # 8 paths, and the list stays open: the run writes what its window lets go (the
        # window holds 4 items), then waits for more of the list.
        process.stdin.write("".join(f"{p}\n" for p in sorted(images.iterdir())).encode())
        process.stdin.flush()
        parts = out.with_name(out.name + ".parts")
        deadline = time.monotonic() + 120  # a generous bound, not a timing assert
        while len(list(parts.glob("part-*"))) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)  # stop after this batch ...
        time.sleep(0.5)  # (two signals sent at once may arrive as one)
        process.send_signal(signal.SIGINT)  # ... no: stop now
        code = process.wait(timeout=60)
        err = process.stderr.read().decode()
    finally:
        process.stdin.close()
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == ExitCode.INTERRUPTED, (code, err)
    assert "interrupted:" in err and "rerun with --resume" in err and "Traceback" not in err, err
    assert len(open_output(out, "parquet").done()) >= 4  # the rows are kept (parts or merged)


def test_parquet_on_a_full_disk_is_one_line_and_leaves_nothing_behind(
    capsys, bundle, photos, small_tmpfs
):
    pytest.importorskip("pyarrow")
    (photos / "3.png").unlink()  # 3 parts fit, their merge does not
    out = small_tmpfs / "rows.parquet"
    # Sized for parts of ~8 KB (4 KiB pages): three fit, their merged copy does not.
    (small_tmpfs / "filler").write_bytes(b"\0" * (64 * 1024 - 28 * 1024))
    args = ("caption", photos, "--out", out, "--model", bundle, "--batch-size", "1", "-q")
    code, err = run_cli(capsys, *args)
    assert "No space left on device" in one_fatal_line(code, err)
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler", "rows.parquet.parts"]
    assert len(open_output(out, "parquet").done()) == 3  # the parts hold every row
    (small_tmpfs / "filler").unlink()
    code, err = run_cli(capsys, *args, "--resume")
    assert code == ExitCode.OK, err
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["rows.parquet"]
    assert len(open_output(out, "parquet").done()) == 3
