"""The output lock (capbatch.output_lock) in one process: what the lock file
says, the exact message a second run gets, and holders that wrote no (or
broken) details. The cross-process cases are in tests/reliability/test_concurrency.py."""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket

import pytest

from capbatch.errors import OutputError
from capbatch.output_lock import OutputLock, lock_path_for


def test_the_lock_names_its_holder_and_a_second_run_is_told_exactly_who(tmp_path):
    out = tmp_path / "new" / "folder" / "rows.csv"  # created with its parents
    lock = lock_path_for(out)
    assert lock == out.with_name("rows.csv.lock")
    with OutputLock(out) as first:
        assert first.held
        info = json.loads(lock.read_text(encoding="utf-8"))
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        assert info["output"] == str(out)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", info["started"])
        assert first.acquire() is first  # acquiring a held lock again is a no-op
        with pytest.raises(OutputError) as caught:
            OutputLock(out).acquire()  # another open file: flock refuses it
    assert str(caught.value) == (
        f"{out} is being written by another capbatch run (pid {os.getpid()} on "
        f"{socket.gethostname()}, started {info['started']}); wait for it to finish "
        f"or choose another output (lock: {lock})"
    )
    assert not first.held and not lock.exists()  # released: unlinked while held
    with OutputLock(out):  # and free again
        pass


@pytest.mark.parametrize("content", [b"", b"not json", b"[1, 2]", b'{"host": "h"}'])
def test_a_holder_without_details_is_just_another_run(tmp_path, content):
    out = tmp_path / "rows.jsonl"
    lock = lock_path_for(out)
    lock.write_bytes(content)
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by someone else
        with pytest.raises(OutputError) as caught:
            OutputLock(out).acquire()
    finally:
        os.close(fd)
    assert str(caught.value).startswith(f"{out} is being written by another capbatch run; ")
    assert lock.read_bytes() == content  # the holder's file is left as it was


def test_a_holder_with_only_a_pid_says_what_it_does_not_know(tmp_path):
    out = tmp_path / "rows.jsonl"
    lock = lock_path_for(out)
    lock.write_text('{"pid": 7}')
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(OutputError) as caught:
            OutputLock(out).acquire()
    finally:
        os.close(fd)
    assert " by another capbatch run (pid 7 on ?, started ?); " in str(caught.value)


def test_a_lock_left_by_a_dead_run_is_taken_over(tmp_path):
    out = tmp_path / "rows.csv"
    lock = lock_path_for(out)
    lock.write_text('{"pid": 1, "host": "gone", "started": "then"}')  # nobody holds it
    with OutputLock(out):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
