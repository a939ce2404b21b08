"""What one decode will cost, read from the file's header before any pixel is decoded.

image_decode.py refuses an input here, with a reason for its row, when:
- its JPEG stream asks for too much work: too many scans, or scans x blocks
  beyond a bound (a 2.8 MB progressive JPEG of 10,000 scans took 110 s);
- decoding and converting it would hold more than a memory budget: the
  estimate counts the mode's bytes per pixel, the decoder's own buffers
  (progressive JPEG coefficients, TIFF strips, WebP output), an EXIF rotation
  copy, the resize's coefficient tables and buffers, not only the pixel count.
After a successful decode it also tells data that ended early (a PNG whose
image data stops before its last row, a progressive JPEG whose scans stop
before full detail), which Pillow would otherwise fill with grey or black.

Pure Python over the bytes (struct, zlib); nothing here decodes pixels.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from dataclasses import dataclass, field

# Progressive JPEGs from libjpeg, mozjpeg and Photoshop use about 10 scans; the
# format allows any number, and libjpeg makes a pass over the scan's blocks for each.
MAX_JPEG_SCANS = 500
# Blocks decoded over all scans (a block is 8x8 samples of one component): about
# 3x what a 10-scan progressive JPEG at the default pixel limit needs. At 20-200 ns
# per block per scan that is 1.3-13 s on one core.
MAX_JPEG_SCAN_BLOCKS = 64 * 1024 * 1024
# Peak memory for the pixels of one decode (decoder buffers + conversion + resize).
DEFAULT_MAX_DECODE_BYTES = 768 * 1024 * 1024

_RESAMPLE_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0, "nearest": 0.0}
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
# The next marker after a scan's entropy-coded data: 0xFF then anything but a
# stuffed zero, a restart marker (D0-D7) or a fill byte.
_NEXT_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)


@dataclass
class JpegFacts:
    """What the marker segments of a JPEG say (scan headers only, no entropy decoding)."""

    progressive: bool = False
    width: int = 0
    height: int = 0
    blocks: dict[int, int] = field(default_factory=dict)  # component id -> 8x8 blocks
    scans: int = 0
    scan_blocks: int = 0  # blocks over all scans: the decoder's work
    # component id -> for each of the 64 coefficients, the lowest bit position sent
    # so far (0 = full precision, None = never sent).
    precision: dict[int, list[int | None]] = field(default_factory=dict)

    def coefficient_bytes(self) -> int:
        """A progressive decode keeps every block's 64 16-bit coefficients until the end."""
        return sum(self.blocks.values()) * 64 * 2 if self.progressive else 0

    def complete(self) -> bool:
        """Every coefficient of every component reached full precision."""
        return bool(self.precision) and all(
            bits is not None and bits == 0 for levels in self.precision.values() for bits in levels
        )


def _frame(facts: JpegFacts, marker: int, segment: bytes) -> None:
    if len(segment) < 6:
        return
    facts.progressive = marker in _PROGRESSIVE_SOF
    facts.height, facts.width, count = struct.unpack(">HHB", segment[1:6])
    components = [segment[6 + 3 * i : 9 + 3 * i] for i in range(count)]
    components = [c for c in components if len(c) == 3]
    if not components:
        return
    h_max = max(c[1] >> 4 for c in components) or 1
    v_max = max(c[1] & 15 for c in components) or 1
    for ident, sampling, _ in components:
        width = math.ceil(facts.width * (sampling >> 4) / h_max)
        height = math.ceil(facts.height * (sampling & 15) / v_max)
        facts.blocks[ident] = math.ceil(width / 8) * math.ceil(height / 8)
        facts.precision[ident] = [None] * 64


def _scan(facts: JpegFacts, segment: bytes) -> None:
    if not segment:
        return
    count = segment[0]
    idents = [segment[1 + 2 * i] for i in range(count) if 1 + 2 * i < len(segment)]
    tail = segment[1 + 2 * count : 4 + 2 * count]
    start, end, approximation = (tail[0], tail[1], tail[2]) if len(tail) == 3 else (0, 63, 0)
    high, low = approximation >> 4, approximation & 15
    facts.scans += 1
    facts.scan_blocks += sum(facts.blocks.get(ident, 0) for ident in idents)
    for ident in idents:
        levels = facts.precision.get(ident)
        if levels is None:
            continue
        for k in range(start, min(end, 63) + 1):
            if high == 0 or levels[k] is None:
                levels[k] = low  # a first scan for these coefficients
            else:
                levels[k] = min(levels[k], low)  # a refinement


def read_jpeg(data: bytes) -> JpegFacts:
    """Walk the marker segments up to EOI (or the end); stops early past the scan limits."""
    facts = JpegFacts()
    at = 2  # after SOI
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            found = _NEXT_MARKER.search(data, at)
            if found is None:
                break
            at = found.start()
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0xD9:  # EOI
            break
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # no length
            at += 2
            continue
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        segment = data[at + 4 : at + 2 + length]
        at += 2 + max(length, 2)
        if marker in _SOF_MARKERS and not facts.blocks:
            _frame(facts, marker, segment)
        elif marker == 0xDA:
            _scan(facts, segment)
            if facts.scans > MAX_JPEG_SCANS or facts.scan_blocks > MAX_JPEG_SCAN_BLOCKS:
                break  # refused anyway: do not read 90 MB of scans to say so
            found = _NEXT_MARKER.search(data, at)  # skip the entropy-coded data
            at = found.start() if found else len(data)
    return facts


