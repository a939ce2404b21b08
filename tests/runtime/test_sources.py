"""iter_sources: every input kind, deterministic keys and order, errors as items."""

from __future__ import annotations

import io
import os
import random
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from capbatch import sources
from capbatch.errors import UsageError
from capbatch.sources import SourceItem, expand_braces, iter_sources
from tests.io_fixtures import HTML_BYTES, jpeg_bytes, png_bytes


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def keys(items) -> list[str]:
    return [item.key for item in items]


def errors(items) -> dict[str, str]:
    return {item.key: item.error for item in items if item.error}


@pytest.fixture
def photos(tmp_path, monkeypatch) -> Path:
    """photos/ with nested folders, non-images and an extensionless JPEG."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "photos"
    write(root / "b.jpg", jpeg_bytes())
    write(root / "a.PNG", png_bytes())
    write(root / "notes.txt", b"not an image")
    write(root / "no_extension", jpeg_bytes())  # found by its magic bytes
    write(root / "sub" / "deeper" / "c.jpeg", jpeg_bytes())
    write(root / "sub" / "d.webp", b"RIFF\x00\x00\x00\x00WEBPVP8 ")
    write(root / "sub" / "page.html", HTML_BYTES)
    return root


def test_directory_walk_is_sorted_recursive_and_keyed_by_path(photos):
    items = list(iter_sources(["photos"]))
    assert keys(items) == [
        "photos/a.PNG",
        "photos/b.jpg",
        "photos/no_extension",
        "photos/sub/d.webp",
        "photos/sub/deeper/c.jpeg",
    ]
    first = items[0]
    assert first.path == "photos/a.PNG" and first.data == png_bytes() and first.error is None


def test_non_recursive_and_trailing_slash(photos):
    assert keys(iter_sources(["photos/"], recursive=False)) == [
        "photos/a.PNG",
        "photos/b.jpg",
        "photos/no_extension",
    ]


def test_glob_filters_names_case_insensitively(photos):
    assert keys(iter_sources(["photos"], glob="*.jp*g")) == [
        "photos/b.jpg",
        "photos/sub/deeper/c.jpeg",
    ]
    assert keys(iter_sources(["photos"], glob="sub/*")) == [
        "photos/sub/d.webp",
        "photos/sub/deeper/c.jpeg",
    ]
    assert keys(iter_sources(["photos"], glob="*.png")) == ["photos/a.PNG"]


def test_extension_filter_and_sniffing_switch(photos):
    assert keys(iter_sources(["photos"], extensions=frozenset({"webp"}), sniff=False)) == [
        "photos/sub/d.webp"
    ]


def test_explicit_files_are_taken_whatever_their_extension(photos):
    items = list(iter_sources(["photos/notes.txt", "photos/b.jpg", "photos/sub/page.html"]))
    assert keys(items) == ["photos/notes.txt", "photos/b.jpg", "photos/sub/page.html"]
    assert items[0].data == b"not an image" and items[0].error is None


def test_inputs_keep_their_order_and_keys_are_unique(photos):
    assert keys(iter_sources(["photos/sub", "photos/b.jpg", "photos/sub/d.webp"])) == [
        "photos/sub/d.webp",
        "photos/sub/deeper/c.jpeg",
        "photos/b.jpg",
    ]


def test_list_file_and_stdin(photos, tmp_path, monkeypatch):
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"photos/b.jpg\r\n\n  \nphotos/sub\nmissing.jpg\n")
    items = list(iter_sources([], from_list=listing))
    assert keys(items) == [
        "photos/b.jpg",
        "photos/sub/d.webp",
        "photos/sub/deeper/c.jpeg",
        "missing.jpg",
    ]
    assert errors(items) == {"missing.jpg": "no such file or directory"}

    stdin = io.TextIOWrapper(io.BytesIO(b"photos/a.PNG\n"))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert keys(iter_sources(["photos/b.jpg"], from_list="-")) == ["photos/b.jpg", "photos/a.PNG"]


def test_missing_list_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="list file"):
        list(iter_sources([], from_list=tmp_path / "nope.txt"))


def make_tar(path: Path, members: list[tuple[str, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(("suffix", "mode"), [(".tar", "w"), (".tar.gz", "w:gz"), (".tgz", "w:gz")])
def test_tar_archives_stream_image_members_in_archive_order(tmp_path, monkeypatch, suffix, mode):
    monkeypatch.chdir(tmp_path)
    members = [("z.jpg", jpeg_bytes()), ("readme.md", b"# hi"), ("dir/a.png", png_bytes())]
    make_tar(tmp_path / f"pack{suffix}", members, mode)
    items = list(iter_sources([f"pack{suffix}"]))
    assert keys(items) == [f"pack{suffix}::z.jpg", f"pack{suffix}::dir/a.png"]
    assert items[0].path is None and items[0].data == jpeg_bytes()


def test_zip_archive_and_corrupt_member(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with zipfile.ZipFile("pack.zip", "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("good.jpg", jpeg_bytes())
        archive.writestr("bad.png", png_bytes())
        archive.writestr("meta.json", b"{}")
        archive.writestr("folder/", b"")
    raw = bytearray(Path("pack.zip").read_bytes())
    offset = raw.find(png_bytes())
    raw[offset + 40] ^= 0xFF  # flip a byte inside bad.png: its CRC no longer matches
    Path("pack.zip").write_bytes(bytes(raw))
    items = list(iter_sources(["pack.zip"]))
    assert keys(items) == ["pack.zip::good.jpg", "pack.zip::bad.png"]
    assert items[0].data == jpeg_bytes()
    assert "corrupt archive member" in items[1].error and items[1].data is None


def test_webdataset_shards_and_brace_patterns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for shard in range(2):
        make_tar(
            tmp_path / f"shard-{shard:03d}.tar",
            [
                (f"{shard}0000.jpg", jpeg_bytes()),
                (f"{shard}0000.txt", b"a caption"),
                (f"{shard}0000.json", b"{}"),
                (f"{shard}0001.png", png_bytes()),
                (f"{shard}0001.cls", b"3"),
            ],
        )
    assert keys(iter_sources(["shard-{000..001}.tar"])) == [
        "shard-000.tar::00000.jpg",
        "shard-000.tar::00001.png",
        "shard-001.tar::10000.jpg",
        "shard-001.tar::10001.png",
    ]
    assert expand_braces("s-{8..10}-{a,b}") == [
        "s-8-a",
        "s-8-b",
        "s-9-a",
        "s-9-b",
        "s-10-a",
        "s-10-b",
    ]


def test_archives_found_while_walking_are_streamed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "data" / "a.jpg", jpeg_bytes())
    make_tar(tmp_path / "data" / "b.tar", [("x.jpg", jpeg_bytes())])
    assert keys(iter_sources(["data"])) == ["data/a.jpg", "data/b.tar::x.jpg"]
    assert keys(iter_sources(["data"], archives=False)) == ["data/a.jpg"]


def test_hostile_member_names_are_only_keys(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    outside = tmp_path / "escaped.jpg"
    evil = [("../escaped.jpg", jpeg_bytes()), ("/tmp/capbatch-abs-escape.jpg", jpeg_bytes())]
    make_tar(work / "evil.tar", evil)
    with zipfile.ZipFile(work / "evil.zip", "w") as archive:
        for name, data in evil:
            archive.writestr(zipfile.ZipInfo(name), data)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    items = list(iter_sources(["evil.tar", "evil.zip"]))
    assert keys(items) == [
        "evil.tar::../escaped.jpg",
        "evil.tar::/tmp/capbatch-abs-escape.jpg",
        "evil.zip::../escaped.jpg",
        "evil.zip::/tmp/capbatch-abs-escape.jpg",
    ]
    assert all(item.data == jpeg_bytes() for item in items)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not outside.exists() and not Path("/tmp/capbatch-abs-escape.jpg").exists()


def test_oversized_members_and_files_are_refused_unread(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_tar(tmp_path / "big.tar", [("big.jpg", b"x" * 5000), ("ok.jpg", b"y" * 10)])
    write(tmp_path / "big.jpg", b"x" * 5000)
    items = list(iter_sources(["big.tar", "big.jpg"], max_bytes=1000))
    assert errors(items) == {
        "big.tar::big.jpg": "archive member too large: 5000 bytes > limit 1000",
        "big.jpg": "file too large: 5000 bytes > limit 1000",
    }
    assert items[1].data == b"y" * 10


def test_corrupt_and_truncated_archives(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_tar(
        tmp_path / "full.tar.gz", [("a.jpg", jpeg_bytes()), ("b.jpg", os.urandom(200_000))], "w:gz"
    )
    data = (tmp_path / "full.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.zip").write_bytes(b"definitely not a zip")
    items = list(iter_sources(["cut.tar.gz", "junk.zip"]))
    assert items[0].key == "cut.tar.gz::a.jpg" and items[0].data == jpeg_bytes()
    found = errors(items)
    assert "cut.tar.gz::b.jpg" in found or "cut.tar.gz" in found
    assert found["junk.zip"].startswith("not a readable zip archive")


def test_symlink_loops_are_error_items_and_the_walk_goes_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "d" / "a.jpg", jpeg_bytes())
    write(tmp_path / "d" / "z.jpg", jpeg_bytes())
    os.symlink("self.jpg", tmp_path / "d" / "self.jpg")  # points at itself
    os.symlink("..", tmp_path / "d" / "up")  # a directory cycle back to tmp_path
    os.symlink(".", tmp_path / "d" / "me")  # a directory cycle back to d
    os.symlink("gone.jpg", tmp_path / "d" / "broken.jpg")
    items = list(iter_sources(["d"]))
    assert errors(items) == {
        "d/broken.jpg": "broken symlink",
        "d/me": "symlink loop (leads back to a parent)",
        "d/self.jpg": "symlink loop",
        "d/up/d": "symlink loop (leads back to a parent)",
    }
    assert [item.key for item in items if item.data] == ["d/a.jpg", "d/z.jpg"]
    assert list(iter_sources(["d/self.jpg"]))[0].error == "symlink loop"


def test_unreadable_file_gives_an_error_item(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "d" / "locked.jpg", jpeg_bytes())
    write(tmp_path / "d" / "ok.jpg", jpeg_bytes())
    real_open = sources._open_readonly

    def deny(path):
        if path.endswith("locked.jpg"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path)

    # Tests run as root, which chmod 000 does not stop: inject the error instead.
    monkeypatch.setattr(sources, "_open_readonly", deny)
    items = list(iter_sources(["d"]))
    assert errors(items) == {"d/locked.jpg": "permission denied"}
    assert items[1].data == jpeg_bytes()


def test_unreadable_directory_gives_an_error_item_and_the_walk_goes_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "d" / "a.jpg", jpeg_bytes())
    write(tmp_path / "d" / "closed" / "x.jpg", jpeg_bytes())
    write(tmp_path / "d" / "z.jpg", jpeg_bytes())
    real_listdir = os.listdir

    def deny(path):
        if str(path).endswith("closed"):
            raise PermissionError(13, "Permission denied", path)
        return real_listdir(path)

    # As for files above: root lists chmod-000 folders anyway, so inject the error.
    monkeypatch.setattr(sources.os, "listdir", deny)
    items = list(iter_sources(["d"]))
    assert keys(items) == ["d/a.jpg", "d/closed", "d/z.jpg"]
    assert errors(items) == {"d/closed": "cannot list directory: permission denied"}
    # Given as the input itself, too.
    assert errors(iter_sources(["d/closed"])) == {
        "d/closed": "cannot list directory: permission denied"
    }


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads chmod-000 files anyway")
def test_chmod_000_file_and_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "d" / "locked.jpg", jpeg_bytes())
    write(tmp_path / "d" / "closed" / "x.jpg", jpeg_bytes())
    (tmp_path / "d" / "locked.jpg").chmod(0)
    (tmp_path / "d" / "closed").chmod(0)
    try:
        found = errors(iter_sources(["d"]))
    finally:
        (tmp_path / "d" / "closed").chmod(0o755)
    assert found == {
        "d/closed": "cannot list directory: permission denied",
        "d/locked.jpg": "permission denied",
    }


def test_directory_named_like_an_image_is_walked_not_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "in" / "x.jpg" / "inner.png", png_bytes())
    (tmp_path / "in" / "empty.jpg").mkdir()
    assert keys(iter_sources(["in"])) == ["in/x.jpg/inner.png"]
    assert keys(iter_sources(["in"], recursive=False)) == []
    assert keys(iter_sources(["in/x.jpg"])) == ["in/x.jpg/inner.png"]


def test_fifo_named_like_an_image_does_not_hang(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "d" / "pipe.jpg")
    assert errors(iter_sources(["d"])) == {"d/pipe.jpg": "not a regular file (a FIFO)"}
    assert errors(iter_sources(["d/pipe.jpg"])) == {"d/pipe.jpg": "not a regular file (a FIFO)"}


def test_non_utf8_names_give_escaped_keys_and_real_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.mkdir(b"d")
    with open(b"d/caf\xe9.jpg", "wb") as handle:
        handle.write(jpeg_bytes())
    make_tar(tmp_path / "names.tar", [("caf\udce9.jpg", jpeg_bytes())])
    items = list(iter_sources(["d", "names.tar"]))
    assert keys(items) == ["d/caf\\xe9.jpg", "names.tar::caf\\xe9.jpg"]
    assert all(item.key.encode("utf-8") for item in items)  # encodable
    assert os.fsencode(items[0].path) == b"d/caf\xe9.jpg"
    assert items[0].data == jpeg_bytes()


def test_missing_inputs_are_error_items(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert list(iter_sources(["nope.jpg"])) == [
        SourceItem("nope.jpg", "nope.jpg", None, "no such file or directory")
    ]


def test_items_are_produced_lazily(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "d" / "a.jpg", jpeg_bytes())
    write(tmp_path / "d" / "b.jpg", jpeg_bytes())
    reads = []
    real_open = sources._open_readonly
    monkeypatch.setattr(sources, "_open_readonly", lambda p: reads.append(p) or real_open(p))
    stream = iter_sources(["d"])
    assert reads == []
    next(stream)
    assert reads == ["d/a.jpg"]


@pytest.mark.parametrize(("suffix", "mode"), [(".tar", "w"), (".tar.gz", "w:gz"), (".zip", None)])
def test_mutated_archives_give_items_never_exceptions_or_files(tmp_path, monkeypatch, suffix, mode):
    monkeypatch.chdir(tmp_path)
    members = [("a.jpg", jpeg_bytes()), ("../up.png", png_bytes()), ("n.txt", b"x")]
    if mode is None:
        with zipfile.ZipFile(tmp_path / "seed.zip", "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in members:
                archive.writestr(name, data)
    else:
        make_tar(tmp_path / f"seed{suffix}", members, mode)
    seed = (tmp_path / f"seed{suffix}").read_bytes()
    rng = random.Random(7)
    for _ in range(60):
        data = bytearray(seed)
        for _ in range(rng.randint(1, 4)):
            if rng.random() < 0.7:
                data[rng.randrange(len(data))] = rng.randrange(256)
            else:
                data = data[: rng.randrange(1, len(data) + 1)]
        (tmp_path / f"m{suffix}").write_bytes(bytes(data))
        for item in iter_sources([f"m{suffix}"]):
            assert (item.data is None) == (item.error is not None)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"seed{suffix}", f"m{suffix}"])
    assert not (tmp_path.parent / "up.png").exists()
