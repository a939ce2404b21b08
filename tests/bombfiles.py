"""Small files that cost a lot to decode (issue 18 items 7-9), built at test time.

Each builder returns the file's bytes (a few bytes to a few hundred KB) for an
image whose decode, done naively, takes gigabytes or minutes:

    gif_screen_bomb()      45-byte GIF: 13000x13000 screen, one transparent 1x1 frame
    png_grey16_bomb()      ~350 KB 16-bit grey PNG of 13370x13370 (zeros)
    tiff_bomb("F" | "I")   ~700 KB deflated 32-bit float / int TIFF of 13370x13370
    png_row_bomb()         ~130 KB 8-bit grey PNG of 130,000,000x1
    png_short_stream()     PNG whose image data stops after half the rows
    ico_png_bomb()         ICO whose one entry holds a 13000x13000 RGBA PNG
    jpeg_many_scans()      progressive JPEG with 10,000 scans
    jpeg_dc_only()         progressive JPEG holding only its first (DC) scan

benchmarks/decode_bounds.py and tests/reliability/test_bounds.py share them.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from tests.io_fixtures import encode, gradient

BOMB_SIDE = 13370  # just under the default pixel limit (178,956,970)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _zero_rows(row_bytes: int, rows: int, level: int = 9) -> bytes:
    """zlib stream of `rows` PNG scanlines (filter byte 0 + zeros), built a row at a time."""
    packer = zlib.compressobj(level)
    row = bytes(row_bytes + 1)
    return b"".join(packer.compress(row) for _ in range(rows)) + packer.flush()


def png_zeros(width: int, height: int, bit_depth: int, colour_type: int) -> bytes:
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    row_bytes = width * channels * bit_depth // 8
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", _zero_rows(row_bytes, height))
        + _chunk(b"IEND", b"")
    )


def png_grey16_bomb(side: int = BOMB_SIDE) -> bytes:
    return png_zeros(side, side, 16, 0)


def png_row_bomb(width: int = 130_000_000) -> bytes:
    return png_zeros(width, 1, 8, 0)


def png_short_stream(width: int = 64, height: int = 48) -> bytes:
    """Whole chunks and IEND, but a zlib stream that ends after half the rows.

    Pillow stops without an error and leaves the missing rows black.
    """
    rows = b"".join(b"\x00" + bytes([200]) * (3 * width) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    half = zlib.compress(rows[: len(rows) // 2])
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", half)
        + _chunk(b"IEND", b"")
    )


def gif_screen_bomb(width: int = 13000, height: int = 13000) -> bytes:
    """GIF89a: a huge logical screen, one 1x1 frame whose only colour is transparent."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0)  # 2-colour table
    palette = b"\x00\x00\x00\xff\xff\xff"
    control = b"\x21\xf9\x04\x01\x00\x00\x00\x00"  # transparent index 0
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
    # LZW, minimum code size 2: clear (4), index 0, end (5), 3-bit codes LSB first.
    pixels = b"\x02\x02\x44\x01\x00"
    return screen + palette + control + frame + pixels + b"\x3b"


def tiff_bomb(mode: str = "F", side: int = BOMB_SIDE, rows_per_strip: int = 64) -> bytes:
    """Little-endian deflated TIFF of 32-bit float ("F") or signed int ("I") zeros."""
    sample_format = {"F": 3, "I": 2}[mode]
    row_bytes = side * 4
    strips, zero_row = [], bytes(row_bytes)
    for top in range(0, side, rows_per_strip):
        packer = zlib.compressobj(9)  # a row at a time: never the strip in memory
        rows = min(rows_per_strip, side - top)
        strips.append(b"".join(packer.compress(zero_row) for _ in range(rows)) + packer.flush())
    count = len(strips)
    entries = [
        (256, 4, 1, side),  # ImageWidth
        (257, 4, 1, side),  # ImageLength
        (258, 3, 1, 32),  # BitsPerSample
        (259, 3, 1, 8),  # Compression: Adobe deflate
        (262, 3, 1, 1),  # Photometric: min-is-black
        (273, 4, count, None),  # StripOffsets
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, rows_per_strip),  # RowsPerStrip
        (279, 4, count, None),  # StripByteCounts
        (339, 3, 1, sample_format),  # SampleFormat
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    arrays_at = 8 + ifd_size
    offsets_at, counts_at = arrays_at, arrays_at + 4 * count
    data_at = counts_at + 4 * count
    offsets, position = [], data_at
    for strip in strips:
        offsets.append(position)
        position += len(strip)
    ifd = struct.pack("<H", len(entries))
    for tag, kind, number, value in entries:
        if tag == 273:
            value = offsets_at if count > 1 else offsets[0]
        elif tag == 279:
            value = counts_at if count > 1 else len(strips[0])
        if kind == 3 and number == 1:
            ifd += struct.pack("<HHIHH", tag, kind, number, value, 0)
        else:
            ifd += struct.pack("<HHII", tag, kind, number, value)
    ifd += struct.pack("<I", 0)
    arrays = struct.pack(f"<{count}I", *offsets) + struct.pack(
        f"<{count}I", *(len(s) for s in strips)
    )
    return b"II*\x00" + struct.pack("<I", 8) + ifd + arrays + b"".join(strips)


def ico_png_bomb(side: int = 13000) -> bytes:
    """An ICO whose directory says 256x256 while its PNG entry is side x side RGBA."""
    png = png_zeros(side, side, 8, 6)
    directory = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + directory + png


def _segments(jpeg: bytes) -> tuple[bytes, list[bytes], bytes]:
    """(everything before the first SOS, [each SOS segment with its data], EOI)."""
    first = jpeg.index(b"\xff\xda")
    body = jpeg[first:-2]
    scans = [b"\xff\xda" + part for part in body.split(b"\xff\xda") if part]
    return jpeg[:first], scans, jpeg[-2:]


def jpeg_many_scans(scans: int = 10_000, size: tuple[int, int] = (2048, 1536)) -> bytes:
    """A progressive JPEG with `scans` scans: its own, then copies of its last scan's header.

    The last scan refines every luma AC coefficient; each copy carries 64 zero
    bytes of data, which libjpeg reads as corrections for every block with a
    warning only, so each copy costs a pass over the image's luma blocks.
    """
    rng = np.random.default_rng(18)
    noise = rng.integers(-64, 64, (size[1], size[0], 3))
    picture = Image.fromarray(
        (np.asarray(gradient(size), np.int16) + noise).clip(0, 255).astype(np.uint8)
    )
    head, parts, end = _segments(encode(picture, "JPEG", progressive=True, quality=95))
    last = parts[-1]
    header = last[: 2 + int.from_bytes(last[2:4], "big")]
    extra = [header + bytes(64)] * max(0, scans - len(parts))
    return head + b"".join(parts + extra) + end


def jpeg_dc_only(size: tuple[int, int] = (320, 240)) -> bytes:
    """A progressive JPEG cut after its first scan (DC only), closed with EOI."""
    head, parts, end = _segments(encode(gradient(size), "JPEG", progressive=True, quality=90))
    return head + parts[0] + end


def built_size(data: bytes) -> tuple[int, int]:
    """The size Pillow reads from a builder's header (sanity checks in tests)."""
    with Image.open(io.BytesIO(data)) as image:
        return image.size
