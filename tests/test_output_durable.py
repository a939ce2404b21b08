"""capbatch.output.durable in one process: the exact refusals of --out targets,
appends that only ever add, and write errors in one line. Written from the
survivors of the output/ mutation run (docs/testing.md)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from capbatch.errors import OutputError
from capbatch.output.durable import append_line, check_output_target, output_error


def test_append_line_adds_utf8_lines_and_keeps_what_was_there(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b'{"key": "old"}\n')
    append_line(path, '{"key": "caf\u00e9"}')
    append_line(path, "second")
    assert path.read_bytes() == b'{"key": "old"}\n{"key": "caf\xc3\xa9"}\nsecond\n'


def test_output_targets_that_are_not_regular_files_are_refused_by_kind(tmp_path):
    folder = tmp_path / "rows.csv"
    folder.mkdir()
    with pytest.raises(OutputError) as caught:
        check_output_target(folder)
    assert str(caught.value) == f"{folder} is a directory; --out must name a file"
    fifo = tmp_path / "rows.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(OutputError) as caught:
        check_output_target(fifo)
    assert str(caught.value) == f"{fifo} is a FIFO; --out must name a regular file or a new path"
    dangling = tmp_path / "link.csv"
    dangling.symlink_to(tmp_path / "missing.csv")
    with pytest.raises(OutputError) as caught:
        check_output_target(dangling)
    assert str(caught.value) == (
        f"{dangling} is a symbolic link to a missing file ({tmp_path / 'missing.csv'}); "
        "--out must name a regular file or a new path"
    )


def test_a_plain_path_is_kept_as_given_and_a_link_means_its_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real.csv").write_text("")
    assert check_output_target(Path("real.csv")) == Path("real.csv")  # not made absolute
    assert check_output_target(Path("new.csv")) == Path("new.csv")
    Path("alias.csv").symlink_to("real.csv")
    assert check_output_target(Path("alias.csv")) == tmp_path.resolve() / "real.csv"


def test_write_errors_are_one_line_with_the_systems_words():
    full = OSError(errno.ENOSPC, "No space left on device")
    assert str(output_error(Path("rows.csv"), full)) == (
        "cannot write rows.csv: No space left on device"
    )
    bare = OSError("disk gone")  # no strerror: the exception's own text
    assert str(output_error(Path("rows.csv"), bare)) == "cannot write rows.csv: disk gone"
