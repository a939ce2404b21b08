"""The one writer (capbatch/output/durable.py write_file, make_folder): whole files,
never through a link, never over a folder or a special file."""

from __future__ import annotations

import os
import stat

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
