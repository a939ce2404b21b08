"""Where the report's images come from, as docs/report.md promises it: thumbnails made
through the captioning decode path, centre-cropped to a square and embedded as WebP
data URIs; a row's file tried as written, then beside the output; archive members
streamed from their archive (rows in archive order cost one pass over each archive);
--link-images URLs relative to the page; and a clear reason when there is no image.
"""

from __future__ import annotations

import base64
import io
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from capbatch.errors import InputDecodeError
from capbatch.report import images
from capbatch.report.images import (
    ArchiveReader,
    Locator,
    encode_data_uri,
    read_file,
    relative_url,
    thumbnail_uri,
)
from tests.io_fixtures import BLUE, GREEN, RED, encode, solid, tar_file


def decode_uri(uri: str) -> tuple[str, Image.Image]:
    header, payload = uri.split(",", 1)
    image = Image.open(io.BytesIO(base64.b64decode(payload)))
    image.load()
    return header, image


def mean_colour(image: Image.Image) -> tuple[int, ...]:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    return tuple(int(v) for v in pixels.mean(axis=(0, 1)).round())


def stripes(size=(90, 30)) -> Image.Image:
    """Red | green | blue thirds, left to right: the centre square is green."""
    width, height = size
    image = Image.new("RGB", size, RED)
    image.paste(GREEN, (width // 3, 0, 2 * width // 3, height))
    image.paste(BLUE, (2 * width // 3, 0, width, height))
    return image


# -- thumbnails ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 48])
def test_a_thumbnail_is_a_webp_data_uri_of_the_centre_square(size):
    uri = thumbnail_uri(encode(stripes(), "PNG"), size)
    header, image = decode_uri(uri)
    assert header == "data:image/webp;base64"
    assert image.format == "WEBP" and image.size == (size, size)
    red, green, blue = mean_colour(image)
    assert green > 200 and red < 40 and blue < 40


def test_a_transparent_image_is_shown_over_white():
    clear = solid((255, 0, 0, 0), (40, 40), mode="RGBA")
    _, image = decode_uri(thumbnail_uri(encode(clear, "PNG"), 32))
    assert all(channel > 245 for channel in mean_colour(image))


def test_bytes_that_are_no_image_raise_a_decode_error_with_the_reason():
    with pytest.raises(InputDecodeError, match="not an image"):
        thumbnail_uri(b"not an image at all", 32)


def test_a_data_uri_can_also_be_jpeg():
    header, image = decode_uri(encode_data_uri(solid(BLUE, (16, 16)), "JPEG"))
    assert header == "data:image/jpeg;base64" and image.format == "JPEG"
    assert image.size == (16, 16)
    red, green, blue = mean_colour(image)
    assert blue > 240 and red < 15 and green < 15


def test_quality_trades_size_for_fidelity():
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    low = encode_data_uri(noisy, quality=10)
    default = encode_data_uri(noisy)
    assert len(low) < len(default)
    assert default == encode_data_uri(noisy, "WEBP", images.THUMB_QUALITY)


# -- files --------------------------------------------------------------------------------


def test_read_file_returns_the_files_bytes(tmp_path):
    data = encode(solid(RED), "PNG")
    (tmp_path / "red.png").write_bytes(data)
    assert read_file(str(tmp_path / "red.png")) == data


def test_read_file_says_why_a_file_cannot_be_read(tmp_path):
    with pytest.raises(OSError, match="^no such file or directory$"):
        read_file(str(tmp_path / "gone.png"))


def test_read_file_reads_an_archive_as_a_file_not_its_members(tmp_path):
    tar = tar_file(tmp_path / "photo.tar", {"x.png": encode(solid(RED), "PNG")})
    assert read_file(str(tar)) == tar.read_bytes()


def test_read_file_raises_oserror_when_there_is_nothing_to_read(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match="^cannot read$"):
        read_file(str(tmp_path / "empty"))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_read_file_refuses_a_fifo_instead_of_hanging(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        read_file(str(fifo))


@pytest.mark.parametrize(
    ("target", "page_dir", "url"),
    [
        ("photos/a b#1.png", "site", "../photos/a%20b%231.png"),
        ("photos/red.png", "photos", "red.png"),
        ("deep/er/x?.png", ".", "deep/er/x%3F.png"),
        ("café.png", "site/sub", "../../caf%C3%A9.png"),
    ],
)
def test_linked_images_are_relative_urls_from_the_page(tmp_path, target, page_dir, url):
    assert relative_url(tmp_path / target, tmp_path / page_dir) == url


def test_a_relative_url_is_relative_even_when_given_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert relative_url(Path("photos/red.png"), tmp_path / "site") == "../photos/red.png"


def test_a_file_is_tried_as_written_then_beside_the_output(tmp_path, monkeypatch):
    here, output_dir = tmp_path / "here", tmp_path / "out"
    (here / "photos").mkdir(parents=True)
    (output_dir / "photos").mkdir(parents=True)
    (here / "photos" / "a.png").write_bytes(b"a")
    (output_dir / "photos" / "a.png").write_bytes(b"b")
    (output_dir / "photos" / "b.png").write_bytes(b"b")
    monkeypatch.chdir(here)
    locator = Locator(output_dir)
    assert locator.file("photos/a.png") == Path("photos/a.png")  # as written wins
    assert locator.file("photos/b.png") == output_dir / "photos" / "b.png"
    assert locator.file(str(output_dir / "photos" / "b.png")) == output_dir / "photos" / "b.png"
    assert locator.file("photos/c.png") is None
    assert locator.file("photos") is None  # a folder is not an image file
    assert locator.file("") is None and locator.file(None) is None


def test_an_absolute_name_is_not_looked_for_beside_the_output(tmp_path):
    (tmp_path / "out" / "abs").mkdir(parents=True)
    (tmp_path / "out" / "abs" / "x.png").write_bytes(b"x")
    assert Locator(tmp_path / "out").file("/abs/x.png") is None


# -- archive members ----------------------------------------------------------------------


def test_an_archive_member_key_names_its_archive_and_member(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tar_file(tmp_path / "shards.tar", {"x.png": b"x"})
    (tmp_path / "odd::name.tar").write_bytes((tmp_path / "shards.tar").read_bytes())
    (tmp_path / "notes.txt").write_text("not an archive")
    locator = Locator(tmp_path / "elsewhere")
    assert locator.archive_member("shards.tar::x.png") == (Path("shards.tar"), "x.png")
    assert locator.archive_member("shards.tar::in::side.png") == (
        Path("shards.tar"),
        "in::side.png",
    )
    assert locator.archive_member("odd::name.tar::x.png") == (Path("odd::name.tar"), "x.png")
    assert locator.archive_member("odd::name.tar::in::side.png") == (
        Path("odd::name.tar"),
        "in::side.png",
    )
    assert locator.archive_member("notes.txt::x.png") is None
    assert locator.archive_member("missing.tar::x.png") is None
    assert locator.archive_member("shards.tar") is None


def test_an_archive_is_found_beside_the_output_too(tmp_path):
    tar_file(tmp_path / "shards.tar", {"x.png": b"x"})
    found = Locator(tmp_path).archive_member("shards.tar::x.png")
    assert found == (tmp_path / "shards.tar", "x.png")


@pytest.fixture
def archives(tmp_path):
    """a.tar, b.tar, c.zip, each with m0.png (red), m1.png (green), m2.png (blue)."""
    colours = {"m0.png": RED, "m1.png": GREEN, "m2.png": BLUE}
    members = {name: encode(solid(colour, (8, 8)), "PNG") for name, colour in colours.items()}
    tar_file(tmp_path / "a.tar", members)
    tar_file(tmp_path / "b.tar", members)
    with zipfile.ZipFile(tmp_path / "c.zip", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return tmp_path, members


@pytest.fixture
def passes(monkeypatch):
    """The archive names each pass over an archive was started for, in order."""
    started: list[str] = []
    real = images.iter_sources

    def counting(inputs, **kwargs):
        started.append(Path(inputs[0]).name)
        return real(inputs, **kwargs)

    monkeypatch.setattr(images, "iter_sources", counting)
    return started


def test_members_in_archive_order_cost_one_pass(archives, passes):
    folder, members = archives
    reader = ArchiveReader()
    for archive in ("a.tar", "c.zip"):
        for name in ("m0.png", "m1.png", "m2.png"):
            assert reader.read(folder / archive, name) == members[name]
    assert passes == ["a.tar", "c.zip"]


def test_a_member_behind_the_cursor_restarts_the_scan_once(archives, passes):
    folder, members = archives
    reader = ArchiveReader()
    assert reader.read(folder / "a.tar", "m2.png") == members["m2.png"]
    assert reader.read(folder / "a.tar", "m0.png") == members["m0.png"]
    assert reader.read(folder / "a.tar", "m1.png") == members["m1.png"]
    assert passes == ["a.tar", "a.tar"]


def test_a_missing_member_is_a_reason_not_a_crash(archives, passes):
    folder, members = archives
    reader = ArchiveReader()
    with pytest.raises(OSError, match="^member not found in the archive$"):
        reader.read(folder / "a.tar", "gone.png")
    assert passes == ["a.tar"]  # looked for from the start: one pass is enough
    assert reader.read(folder / "a.tar", "m1.png") == members["m1.png"]
    with pytest.raises(OSError, match="^member not found in the archive$"):
        reader.read(folder / "a.tar", "gone.png")
    assert passes == ["a.tar", "a.tar", "a.tar"]  # behind the cursor: once more from the top
    assert reader.read(folder / "a.tar", "m2.png") == members["m2.png"]


def test_a_member_that_cannot_be_read_says_why(tmp_path):
    with tarfile.open(tmp_path / "links.tar", "w") as tar:
        info = tarfile.TarInfo("link.png")
        info.type = tarfile.SYMTYPE
        info.linkname = "elsewhere.png"
        tar.addfile(info)
    with pytest.raises(OSError, match="^archive member is a link, not a file$"):
        ArchiveReader().read(tmp_path / "links.tar", "link.png")


def test_only_the_most_recently_used_archives_stay_open(archives, passes):
    folder, members = archives
    reader = ArchiveReader(limit=2)
    reader.read(folder / "a.tar", "m0.png")
    reader.read(folder / "b.tar", "m0.png")
    reader.read(folder / "a.tar", "m1.png")  # a.tar is now the most recent
    reader.read(folder / "c.zip", "m0.png")  # closes b.tar, the least recent
    assert reader.read(folder / "a.tar", "m2.png") == members["m2.png"]
    assert passes == ["a.tar", "b.tar", "c.zip"]
    reader.read(folder / "b.tar", "m1.png")  # reopened, closing c.zip
    reader.read(folder / "a.tar", "m0.png")  # behind a.tar's cursor: restarts
    reader.read(folder / "c.zip", "m1.png")
    assert passes == ["a.tar", "b.tar", "c.zip", "b.tar", "a.tar", "c.zip"]


def test_the_default_keeps_four_archives_open(archives, passes):
    folder, members = archives
    names = []
    for index in range(5):
        name = f"s{index}.tar"
        tar_file(folder / name, members)
        names.append(name)
    reader = ArchiveReader()
    for name in names[:4]:
        reader.read(folder / name, "m0.png")
    reader.read(folder / names[0], "m1.png")
    assert passes == names[:4]
    reader.read(folder / names[4], "m0.png")  # closes s1.tar
    reader.read(folder / names[2], "m1.png")
    assert passes == names
    reader.read(folder / names[1], "m1.png")
    assert passes == [*names, names[1]]


def test_closing_the_reader_closes_its_archives(archives, monkeypatch):
    folder, members = archives
    closed: list[str] = []
    alive = []  # held here so that only an explicit close, not garbage collection, closes them
    real = images.iter_sources

    def tracked(inputs, **kwargs):
        def items():
            try:
                yield from real(inputs, **kwargs)
            finally:
                closed.append(Path(inputs[0]).name)

        alive.append(items())
        return alive[-1]

    monkeypatch.setattr(images, "iter_sources", tracked)
    reader = ArchiveReader(limit=1)
    reader.read(folder / "a.tar", "m0.png")
    reader.read(folder / "b.tar", "m0.png")  # over the limit: a.tar is closed at once
    assert closed == ["a.tar"]
    reader.read(folder / "c.zip", "m0.png")
    assert closed == ["a.tar", "b.tar"]
    reader.close()
    assert closed == ["a.tar", "b.tar", "c.zip"]
    assert reader.read(folder / "c.zip", "m0.png") == members["m0.png"]  # usable after close


def test_an_unused_reader_closes_cleanly():
    ArchiveReader().close()
