"""The bad-input corpus: every kind of broken, odd or hostile input a nightly run meets.

`make_corpus(directory)` writes one file (or folder, link, archive) per kind and
returns what each must become when `capbatch caption directory` walks it:

    [CorpusEntry(relative="empty.jpg", kind="zero-byte file", expected="error: empty file"), ...]

`relative` is the row key below `directory` (archive members as
"x.zip::member.png", undecodable name bytes escaped as "\\xNN", exactly as keys
are written); `expected` is "ok" (a caption) or "error: <start of the reason>".
Every entry is exactly one row. docs/reliability.md lists the same table.

Tests run as root, which chmod 000 does not stop: the entry of kind
"unreadable (permissions)" is chmod 000 AND named UNREADABLE_NAME, so a test can
inject the EACCES with `deny_unreadable(monkeypatch)`.
"""

from __future__ import annotations

import io
import os
import random
import tarfile
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from tests import bombfiles
from tests.io_fixtures import HEIC_BYTES, HTML_BYTES, encode, gradient, marker_image, png_bytes
from tests.io_fixtures import png_header_only as huge_png_header

OK = "ok"
UNREADABLE_NAME = "unreadable.jpg"
# Members an archive must never let escape to the file system.
HOSTILE_MEMBERS = ("/tmp/capbatch-evil-abs.png", "../../capbatch-evil-up.png")
EXIF_ORIENTATION = 0x0112

# Fixed noise: os.urandom once started with "{" and read as JSON (a flaky reason).
NOISE = bytes([0x8F]) + random.Random(193).randbytes(511)


class CorpusEntry(NamedTuple):
    relative: str  # row key relative to the corpus directory
    kind: str  # what is wrong (or odd) with it
    expected: str  # "ok" or "error: <reason prefix>"


def expected_error(entry: CorpusEntry) -> str | None:
    """The reason prefix an error entry's row must start with; None for "ok"."""
    return None if entry.expected == OK else entry.expected.removeprefix("error: ")


def _jpeg(image: Image.Image, **kwargs) -> bytes:
    return encode(image, "JPEG", quality=92, **kwargs)


def cmyk_jpeg() -> bytes:
    return _jpeg(gradient().convert("CMYK"))


def ycck_jpeg() -> bytes:
    """A JPEG whose Adobe APP14 marker declares YCCK (transform 2).

    Pillow cannot write YCCK, so a CMYK JPEG's Adobe marker is edited: libjpeg
    then decodes the scans as YCCK. The colours are not meaningful; what is
    tested is that the YCCK decode path yields an image, not an error.
    """
    data = bytearray(cmyk_jpeg())
    at = data.find(b"Adobe") - 4  # the marker: FF EE, then its 2-byte length
    if at < 0 or data[at : at + 2] != b"\xff\xee":
        raise RuntimeError("Pillow wrote a CMYK JPEG without an Adobe marker")
    # FF EE, length (2), "Adobe" (5), version (2), flags0 (2), flags1 (2), transform (1)
    transform = at + 2 + 2 + 5 + 2 + 2 + 2
    data[transform] = 2
    return bytes(data)


