"""capbatch.sources in one process: what each odd input becomes (its key, its
path and its reason word for word), the size limit at its boundary, globs at
depth, brace patterns both ways, and list files. Written from the survivors of
the sources.py mutation run (docs/testing.md)."""

from __future__ import annotations

import io
import os
import socket
import tarfile
import tempfile
from pathlib import Path

import pytest

from capbatch import sources
from capbatch.sources import escape_undecodable, expand_braces, iter_sources, path_key, read_list

PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00"
    b"\x90wS\xde\x00\x00\x00\x0cIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00"
    b"\x00\x00IEND\xaeB`\x82"
)


def _items(*inputs, **options) -> dict[str, tuple[str | None, bytes | None, str | None]]:
    return {
        item.key: (item.path, item.data, item.error)
        for item in iter_sources([str(i) for i in inputs], **options)
    }


# --------------------------------------------------------------------------- odd files


def test_files_that_are_not_regular_say_what_they_are(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    os.mkfifo(tmp_path / "pipe.txt")  # not an image name: not reported when walking
    short = Path(tempfile.mkdtemp(dir="/tmp"))  # a socket path must be short
    try:
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(short / "s.png"))
            walked = _items(short)
            assert walked == {
                f"{short}/s.png": (f"{short}/s.png", None, "not a regular file (a socket)")
            }
    finally:
        (short / "s.png").unlink(missing_ok=True)
        short.rmdir()
    assert _items(tmp_path) == {
        f"{tmp_path}/pipe.jpg": (f"{tmp_path}/pipe.jpg", None, "not a regular file (a FIFO)")
    }
    assert _items(tmp_path, glob="*.png") == {}  # the glob decides before the kind
    assert _items("/dev/null") == {
        "/dev/null": ("/dev/null", None, "not a regular file (a device)")
    }
    assert _items(tmp_path / "pipe.txt") == {  # named explicitly: reported whatever its name
        f"{tmp_path}/pipe.txt": (f"{tmp_path}/pipe.txt", None, "not a regular file (a FIFO)")
    }


def test_links_that_lead_nowhere_or_back_are_errors_with_their_paths(tmp_path):
    (tmp_path / "a.jpg").symlink_to(tmp_path / "missing.jpg")
    (tmp_path / "b.jpg").write_bytes(PNG)  # after a broken link the walk goes on
    (tmp_path / "loop.jpg").symlink_to("loop.jpg")
    (tmp_path / "notes.txt").symlink_to(tmp_path / "gone.txt")  # not an image name: silent
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to(tmp_path)
    items = _items(tmp_path)
    assert items == {
        f"{tmp_path}/a.jpg": (f"{tmp_path}/a.jpg", None, "broken symlink"),
        f"{tmp_path}/b.jpg": (f"{tmp_path}/b.jpg", PNG, None),
        f"{tmp_path}/loop.jpg": (f"{tmp_path}/loop.jpg", None, "symlink loop"),
        f"{tmp_path}/sub/up": (
            f"{tmp_path}/sub/up",
            None,
            "symlink loop (leads back to a parent)",
        ),
    }
    assert _items(tmp_path / "a.jpg") == {
        f"{tmp_path}/a.jpg": (f"{tmp_path}/a.jpg", None, "broken symlink")
    }
    assert _items(tmp_path / "nothing.jpg") == {
        f"{tmp_path}/nothing.jpg": (f"{tmp_path}/nothing.jpg", None, "no such file or directory")
    }


def test_other_failures_of_an_image_named_entry_keep_their_own_reason(tmp_path):
    (tmp_path / "file.txt").write_text("")
    (tmp_path / "c.jpg").symlink_to(tmp_path / "file.txt" / "x")  # through a file
    (tmp_path / "a.jpg").symlink_to(tmp_path / "missing.jpg")
    assert _items(tmp_path) == {
        f"{tmp_path}/a.jpg": (f"{tmp_path}/a.jpg", None, "broken symlink"),
        f"{tmp_path}/c.jpg": (f"{tmp_path}/c.jpg", None, "cannot read: Not a directory"),
    }
    assert _items(tmp_path, glob="b*") == {}  # outside the glob: not reported at all


def test_without_recursion_subfolders_are_skipped_and_the_walk_goes_on(tmp_path):
    (tmp_path / "a-sub").mkdir()
    (tmp_path / "a-sub" / "inner.png").write_bytes(PNG)
    (tmp_path / "b.png").write_bytes(PNG)
    assert list(_items(tmp_path, recursive=False)) == [f"{tmp_path}/b.png"]
    assert len(_items(tmp_path)) == 2


def test_a_folder_gone_between_its_check_and_its_walk_is_one_error_row(tmp_path, monkeypatch):
    real_stat, calls = os.stat, []

    def stat(path, *args, **kwargs):
        if str(path) == str(tmp_path):
            calls.append(path)
            if len(calls) == 2:  # the walk's own look at it
                raise PermissionError(13, "Permission denied")
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(sources.os, "stat", stat)
    assert _items(tmp_path) == {str(tmp_path): (str(tmp_path), None, "permission denied")}


