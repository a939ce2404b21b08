"""The checks of every path a run writes (capbatch/write_targets.py), by their exact
words: links, folders and special files, inputs, foreign files, collisions and
folders that cannot take a new file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from capbatch import write_targets
from capbatch.errors import UsageError
from capbatch.write_targets import (
    REPORT_MARK,
    RunInputs,
    check_distinct,
    check_file_target,
    check_folder_target,
    check_folder_writable,
    is_report_file,
    is_stats_file,
)

NONE = RunInputs(frozenset(), ())


def refusal(call) -> str:
    with pytest.raises(UsageError) as caught:
        call()
    return str(caught.value)


def target(path, *, inputs=NONE, overwrite=False, ours=lambda p: False, what="the file", **probe):
    check_file_target(
        "--stats-json", path, inputs=inputs, overwrite=overwrite, ours=ours, what=what, **probe
    )


# -- the run's inputs -------------------------------------------------------------------


def test_run_inputs_are_real_files_and_folders(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "list.txt").write_text("a.jpg\n")
    (tmp_path / "link").symlink_to(tmp_path / "photos")
    inputs = RunInputs.of(
        [None, tmp_path / "photos", str(tmp_path / "list.txt"), "", "-", tmp_path / "gone"]
    )
    assert inputs.files == frozenset({str(tmp_path / "list.txt")})
    assert inputs.folders == (str(tmp_path / "photos"),)
    assert inputs.holds(tmp_path / "list.txt") and inputs.holds(tmp_path / "photos")
    assert inputs.holds(tmp_path / "photos" / "deep" / "a.jpg")
    assert inputs.holds(tmp_path / "link" / "a.jpg")  # through a link: the same folder
    assert not inputs.holds(tmp_path / "photos2" / "a.jpg")  # a prefix is not a parent
    assert not inputs.holds(tmp_path / "stats.json")
    assert RunInputs.of([tmp_path / "link"]).folders == (str(tmp_path / "photos"),)


def test_stdin_and_empty_names_are_no_inputs_even_where_such_files_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-").write_text("a file named -")
    assert RunInputs.of(["-", ""]) == RunInputs(frozenset(), ())


def test_a_stats_file_is_a_json_object_with_its_version(tmp_path):
    path = tmp_path / "s.json"
    for text, ours in (
        ('{"stats_version": 1}', True), ('{"rows": 1}', False), ('["stats_version"]', False),
        ("not json", False), ("", False),
    ):  # fmt: skip
        path.write_text(text)
        assert is_stats_file(path) is ours, text
    assert is_stats_file(tmp_path / "missing.json") is False
    path.write_text(json.dumps({"stats_version": 1, "pad": "x" * (1 << 20)}))
    assert is_stats_file(path) is False  # read up to 1 MiB: a larger file is not ours


def test_a_report_is_marked_in_its_first_4_kib(tmp_path):
    page = tmp_path / "r.html"
    page.write_bytes(b"<html><head>" + REPORT_MARK + b"</head>")
    assert is_report_file(page) is True
    page.write_bytes(b" " * (4096 - len(REPORT_MARK)) + REPORT_MARK)
    assert is_report_file(page) is True  # ends at byte 4096
    page.write_bytes(b" " * (4097 - len(REPORT_MARK)) + REPORT_MARK)
    assert is_report_file(page) is False
    assert is_report_file(tmp_path / "gone.html") is False


# -- a file written at the end ----------------------------------------------------------


def test_a_new_file_in_a_writable_folder_passes_and_leaves_nothing(tmp_path):
    target(tmp_path / "new" / "deeper" / "s.json")
    assert list(tmp_path.iterdir()) == []  # the probe was removed, no folder made


def test_each_refusal_of_a_file_target_in_its_words(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("x")
    (tmp_path / "link").symlink_to(victim)
    assert refusal(lambda: target(tmp_path / "link")) == (
        f"--stats-json {tmp_path / 'link'} is a symbolic link (to {victim}); capbatch does "
        "not write through links: name the file itself"
    )
    assert refusal(lambda: target(tmp_path, what="the JSON file")) == (
        f"--stats-json {tmp_path} is a directory; name the JSON file to write"
    )
    os.mkfifo(tmp_path / "fifo")
    assert refusal(lambda: target(tmp_path / "fifo")) == (
        f"--stats-json {tmp_path / 'fifo'} is a FIFO; name a regular file"
    )
    inputs = RunInputs.of([victim])
    assert refusal(lambda: target(victim, inputs=inputs, overwrite=True)) == (
        f"--stats-json {victim} is an input of this run; name another file"
    )
    assert refusal(lambda: target(victim)) == (
        f"--stats-json {victim} exists and was not written by capbatch; "
        "pass --overwrite to replace it, or name another file"
    )
    target(victim, overwrite=True)
    target(victim, ours=lambda path: path == victim)
    too_long = tmp_path / ("x" * 300)
    assert refusal(lambda: target(too_long)) == f"--stats-json {too_long}: File name too long"


def test_a_folder_that_cannot_be_written_is_found_by_the_probe(tmp_path, monkeypatch):
    assert refusal(lambda: target(Path("/proc/x.json"))).startswith(
        "--stats-json /proc/x.json: cannot write in /proc: "
    )
    target(Path("/proc/x.json"), probe=False)  # a dry run asks os.access only
    (tmp_path / "file").write_text("")
    assert refusal(lambda: target(tmp_path / "file" / "s.json")) == (
        f"--stats-json {tmp_path / 'file' / 's.json'}: Not a directory"
    )
    assert refusal(lambda: target(tmp_path / "file" / "new" / "s.json")) == (
        f"--stats-json {tmp_path / 'file' / 'new' / 's.json'}: Not a directory"
    )
    assert refusal(
        lambda: check_folder_writable(tmp_path / "file", "--x shown")
    ) == f"--x shown: {tmp_path / 'file'} is not a directory"

    def no_probe(path, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(write_targets, "create_exclusive", no_probe)
    assert refusal(lambda: target(tmp_path / "s.json")) == (
        f"--stats-json {tmp_path / 's.json'}: cannot write in {tmp_path}: Read-only file system"
    )


def test_the_probe_is_a_random_hidden_name_removed_at_once(tmp_path, monkeypatch):
    made = []
    real = write_targets.create_exclusive

    def record(path, **kwargs):
        made.append(Path(path))
        return real(path, **kwargs)

    monkeypatch.setattr(write_targets, "create_exclusive", record)
    check_folder_writable(tmp_path / "a" / "b", "--x shown")
    check_folder_writable(tmp_path, "--x shown")
    assert [p.parent for p in made] == [tmp_path, tmp_path]
    assert all(p.name.startswith(".capbatch-probe-") and len(p.name) == 32 for p in made)
    assert made[0] != made[1] and list(tmp_path.iterdir()) == []


# -- a folder the run writes into -------------------------------------------------------


def folder(path, inputs=None, **probe):
    check_folder_target("--attention-dir", path, inputs=inputs, **probe)


def test_each_refusal_of_a_folder_target_in_its_words(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert refusal(lambda: folder(tmp_path / "link")) == (
        f"--attention-dir {tmp_path / 'link'} is a symbolic link (to {tmp_path / 'real'}); "
        "capbatch does not write through links: name the folder itself"
    )
    (tmp_path / "file").write_text("")
    assert refusal(lambda: folder(tmp_path / "file")) == (
        f"--attention-dir {tmp_path / 'file'} exists and is not a folder"
    )
    inputs = RunInputs.of([tmp_path / "real"])
    assert refusal(lambda: folder(tmp_path / "real" / "maps", inputs)) == (
        f"--attention-dir {tmp_path / 'real' / 'maps'} is inside an input folder: its files "
        "would be captioned by the next run; name a folder outside the inputs"
    )
    assert refusal(lambda: folder(tmp_path / "file" / "maps")) == (
        f"--attention-dir {tmp_path / 'file' / 'maps'}: Not a directory"
    )
    folder(tmp_path / "real")  # an existing folder
    folder(tmp_path / "new" / "maps")  # one made at the run
    assert refusal(lambda: folder(Path("/proc/maps"))).startswith(
        "--attention-dir /proc/maps: cannot write in /proc: "
    )
    assert refusal(lambda: folder(Path("/proc/self"))).startswith("--attention-dir /proc/self")
    folder(Path("/proc/maps"), probe=False)


# -- two targets on one file ------------------------------------------------------------


def test_two_targets_on_one_file_are_refused_naming_both(tmp_path):
    out, stats = tmp_path / "c.csv", tmp_path / "s.json"
    check_distinct({"--out": Path("-"), "--stats-json": None, "--report": stats})
    check_distinct({"--out": "-", "--report": "-"})  # stdout is no file
    assert refusal(lambda: check_distinct({"--out": out, "--report": out})) == (
        f"--report {out} would overwrite the output itself"
    )
    assert refusal(
        lambda: check_distinct({"--out": None, "--stats-json": stats, "--report": stats})
    ) == f"--report {stats} is the same file as --stats-json"
    (tmp_path / "alias").symlink_to(stats)
    assert "is the same file as --stats-json" in refusal(
        lambda: check_distinct({"--stats-json": stats, "--report": tmp_path / "alias"})
    )