def exif_rotated_jpeg() -> bytes:
    """marker_image stored sideways, with EXIF orientation 6 (display: rotate 90 CW)."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    return _jpeg(marker_image((80, 40)), exif=exif.tobytes())


def upright_copy_png(rotated_jpeg: bytes) -> bytes:
    """The same decoded pixels turned upright by hand, stored losslessly (PNG).

    Decoding this and decoding the rotated JPEG must give identical encoder input.
    """
    with Image.open(io.BytesIO(rotated_jpeg)) as stored:
        stored.load()
        upright = stored.transpose(Image.Transpose.ROTATE_270)  # orientation 6
    return encode(upright, "PNG")


def grey16_png() -> bytes:
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)  # (H, W)
    return encode(Image.fromarray(ramp), "PNG")


def palette_transparent_png() -> bytes:
    image = gradient().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(image, "PNG", transparency=0)


def alpha_png(mode: str) -> bytes:
    image = gradient().convert(mode)
    alpha = Image.linear_gradient("L").resize(image.size)
    image.putalpha(alpha)
    return encode(image, "PNG")


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 30), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def multipage_tiff() -> bytes:
    pages = [gradient(), Image.new("RGB", (64, 48), (0, 255, 0))]
    return encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zip_with_corrupt_member() -> bytes:
    good = png_bytes()
    bad = encode(gradient(), "PNG")
    buffer = io.BytesIO()
    # Stored (not deflated) so the member's bytes can be flipped in place.
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("good.png", good)
        archive.writestr("damaged.png", bad)
    data = bytearray(buffer.getvalue())
    at = data.find(bad) + len(bad) // 2
    data[at] ^= 0xFF  # the CRC-32 in the headers no longer matches
    return bytes(data)


def _tar_with_symlink_member() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("passwd.png")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        archive.addfile(info)
    return buffer.getvalue()


def _add_costly_and_cut_images(add) -> None:
    """Issue 18: files that cost far more than their size, and image data that ends early."""
    add(
        "half-rows.png",
        "PNG whose image data stops after half the rows (valid chunks)",
        "error: truncated PNG (image data ends at 50% of the rows)",
        bombfiles.png_short_stream(),
    )
    add(
        "dc-only.jpg",
        "progressive JPEG holding only its DC scan",
        "error: truncated JPEG (progressive scans end before full detail)",
        bombfiles.jpeg_dc_only(),
    )
    add(
        "many-scans.jpg",
        "progressive JPEG with 600 scans",
        "error: JPEG has too many scans",
        bombfiles.jpeg_many_scans(600, (256, 192)),
    )
    add(
        "row-130000000x1.png",
        "PNG of 130,000,000x1 (126 KB)",
        "error: image needs too much memory to decode",
        bombfiles.png_row_bomb(),
    )
    add(
        "screen.gif",
        "GIF: 3000x3000 screen, one transparent 1x1 frame (43 bytes)",
        OK,
        bombfiles.gif_screen_bomb(3000, 3000),
    )


def _add_key_and_stream_cases(root: Path, png: bytes) -> list[CorpusEntry]:
    """Issue 18: a file named like an archive member, a tar.gz cut inside its gzip header."""
    entries: list[CorpusEntry] = []
    # A plain file named like a member of bad.tar: its own row, "::" escaped in its key.
    (root / "bad.tar::good.png").write_bytes(png)
    entries.append(
        CorpusEntry("bad.tar\\x3a\\x3agood.png", "file named like an archive member", OK)
    )
    gz = io.BytesIO()
    with tarfile.open(fileobj=gz, mode="w:gz") as archive:
        info = tarfile.TarInfo("x.png")
        info.size = len(png)
        archive.addfile(info, io.BytesIO(png))
    (root / "cut-header.tar.gz").write_bytes(gz.getvalue()[:6])
    entries.append(
        CorpusEntry(
            "cut-header.tar.gz",
            "tar.gz cut inside its gzip header",
            "error: not a readable tar archive: truncated gzip stream (cut inside its header)",
        )
    )
    return entries


def make_corpus(directory: str | Path) -> list[CorpusEntry]:
    """Write the corpus into `directory` (created) and return one entry per row."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    entries: list[CorpusEntry] = []

    def add(relative: str, kind: str, expected: str, data: bytes | None = None) -> None:
        if data is not None:
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        entries.append(CorpusEntry(relative, kind, expected))

    jpeg = _jpeg(gradient())
    png = encode(gradient(), "PNG")

    # -- broken bytes ---------------------------------------------------------------------
    add("empty.jpg", "zero-byte file", "error: empty file (0 bytes)", b"")
    add("truncated.jpg", "truncated JPEG", "error: truncated JPEG", jpeg[: len(jpeg) * 2 // 3])
    add("truncated.png", "truncated PNG", "error: truncated PNG", png[: len(png) * 2 // 3])
    add("header-cut.png", "PNG cut inside its header", "error: truncated PNG", png[:20])
    add("page.jpg", "HTML named .jpg", "error: not an image (looks like HTML)", HTML_BYTES)
    add("notes.jpg", "text named .jpg", "error: not an image (looks like text)", b"hello\n" * 20)
    add("doc.jpg", "PDF named .jpg", "error: not an image (looks like a PDF", b"%PDF-1.7\n%\xe2\n")
    add(
        "bomb.png",
        "decompression bomb (100000x100000 declared, 100-byte file)",
        "error: image too large: 10000000000 pixels",
        huge_png_header(100_000, 100_000),
    )
    add(
        "photo.heic",
        "HEIC (unsupported format)",
        "error: unsupported image format (HEIC)",
        HEIC_BYTES,
    )
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
    add("drawing.svg.png", "SVG named .png", "error: unsupported image format (SVG)", svg)
    add("noise.jpg", "random bytes named .jpg", "error: unsupported image format", NOISE)
    _add_costly_and_cut_images(add)

    # -- odd but valid images -------------------------------------------------------------
    add("png-named.jpg", "PNG under a .jpg extension", OK, png)
    add("tiny-1x1.png", "1x1 image", OK, encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"))
    add("wide-20000x10.png", "20000x10 image", OK, encode(Image.new("L", (20000, 10), 128), "PNG"))
    add("cmyk.jpg", "CMYK JPEG (Adobe)", OK, cmyk_jpeg())
    add("ycck.jpg", "YCCK JPEG (Adobe transform 2)", OK, ycck_jpeg())
    add("grey16.png", "16-bit grey PNG", OK, grey16_png())
    add("palette-transparent.png", "palette PNG with transparency", OK, palette_transparent_png())
    add("la.png", "LA (grey + alpha) PNG", OK, alpha_png("L"))
    add("rgba.png", "RGBA PNG", OK, alpha_png("RGB"))
    add("rotated.jpg", "EXIF-rotated JPEG (orientation 6)", OK, exif_rotated_jpeg())
    add("animated.gif", "animated GIF (first frame)", OK, animated_gif())
    add("pages.tiff", "multi-page TIFF (first page)", OK, multipage_tiff())
    add("photo.webp", "WebP", OK, encode(gradient(), "WEBP", quality=80))

    # -- file-system cases ----------------------------------------------------------------
    add(UNREADABLE_NAME, "unreadable (permissions)", "error: permission denied", jpeg)
    (root / UNREADABLE_NAME).chmod(0)
    # A directory named like an image is walked, never read: its file gets the row.
    add("folder.jpg/inside.png", "directory named x.jpg (holding one image)", OK, png)
    os.symlink("loop.jpg", root / "loop.jpg")
    add("loop.jpg", "symlink loop (a link to itself)", "error: symlink loop")
    os.symlink("gone.jpg", root / "dangling.jpg")
    add("dangling.jpg", "dangling symlink", "error: broken symlink")
    os.mkfifo(root / "pipe.jpg")
    add("pipe.jpg", "FIFO named .jpg", "error: not a regular file (a FIFO)")
    with open(os.path.join(os.fsencode(root), b"caf\xe9.png"), "wb") as handle:
        handle.write(png)  # Latin-1 bytes: not valid UTF-8
    add("caf\\xe9.png", "non-UTF-8 file name", OK)
    add('odd\nname, "quoted".png', "file name with a newline, a comma and quotes", OK, png)

    # -- archives -------------------------------------------------------------------------
    (root / "bad.zip").write_bytes(_zip_with_corrupt_member())
    entries += [
        CorpusEntry("bad.zip::good.png", "zip: intact member", OK),
        CorpusEntry("bad.zip::damaged.png", "zip: corrupt member (CRC)", "error: corrupt archive"),
    ]
    tar = _tar_bytes([("good.png", png), ("garbage.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)])
    (root / "bad.tar").write_bytes(tar)
    entries += [
        CorpusEntry("bad.tar::good.png", "tar: intact member", OK),
        CorpusEntry("bad.tar::garbage.png", "tar: corrupt member data", "error: truncated or"),
    ]
    whole = _tar_bytes([("first.png", png), ("second.png", png)])
    second_header = 512 + -(-len(png) // 512) * 512
    cut = whole[: second_header + 100]  # inside the second member's header
    (root / "cut.tar").write_bytes(cut)
    entries += [
        CorpusEntry("cut.tar::first.png", "truncated tar: member before the cut", OK),
        CorpusEntry("cut.tar", "tar cut inside a member header", "error: corrupt tar archive"),
    ]
    damaged = bytearray(_tar_bytes([("one.png", png), ("two.png", png), ("three.png", png)]))
    damaged[second_header] ^= 0xFF  # the second header fails its checksum; nothing is cut
    (root / "damaged.tar").write_bytes(bytes(damaged))
    entries += [
        CorpusEntry("damaged.tar::one.png", "tar: member before a damaged header", OK),
        CorpusEntry(
            "damaged.tar", "tar with a damaged second header", "error: corrupt tar archive: bad"
        ),
    ]
    (root / "hostile.tar").write_bytes(_tar_bytes([(name, png) for name in HOSTILE_MEMBERS]))
    entries += [
        CorpusEntry(f"hostile.tar::{HOSTILE_MEMBERS[0]}", "tar member with absolute path", OK),
        CorpusEntry(f"hostile.tar::{HOSTILE_MEMBERS[1]}", "tar member with ../ path", OK),
    ]
    (root / "links.tar").write_bytes(_tar_with_symlink_member())
    entries.append(
        CorpusEntry(
            "links.tar::passwd.png", "tar symlink member (to /etc/passwd)", "error: archive member"
        )
    )
    entries += _add_key_and_stream_cases(root, png)
    (root / "fake.zip").write_bytes(b"PK\x03\x04 this is no zip")
    entries.append(CorpusEntry("fake.zip", "not a zip, named .zip", "error: not a readable zip"))
    return entries


def deny_unreadable(monkeypatch) -> None:
    """Make opening UNREADABLE_NAME fail with EACCES, as chmod 000 does for non-root."""
    from capbatch import sources

    real_open = sources._open_readonly

    def open_or_deny(path: str) -> int:
        if os.fsdecode(path).endswith(UNREADABLE_NAME):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path)

    monkeypatch.setattr(sources, "_open_readonly", open_or_deny)