def test_a_folder_that_cannot_be_listed_is_one_error_row_with_its_path(tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "locked").mkdir()
    real_listdir = os.listdir

    def listdir(path):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return real_listdir(path)

    monkeypatch.setattr(sources.os, "listdir", listdir)
    items = _items(tmp_path)
    assert items[f"{tmp_path}/locked"] == (
        f"{tmp_path}/locked",
        None,
        "cannot list directory: permission denied",
    )
    assert items[f"{tmp_path}/a.png"] == (f"{tmp_path}/a.png", PNG, None)


def test_content_decides_for_files_without_an_image_name_and_svg_is_not_taken(tmp_path):
    (tmp_path / "photo.dat").write_bytes(PNG)
    (tmp_path / "drawing.dat").write_bytes(b'<?xml version="1.0"?><svg xmlns="x"></svg>')
    assert list(_items(tmp_path)) == [f"{tmp_path}/photo.dat"]
    assert _items(tmp_path, sniff=False) == {}


# --------------------------------------------------------------------------- sizes


def test_the_size_limit_takes_a_file_of_exactly_the_limit_and_refuses_one_byte_more(tmp_path):
    exact, over = tmp_path / "exact.png", tmp_path / "over.png"
    exact.write_bytes(PNG)
    over.write_bytes(PNG + b"\0")
    limit = len(PNG)
    assert _items(exact, max_bytes=limit)[str(exact)] == (str(exact), PNG, None)
    assert _items(over, max_bytes=limit)[str(over)] == (
        str(over),
        None,
        f"file too large: {limit + 1} bytes > limit {limit}",
    )


def test_files_over_a_mebibyte_are_read_whole(tmp_path):
    big = tmp_path / "big.png"
    content = PNG + os.urandom(3 * 2**20 + 7)
    big.write_bytes(content)
    assert _items(big)[str(big)][1] == content


def test_a_file_that_grows_past_the_limit_while_read_is_refused(tmp_path, monkeypatch):
    grown = tmp_path / "grown.png"
    grown.write_bytes(PNG)  # fstat says 4 bytes, as before it grew
    real_fstat = os.fstat

    def fstat(fd):
        result = real_fstat(fd)
        return os.stat_result((*result[:6], 4, *result[7:]))

    monkeypatch.setattr(sources.os, "fstat", fstat)
    assert _items(grown, max_bytes=10)[str(grown)] == (
        str(grown),
        None,
        "file too large: over limit 10 bytes",
    )


def test_max_bytes_must_be_positive():
    assert list(iter_sources([], max_bytes=1)) == []
    with pytest.raises(ValueError) as caught:
        list(iter_sources([], max_bytes=0))
    assert str(caught.value) == "max_bytes must be >= 1, got 0"


# --------------------------------------------------------------------------- names


def test_a_glob_without_a_slash_matches_file_names_at_any_depth(tmp_path):
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "x1.png").write_bytes(PNG)
    (deep / "y1.png").write_bytes(PNG)
    assert list(_items(tmp_path, glob="X*.PNG")) == [f"{deep}/x1.png"]  # case-insensitive
    assert list(_items(tmp_path, glob="a/b/y*")) == [f"{deep}/y1.png"]  # with "/": the path
    assert list(_items(tmp_path, glob="b/y*")) == []


def test_archive_members_are_filtered_by_the_glob_and_a_corrupt_archive_names_itself(tmp_path):
    archive = tmp_path / "shard.tar"
    with tarfile.open(archive, "w") as tar:
        for name in ("a1.png", "b1.png"):
            info = tarfile.TarInfo(name)
            info.size = len(PNG)
            tar.addfile(info, io.BytesIO(PNG))
    assert _items(archive, glob="a*") == {f"{archive}::a1.png": (None, PNG, None)}
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"this is not a tar archive at all" * 20)
    ((key, (path, data, error)),) = _items(broken).items()
    assert (key, path, data) == (str(broken), str(broken), None)
    assert error.startswith("not a readable tar archive")


def test_brace_patterns_count_down_as_well_as_up_and_keep_zero_padding():
    assert expand_braces("s-{10..8}.tar") == ["s-10.tar", "s-9.tar", "s-8.tar"]
    assert expand_braces("s-{008..010}.tar") == ["s-008.tar", "s-009.tar", "s-010.tar"]
    assert expand_braces("s-{3..3}.tar") == ["s-3.tar"]


def test_an_existing_name_with_braces_is_taken_literally(tmp_path):
    literal = tmp_path / "shot{1..2}.png"
    literal.write_bytes(PNG)
    assert _items(literal) == {str(literal): (str(literal), PNG, None)}


def test_keys_escape_colon_runs_and_lone_surrogates():
    assert path_key("a.tar::x.jpg") == "a.tar\\x3a\\x3ax.jpg"
    assert path_key("a:b.jpg") == "a:b.jpg"
    assert escape_undecodable("caf\udce9.jpg") == "caf\\xe9.jpg"  # a byte that was not UTF-8
    assert escape_undecodable("bad\ud800.jpg") == "bad\\ud800.jpg"  # a surrogate with no byte


def test_list_files_keep_spaces_and_drop_only_the_line_ending(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"a b.jpg \r\n\r\n  \nc.jpg\nscan_X\n")
    assert list(read_list(listing)) == ["a b.jpg ", "c.jpg", "scan_X"]