def jpeg_work_refusal(facts: JpegFacts) -> str | None:
    """Why a JPEG's scans are too much work to decode (a row's reason), None when they are not."""
    if facts.scans > MAX_JPEG_SCANS:
        return f"JPEG has too many scans: over {MAX_JPEG_SCANS} (each is a pass over the image)"
    if facts.scan_blocks > MAX_JPEG_SCAN_BLOCKS:
        return (
            f"JPEG too costly to decode: {facts.scans} scans over "
            f"{sum(facts.blocks.values())} blocks > limit {MAX_JPEG_SCAN_BLOCKS} block-scans"
        )
    return None


def ico_largest_entry(data: bytes) -> tuple[int, int, bool]:
    """(width, height, is_png) of an ICO's largest entry, from the entries' own headers.

    The directory stores sizes in one byte each (0 means 256), so it cannot tell
    that an entry's PNG is 13000x13000; Pillow finds out only by decoding it.
    """
    count = int.from_bytes(data[4:6], "little")
    largest = (0, 0, False)
    for index in range(count):
        entry = data[6 + 16 * index : 22 + 16 * index]
        if len(entry) < 16:
            break
        offset = int.from_bytes(entry[12:16], "little")
        head = data[offset : offset + 26]
        if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
            width, height, is_png = *struct.unpack(">II", head[16:24]), True
        elif len(head) >= 12:
            width, height = struct.unpack("<ii", head[4:12])
            width, height, is_png = abs(width), abs(height) // 2, False  # XOR + AND masks
        else:
            continue
        if width * height > largest[0] * largest[1]:
            largest = (width, height, is_png)
    return largest


def _png_raw_size(width: int, height: int, depth: int, colour: int, interlaced: bool) -> int:
    bits = _PNG_CHANNELS.get(colour, 4) * depth
    if not interlaced:
        return height * (1 + math.ceil(width * bits / 8))
    total = 0
    for x0, y0, dx, dy in _ADAM7:
        pass_w, pass_h = math.ceil((width - x0) / dx), math.ceil((height - y0) / dy)
        if pass_w > 0 and pass_h > 0:
            total += pass_h * (1 + math.ceil(pass_w * bits / 8))
    return total


def png_data_shortfall(data: bytes) -> str | None:
    """Why a PNG's image data ends before its last row, None when it is all there.

    Pillow stops quietly when the zlib stream ends early and leaves the missing
    rows black. This inflates the IDAT stream once more, a megabyte at a time,
    counting bytes only, and stops as soon as every row is accounted for.
    """
    at, need, produced = 8, None, 0
    inflater = zlib.decompressobj()
    while at + 8 <= len(data) and not inflater.eof:
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        payload = data[at + 8 : at + 8 + length]
        at += 12 + length
        if kind == b"IHDR" and len(payload) >= 13:
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", payload[:13])
            need = _png_raw_size(width, height, depth, colour, interlace == 1)
        elif kind == b"IDAT" and need is not None:
            try:
                while payload and produced < need and not inflater.eof:
                    produced += len(inflater.decompress(payload, 1 << 20))
                    payload = inflater.unconsumed_tail
            except zlib.error:
                return None  # Pillow's own decode already judged this stream
            if produced >= need:
                return None
        elif kind == b"IEND":
            break
    if need is None or produced >= need:
        return None
    return f"truncated PNG (image data ends at {100 * produced // max(1, need)}% of the rows)"


def _mode_bytes(mode: str) -> int:
    """Bytes per pixel Pillow stores for a mode (multi-band 8-bit modes take 4)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def _coefficient_bytes(size_in: int, size_out: int, support: float) -> int:
    """Pillow's resample table for one axis: size_out rows of kernel width doubles."""
    if support == 0 or size_in == size_out:
        return 0
    scale = max(1.0, size_in / size_out)
    return size_out * (2 * math.ceil(support * scale) + 1) * 8


@dataclass(frozen=True)
class DecodePlan:
    """What one decode will hold at its peak, by part; `total` is compared to the budget."""

    decoded: int  # the decoded image as Pillow stores it
    decoder: int  # the decoder's own buffers (JPEG coefficients, TIFF strip, WebP output)
    rotation: int  # a rotated copy for EXIF orientation
    conversion: int  # band temporaries, the half-resized image, resample tables

    @property
    def total(self) -> int:
        return self.decoded + self.decoder + self.rotation + self.conversion


def plan_decode(
    mode: str,
    size: tuple[int, int],
    resized: tuple[int, int],
    *,
    interpolation: str,
    decoder_bytes: int = 0,
    rotated: bool = False,
    band_bytes: int,
) -> DecodePlan:
    """The peak memory of decoding `size` pixels of `mode` and resizing them to `resized`.

    Mirrors preprocess_image: the conversion to RGB and the horizontal pass run
    on bands of rows (about band_bytes, at least one row of RGBA), the
    horizontal pass leaves a resized_width x height RGB image, then the vertical
    pass runs.
    """
    width, height = size
    new_w, new_h = resized
    decoded = width * height * _mode_bytes(mode)
    support = _RESAMPLE_SUPPORT[interpolation]
    band = min(max(band_bytes, 4 * width), 4 * width * height)  # no band beyond the image
    tables = max(
        _coefficient_bytes(width, new_w, support), _coefficient_bytes(height, new_h, support)
    )
    # A band is held as cropped, as RGBA, composited, and as RGB at once (4 copies).
    conversion = 4 * band + 4 * new_w * height + 4 * new_w * new_h + tables
    return DecodePlan(decoded, decoder_bytes, decoded if rotated else 0, conversion)


def _mib(size: int) -> str:
    mib = size / (1024 * 1024)
    return f"{math.ceil(mib)} MiB" if mib >= 10 else f"{mib:.1f} MiB"


def describe_plan(plan: DecodePlan, limit: int, what: str) -> str:
    return (
        f"image needs too much memory to decode: about {_mib(plan.total)} "
        f"> limit {_mib(limit)} ({what})"
    )
