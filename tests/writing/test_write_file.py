"""The one writer (capbatch/output/durable.py write_file, make_folder): whole files,
never through a link, never over a folder or a special file."""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

import pytest

from capbatch.errors import OutputError
from capbatch.output.durable import make_folder, write_file


def test_write_file_replaces_a_link_at_its_target_instead_of_following_it(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    target = tmp_path / "out.json"
    target.symlink_to(victim)
    write_file(target, "new")
    assert victim.read_text() == "keep"
    assert not target.is_symlink() and target.read_text() == "new"


def test_without_replace_an_existing_name_is_left_alone(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("first")
    with pytest.raises(FileExistsError):
        write_file(target, "second", replace=False)
    assert target.read_text() == "first"
    assert os.listdir(tmp_path) == ["a.txt"]  # no temporary left


def test_content_may_be_bytes_text_or_a_writer_function(tmp_path):
    assert write_file(tmp_path / "b", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert write_file(tmp_path / "t", "é").read_bytes() == "é".encode()
    written = write_file(tmp_path / "f", lambda handle: handle.write(b"streamed"))
    assert written.read_bytes() == b"streamed"


def test_a_failing_writer_leaves_neither_the_target_nor_a_temporary(tmp_path):
    def boom(handle):
        handle.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_file(tmp_path / "x.bin", boom)
    assert os.listdir(tmp_path) == []


def test_a_folder_or_a_fifo_at_the_target_is_refused(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError):
        write_file(tmp_path / "dir", "x")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OutputError, match="is a FIFO"):
        write_file(tmp_path / "fifo", "x")
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)


def test_missing_folders_are_made(tmp_path):
    assert write_file(tmp_path / "a" / "b" / "c.txt", "x").read_text() == "x"


def test_make_folder_refuses_a_link_or_a_file_in_its_place(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(OutputError, match="is a symbolic link"):
        make_folder(tmp_path / "link", "the shards folder")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        make_folder(tmp_path / "file", "the shards folder")
    assert make_folder(tmp_path / "new" / "deep", "x").is_dir()


def test_a_link_to_a_folder_at_the_target_is_replaced_not_entered(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "out.json").symlink_to(tmp_path / "folder")
    write_file(tmp_path / "out.json", "x")
    assert (tmp_path / "out.json").read_text() == "x"
    assert list((tmp_path / "folder").iterdir()) == []


def test_the_refusals_name_the_target(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError) as caught:
        write_file(tmp_path / "dir", "x")
    error = caught.value
    assert (error.errno, error.strerror, error.filename) == (
        errno.EISDIR, "Is a directory", str(tmp_path / "dir"),
    )  # fmt: skip
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OutputError) as refused:
        write_file(tmp_path / "fifo", "x")
    assert str(refused.value) == f"{tmp_path / 'fifo'} is a FIFO; capbatch writes regular files only"


def test_the_temporary_name_is_hidden_random_and_fits_a_long_name(tmp_path, monkeypatch):
    from capbatch.output import durable

    names = []
    real = durable.create_exclusive

    def record(path, **kwargs):
        names.append(str(path))
        return real(path, **kwargs)

    monkeypatch.setattr(durable, "create_exclusive", record)
    long_name = "x" * 255  # the longest name a file may have
    write_file(tmp_path / long_name, "x")
    write_file(tmp_path / "a.txt", "y")
    assert re.fullmatch(r"\.x{200}\.tmp-[0-9a-f]{16}", names[0]), names[0]
    assert re.fullmatch(r"\.a\.txt\.tmp-[0-9a-f]{16}", names[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([long_name, "a.txt"])


def test_writing_into_an_existing_folder_and_a_relative_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "made").mkdir()
    assert write_file(Path("made") / "a", "1").read_text() == "1"
    assert write_file(Path("b"), "2").read_text() == "2"  # no folder: the working one


def test_make_folder_words_and_an_existing_folder(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(OutputError) as caught:
        make_folder(tmp_path / "link", "the shards folder")
    assert str(caught.value) == (
        f"the shards folder {tmp_path / 'link'} is a symbolic link (to {real}); capbatch does "
        "not write through links: remove it or name another folder"
    )
    assert make_folder(real, "x") == real
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError) as caught:
        make_folder(tmp_path / "file" / "sub", "the parts folder")
    assert str(caught.value) == f"cannot use the parts folder {tmp_path / 'file' / 'sub'}: Not a directory"
    with pytest.raises(OutputError) as caught:
        make_folder(Path("/proc/capbatch-shards"), "the shards folder")
    assert str(caught.value).startswith("cannot create the shards folder /proc/capbatch-shards: ")


def test_an_output_name_too_long_is_one_line(tmp_path):
    from capbatch.output.durable import check_output_target

    name = tmp_path / ("x" * 300)
    with pytest.raises(OutputError) as caught:
        check_output_target(name)
    assert str(caught.value) == f"cannot use {name} as the output: File name too long"
