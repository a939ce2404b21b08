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


def _names(monkeypatch, *tokens):
    """Make secrets.token_hex in durable.py return these, in order."""
    from capbatch.output import durable

    queue = list(tokens)
    monkeypatch.setattr(durable.secrets, "token_hex", lambda n: queue.pop(0))
    return durable


def test_a_temporary_name_already_taken_by_a_planted_link_is_skipped(tmp_path, monkeypatch):
    durable = _names(monkeypatch, "a" * 16, "b" * 16)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep me")
    target = tmp_path / "captions.csv"
    planted = tmp_path / f".captions.csv.tmp-{'a' * 16}"
    planted.symlink_to(victim)  # an attacker guessed the first name
    durable.write_file(target, b"new rows\n")
    assert target.read_bytes() == b"new rows\n" and not target.is_symlink()
    assert victim.read_bytes() == b"keep me"  # never written through
    assert planted.is_symlink()  # left as it was; the second name was used and is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["victim.txt", "captions.csv", planted.name]
    )


def test_files_capbatch_creates_are_readable_by_others_as_the_umask_allows(tmp_path):
    from capbatch.output.durable import write_file

    old = os.umask(0o022)
    try:
        write_file(tmp_path / "a.csv", b"x\n")
        write_file(str(tmp_path / "b.txt"), "y", replace=False)
    finally:
        os.umask(old)
    assert oct((tmp_path / "a.csv").stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "b.txt").stat().st_mode & 0o777) == oct(0o644)


def test_a_new_file_skips_a_taken_temporary_name_and_never_overwrites(tmp_path, monkeypatch):
    durable = _names(monkeypatch, "1" * 16, "2" * 16, "3" * 16)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / f".side.txt.tmp-{'1' * 16}").symlink_to(victim)
    durable.write_file(str(tmp_path / "side.txt"), "first", replace=False)
    assert (tmp_path / "side.txt").read_text() == "first" and victim.read_text() == "keep me"
    with pytest.raises(FileExistsError):
        durable.write_file(str(tmp_path / "side.txt"), "second", replace=False)
    assert (tmp_path / "side.txt").read_text() == "first"  # left as it is
    assert not (tmp_path / f".side.txt.tmp-{'3' * 16}").exists()  # its temporary file removed
