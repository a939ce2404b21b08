"""image_limits' promises, pinned from its mutation survivors (issue 19).

What one decode will cost, read from headers only: a JPEG's blocks, scans and
coefficient precision (its work limits and "progressive scans end before full
detail"), an ICO's largest entry, the rows a PNG's data holds, and the memory
plan with the message a refused row gets. Expected numbers are worked out by
hand in the comments, not read back from the code.
"""

from __future__ import annotations

import struct
import zlib

import pytest

from capbatch import image_limits
from capbatch.image_limits import (
    MAX_JPEG_SCAN_BLOCKS,
    DecodePlan,
    JpegFacts,
    describe_plan,
    ico_largest_entry,
    jpeg_work_refusal,
    plan_decode,
    png_data_shortfall,
    read_jpeg,
)
from tests import bombfiles
from tests.io_fixtures import encode, gradient, solid

MIB = 1024 * 1024


# -- JPEG: blocks, scans, precision ---------------------------------------------------------


@pytest.mark.parametrize(
    ("subsampling", "blocks"),
    [
        # 70x35: 9x5 = 45 luma blocks; chroma 35x35 (4:2:2) = 5x5, 35x18 (4:2:0) = 5x3.
        (0, {1: 45, 2: 45, 3: 45}),
        (1, {1: 45, 2: 25, 3: 25}),
        (2, {1: 45, 2: 15, 3: 15}),
    ],
    ids=["4:4:4", "4:2:2", "4:2:0"],
)
def test_blocks_per_component_follow_the_sampling_factors(subsampling, blocks):
    facts = read_jpeg(encode(gradient((70, 35)), "JPEG", subsampling=subsampling))
    assert (facts.width, facts.height, facts.progressive) == (70, 35, False)
    assert facts.blocks == blocks
    assert (facts.scans, facts.scan_blocks) == (1, sum(blocks.values()))
    assert facts.complete() and facts.coefficient_bytes() == 0  # baseline keeps no coefficients


def test_a_grey_jpeg_has_one_component():
    facts = read_jpeg(encode(gradient((70, 35)).convert("L"), "JPEG"))
    assert facts.blocks == {1: 45} and facts.scan_blocks == 45 and facts.complete()


def _cut_after(jpeg: bytes, scans: int) -> bytes:
    head, parts, end = bombfiles._segments(jpeg)
    return head + b"".join(parts[:scans]) + end


# libjpeg's progressive script for YCbCr, and the lowest bit sent per component after each
# scan (Y = 1, Cb = 2, Cr = 3; "-" = some coefficients never sent yet). 320x240 4:2:0:
# 1200 luma and 300 + 300 chroma blocks.
PROGRESSION = [
    (1, "DC of all, bit 1", 1800, {1: "1-", 2: "1-", 3: "1-"}),
    (2, "Y AC 1-5, bit 2", 3000, {1: "12-", 2: "1-", 3: "1-"}),
    (3, "Cr AC, bit 1", 3300, {1: "12-", 2: "1-", 3: "1"}),
    (4, "Cb AC, bit 1", 3600, {1: "12-", 2: "1", 3: "1"}),
    (5, "Y AC 6-63, bit 2", 4800, {1: "12", 2: "1", 3: "1"}),
    (6, "Y AC refined to bit 1", 6000, {1: "1", 2: "1", 3: "1"}),
    (7, "DC refined to bit 0", 7800, {1: "01", 2: "01", 3: "01"}),
    (8, "Cr AC refined", 8100, {1: "01", 2: "01", 3: "0"}),
    (9, "Cb AC refined", 8400, {1: "01", 2: "0", 3: "0"}),
    (10, "Y AC refined: all full precision", 9600, {1: "0", 2: "0", 3: "0"}),
]


@pytest.mark.parametrize(("scans", "what", "scan_blocks", "levels"), PROGRESSION)
def test_progressive_precision_is_tracked_scan_by_scan(scans, what, scan_blocks, levels):
    jpeg = encode(gradient((320, 240)), "JPEG", progressive=True)
    facts = read_jpeg(_cut_after(jpeg, scans))
    assert facts.progressive and facts.scans == scans
    assert facts.scan_blocks == scan_blocks
    seen = {
        ident: "".join(sorted({str(bits) for bits in bits_list if bits is not None}))
        + ("-" if None in bits_list else "")
        for ident, bits_list in facts.precision.items()
    }
    assert seen == levels, what
    assert facts.complete() is (scans == 10)
    assert facts.coefficient_bytes() == 1800 * 64 * 2


def test_a_jpeg_without_a_frame_is_never_complete():
    assert JpegFacts().complete() is False
    assert read_jpeg(b"\xff\xd8\xff\xd9").complete() is False


def test_markers_after_fill_bytes_and_restart_markers_are_read():
    jpeg = encode(gradient((64, 48)), "JPEG")
    sof = jpeg.index(b"\xff\xc0")
    # Fill bytes (0xFF runs) may precede any marker; a stray RST marker has no length.
    padded = jpeg[:sof] + b"\xff\xff\xff\xd0" + jpeg[sof:]
    facts = read_jpeg(padded)
    assert (facts.width, facts.height, facts.scans) == (64, 48, 1)
    assert facts.blocks == read_jpeg(jpeg).blocks


def test_reading_stops_at_eoi():
    jpeg = encode(gradient((64, 48)), "JPEG")
    assert read_jpeg(jpeg + jpeg[2:]).scans == 1  # a second image after EOI is not read


def test_a_scan_header_cut_short_counts_as_a_full_first_scan():
    # SOF of one 8x8 component, then an SOS naming it whose spectral bytes are missing.
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 8, 8, 1) + b"\x01\x11\x00"
    sos = b"\xff\xda" + struct.pack(">H", 5) + b"\x01\x01\x00"
    facts = read_jpeg(b"\xff\xd8" + sof + sos + b"\xff\xd9")
    assert facts.blocks == {1: 1} and facts.scans == 1 and facts.complete()


def test_the_scan_count_limit_is_500_and_reading_stops_just_past_it():
    at_limit = read_jpeg(bombfiles.jpeg_many_scans(scans=500, size=(64, 48)))
    assert at_limit.scans == 500 and jpeg_work_refusal(at_limit) is None
    over = read_jpeg(bombfiles.jpeg_many_scans(scans=900, size=(64, 48)))
    assert over.scans == 501  # the 399 scans after the refusal are not walked
    assert jpeg_work_refusal(over) == (
        "JPEG has too many scans: over 500 (each is a pass over the image)"
    )


def test_the_block_scan_limit_names_the_scans_and_blocks():
    facts = JpegFacts(blocks={1: 40, 2: 10}, scans=7, scan_blocks=MAX_JPEG_SCAN_BLOCKS)
    assert jpeg_work_refusal(facts) is None
    facts.scan_blocks += 1
    assert jpeg_work_refusal(facts) == (
        "JPEG too costly to decode: 7 scans over 50 blocks > limit 67108864 block-scans"
    )
    assert MAX_JPEG_SCAN_BLOCKS == 64 * MIB


def test_reading_stops_once_the_block_scan_limit_is_passed(monkeypatch):
    monkeypatch.setattr(image_limits, "MAX_JPEG_SCAN_BLOCKS", 3000)
    jpeg = encode(gradient((320, 240)), "JPEG", progressive=True)
    facts = read_jpeg(jpeg)
    assert facts.scans == 3 and facts.scan_blocks == 3300  # 1800, 3000, then 3300 > 3000


# -- ICO ------------------------------------------------------------------------------------


def _ico(entries: list[bytes]) -> bytes:
    offset = 6 + 16 * len(entries)
    directory, body = b"", b""
    for payload in entries:
        directory += struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(payload), offset + len(body))
        body += payload
    return struct.pack("<HHH", 0, 1, len(entries)) + directory + body


def _dib(width: int, height: int) -> bytes:
    """A BMP entry's header: the height counts the XOR and AND masks (twice the image)."""
    return struct.pack("<Iii", 40, width, height) + bytes(28)


def test_the_largest_ico_entry_by_its_own_header():
    png = encode(solid((0, 0, 0, 0), (30, 20), "RGBA"), "PNG")
    assert ico_largest_entry(_ico([png])) == (30, 20, True)
    assert ico_largest_entry(_ico([_dib(24, 48)])) == (24, 24, False)
    assert ico_largest_entry(_ico([_dib(24, -48)])) == (24, 24, False)  # top-down rows
    assert ico_largest_entry(_ico([_dib(24, 48), png, _dib(10, 20)])) == (30, 20, True)
    assert ico_largest_entry(_ico([png, _dib(40, 80)])) == (40, 40, False)


def test_ico_entries_past_the_data_are_skipped():
    png = encode(solid((0, 0, 0, 0), (30, 20), "RGBA"), "PNG")
    data = _ico([png])
    # The directory claims 3 entries; only one is there.
    claims_three = data[:4] + struct.pack("<H", 3) + data[6:]
    assert ico_largest_entry(claims_three) == (30, 20, True)
    # An entry whose offset points past the end, then a real one.
    ghost = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, 100, 10**6)
    two = struct.pack("<HHH", 0, 1, 2) + ghost + data[6:22]
    real_at = len(two)
    two = two[:-4] + struct.pack("<I", real_at) + png
    assert ico_largest_entry(two) == (30, 20, True)
    assert ico_largest_entry(b"\x00\x00\x01\x00\x00\x00") == (0, 0, False)


# -- PNG: rows the data holds ---------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width, height, depth, colour, raw: bytes, *, interlace=0, idat_pieces=1, extra=b""):
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    stream = zlib.compress(raw)
    size = -(-len(stream) // idat_pieces)
    idats = b"".join(_chunk(b"IDAT", stream[at : at + size]) for at in range(0, len(stream), size))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + extra + idats + _chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("depth", "colour", "row_bytes"),
    [
        (1, 0, 1 + 2),  # grey, 1 bit: 10 bits -> 2 bytes, plus the filter byte
        (16, 2, 1 + 60),  # RGB, 16 bits
        (4, 3, 1 + 5),  # palette, 4 bits
        (8, 4, 1 + 20),  # grey + alpha
        (8, 6, 1 + 40),  # RGBA
        (8, 5, 1 + 40),  # an unknown colour type counts as 4 channels
    ],
)
def test_png_rows_are_counted_from_depth_and_colour_type(depth, colour, row_bytes):
    whole = _png(10, 10, depth, colour, bytes(row_bytes * 10))
    assert png_data_shortfall(whole) is None
    seven_rows = _png(10, 10, depth, colour, bytes(row_bytes * 7))
    assert png_data_shortfall(seven_rows) == "truncated PNG (image data ends at 70% of the rows)"
    just_short = _png(10, 10, depth, colour, bytes(row_bytes * 10 - 1))
    percent = 100 * (row_bytes * 10 - 1) // (row_bytes * 10)  # rounded down: never "100%"
    assert png_data_shortfall(just_short) == (
        f"truncated PNG (image data ends at {percent}% of the rows)"
    )


def test_interlaced_png_rows_are_counted_pass_by_pass():
    # 10x10 RGB Adam7 passes: 14 + 8 + 10 + 21 + 32 + 80 + 155 = 320 bytes (310 without).
    assert png_data_shortfall(_png(10, 10, 8, 2, bytes(320), interlace=1)) is None
    half = _png(10, 10, 8, 2, bytes(160), interlace=1)
    assert png_data_shortfall(half) == "truncated PNG (image data ends at 50% of the rows)"
    assert png_data_shortfall(_png(10, 10, 8, 2, bytes(160))) == (
        "truncated PNG (image data ends at 51% of the rows)"
    )
    # 1x1: only the first pass holds a pixel (4 bytes); empty passes count nothing.
    assert png_data_shortfall(_png(1, 1, 8, 2, bytes(2), interlace=1)) == (
        "truncated PNG (image data ends at 50% of the rows)"
    )


def test_png_data_split_over_chunks_and_after_other_chunks_is_all_counted():
    text = _chunk(b"tEXt", b"Comment\x00hello")
    data = _png(10, 10, 8, 2, bytes(310), idat_pieces=4, extra=text)
    assert png_data_shortfall(data) is None
    short = _png(10, 10, 8, 2, bytes(155), idat_pieces=4, extra=text)
    assert png_data_shortfall(short) == "truncated PNG (image data ends at 50% of the rows)"


def test_png_data_is_not_judged_without_a_header_or_with_a_broken_stream():
    rows = zlib.compress(bytes(310))
    no_header = b"\x89PNG\r\n\x1a\n" + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")
    assert png_data_shortfall(no_header) is None
    short_header = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", bytes(12)) + _chunk(b"IDAT", rows)
    assert png_data_shortfall(short_header) is None
    broken = _png(10, 10, 8, 2, bytes(310))
    at = broken.index(b"IDAT") + 4
    broken = broken[:at] + b"\x00\x01" + broken[at + 2 :]  # not a zlib header any more
    assert png_data_shortfall(broken) is None  # Pillow's own decode judged it already
    # Chunks after IEND are not read.
    late = _png(10, 10, 8, 2, b"")[:-12] + _chunk(b"IEND", b"") + _chunk(b"IDAT", rows)
    assert png_data_shortfall(late) == "truncated PNG (image data ends at 0% of the rows)"


def test_a_png_cut_inside_its_data_chunk_counts_what_arrived():
    whole = _png(64, 64, 8, 2, bytes(range(256)) * 48 + bytes(64 * 193 - 256 * 48))
    cut = whole[: len(whole) // 2]
    reason = png_data_shortfall(cut)
    assert reason is not None and reason.startswith("truncated PNG (image data ends at ")


# -- the memory plan ------------------------------------------------------------------------


def test_plan_of_a_downscale_by_part():
    # 1000x500 RGB -> 224x224, bilinear (support 1), a rotated copy, 7 decoder bytes:
    # decoded 1000*500*4 = 2,000,000; band = the whole image (2,000,000 < 4 MiB);
    # tables: x 1000->224 (scale 4.46): 224*(2*5+1)*8 = 19,712 > y 500->224: 224*7*8;
    # conversion = 4*2,000,000 + 4*224*500 + 4*224*224 + 19,712 = 8,668,416.
    plan = plan_decode(
        "RGB",
        (1000, 500),
        (224, 224),
        interpolation="bilinear",
        decoder_bytes=7,
        rotated=True,
        band_bytes=4 * MIB,
    )
    assert plan == DecodePlan(2_000_000, 7, 2_000_000, 8_668_416)
    assert plan.total == 12_668_423


def test_plan_tables_follow_the_kernel_and_the_scale():
    def conversion(interpolation, size, resized):
        plan = plan_decode("L", size, resized, interpolation=interpolation, band_bytes=4 * MIB)
        assert plan.decoded == size[0] * size[1] and plan.decoder == plan.rotation == 0
        band = 4 * size[0] * size[1]
        return plan.conversion - 4 * band - 4 * resized[0] * size[1] - 4 * resized[0] * resized[1]

    # bicubic (support 2): x 1000->224: 224*(2*9+1)*8 = 34,048; y 500->224: 224*11*8.
    assert conversion("bicubic", (1000, 500), (224, 224)) == 34_048
    assert conversion("nearest", (1000, 500), (224, 224)) == 0  # no tables
    # Upscaling keeps scale 1: 224*(2*1+1)*8 = 5,376 on each axis.
    assert conversion("bilinear", (10, 10), (224, 224)) == 5_376
    # An axis that keeps its size needs no table; the other one's is counted.
    assert conversion("bilinear", (224, 500), (224, 224)) == 224 * (2 * 3 + 1) * 8


def test_plan_bands_are_at_least_one_rgba_row_and_at_most_the_image():
    def band(size, band_bytes):
        plan = plan_decode("RGB", size, size, interpolation="nearest", band_bytes=band_bytes)
        return (plan.conversion - 4 * size[0] * size[1] - 4 * size[0] * size[1]) // 4

    assert band((1000, 500), 1000) == 4000  # one RGBA row
    assert band((1000, 500), 40_000) == 40_000
    assert band((1000, 500), 10**9) == 2_000_000  # the whole image


@pytest.mark.parametrize(
    ("mode", "per_pixel"),
    [("1", 1), ("L", 1), ("P", 1), ("I;16", 2), ("I;16B", 2), ("RGB", 4), ("LA", 4), ("F", 4)],
)
def test_plan_counts_the_bytes_pillow_stores_per_pixel(mode, per_pixel):
    plan = plan_decode(mode, (100, 10), (100, 10), interpolation="nearest", band_bytes=1)
    assert plan.decoded == 1000 * per_pixel


@pytest.mark.parametrize(
    ("total", "limit", "words"),
    [
        (13 * MIB + 1, 1.5 * MIB, "about 14 MiB > limit 1.5 MiB"),
        (10 * MIB, 768 * MIB, "about 10 MiB > limit 768 MiB"),
        (int(9.96 * MIB), 100_000, "about 10.0 MiB > limit 0.1 MiB"),
    ],
)
def test_the_refusal_message_rounds_mib_up_from_ten(total, limit, words):
    plan = DecodePlan(decoded=total, decoder=0, rotation=0, conversion=0)
    assert describe_plan(plan, int(limit), "400x300 PNG mode RGB") == (
        f"image needs too much memory to decode: {words} (400x300 PNG mode RGB)"
    )


# -- hostile headers (from the second round of survivors) -----------------------------------


def test_segments_are_skipped_by_their_length_even_when_they_hold_marker_bytes():
    # A 300-byte comment (its length needs both bytes) opening and closing with a fake
    # 9999x9999 frame header.
    fake = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 9999, 9999, 1) + b"\x09\x11\x00"
    content = fake + bytes(300 - 2 * len(fake)) + fake
    comment = b"\xff\xfe" + struct.pack(">H", 2 + len(content)) + content
    jpeg = encode(gradient((70, 35)), "JPEG")
    facts = read_jpeg(jpeg[:2] + comment + jpeg[2:])
    assert (facts.width, facts.height) == (70, 35)
    assert facts.blocks == {1: 45, 2: 15, 3: 15}


def test_stray_markers_without_a_length_are_stepped_over():
    jpeg = encode(gradient((64, 48)), "JPEG")
    sof = jpeg.index(b"\xff\xc0")
    for stray in (b"\xff\xd8", b"\xff\x01", b"\xff\xd7"):  # SOI, TEM, RST7
        facts = read_jpeg(jpeg[:sof] + stray + jpeg[sof:])
        assert (facts.width, facts.height, facts.scans) == (64, 48, 1), stray


def test_junk_between_segments_is_skipped_to_the_next_marker():
    # Some writers pad between segments; the walk looks for the next marker.
    jpeg = encode(gradient((64, 48)), "JPEG")
    sof = jpeg.index(b"\xff\xc0")
    facts = read_jpeg(jpeg[:sof] + b"\x00\x00junk\xff\x00" + jpeg[sof:])
    assert (facts.width, facts.height, facts.scans) == (64, 48, 1)


def test_bytes_without_any_marker_give_empty_facts():
    facts = read_jpeg(b"\xff\xd8" + b"no markers in here at all")
    assert facts == JpegFacts()


def test_frame_sizes_up_to_65535_are_read_unsigned():
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 40000, 50000, 1) + b"\x01\x11\x00"
    facts = read_jpeg(b"\xff\xd8" + sof + b"\xff\xd9")
    assert (facts.width, facts.height) == (50000, 40000)
    assert facts.blocks == {1: 6250 * 5000}


def _frame_and_scan(scan: bytes, components=(1, 2, 3)) -> bytes:
    frame = struct.pack(">BHHB", 8, 16, 16, len(components))
    frame += b"".join(bytes([ident, 0x11, 0]) for ident in components)
    sof = b"\xff\xc2" + struct.pack(">H", 2 + len(frame)) + frame
    sos = b"\xff\xda" + struct.pack(">H", 2 + len(scan)) + scan
    return b"\xff\xd8" + sof + sos + b"\xff\xd9"


def test_a_scan_header_cut_inside_its_component_table_counts_the_ids_present():
    # Three component ids, the last table byte and the spectral bytes missing.
    facts = read_jpeg(_frame_and_scan(b"\x03\x01\x00\x02\x00\x03"))
    assert facts.scan_blocks == 3 * 4  # three components of 2x2 blocks
    assert facts.complete()  # missing spectral bytes read as a full scan


def test_a_scan_naming_an_unknown_component_counts_the_known_ones():
    # Component 9 is not in the frame: no blocks, no precision, and no stop.
    scan = b"\x02\x09\x00\x01\x00" + bytes([0, 63, 0])
    facts = read_jpeg(_frame_and_scan(scan, components=(1,)))
    assert facts.scans == 1 and facts.scan_blocks == 4
    assert facts.complete()


def test_ico_entries_cut_inside_the_directory_end_the_walk():
    # Two entries listed, one there, its BMP header cut to the 12 bytes that size it.
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, 12, 22)
    data = struct.pack("<HHH", 0, 1, 2) + entry + _dib(24, 48)[:12]
    assert ico_largest_entry(data) == (24, 24, False)


def test_ico_png_entry_cut_after_its_size_and_read_unsigned():
    png = _png(30, 20, 8, 6, b"")[:24]  # the signature, IHDR's length, type, width, height
    assert ico_largest_entry(_ico([png])) == (30, 20, True)
    huge = png[:16] + struct.pack(">II", 3_000_000_000, 1)
    assert ico_largest_entry(_ico([huge])) == (3_000_000_000, 1, True)


def test_ico_largest_entry_compares_whole_areas_and_halves_odd_bmp_heights():
    # 40x10 (400 pixels) beats 15x15 (225) though 225 > 10 * 10.
    assert ico_largest_entry(_ico([_dib(40, 20), _dib(15, 30)])) == (40, 10, False)
    assert ico_largest_entry(_ico([_dib(24, 49)])) == (24, 24, False)  # an odd height: floor


def test_png_data_longer_than_a_megabyte_in_one_chunk_is_counted_whole():
    # 1000x400 RGB: 400 * 3001 = 1,200,400 bytes, inflated a megabyte at a time.
    raw = bytes(400 * 3001)
    assert png_data_shortfall(_png(1000, 400, 8, 2, raw)) is None
    assert png_data_shortfall(_png(1000, 400, 8, 2, raw[: 200 * 3001])) == (
        "truncated PNG (image data ends at 50% of the rows)"
    )


def test_png_chunks_after_iend_are_not_read():
    rows = zlib.compress(bytes(310))
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", 10, 10, 8, 2, 0, 0, 0))
    late = b"\x89PNG\r\n\x1a\n" + header + _chunk(b"IEND", b"") + _chunk(b"IDAT", rows)
    assert png_data_shortfall(late) == "truncated PNG (image data ends at 0% of the rows)"


def test_png_huge_lengths_and_sizes_are_read_unsigned():
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", 10, 10, 8, 2, 0, 0, 0))
    # A chunk claiming 4 GiB holds what the file holds: whole rows, or half of them.
    for raw, expected in ((bytes(310), None), (bytes(155), "ends at 50% of the rows")):
        lying = struct.pack(">I4s", 0xFFFFFFF0, b"IDAT") + zlib.compress(raw)
        reason = png_data_shortfall(b"\x89PNG\r\n\x1a\n" + header + lying)
        assert reason == (expected and f"truncated PNG (image data {expected})")
    wide = _png(2**31 + 10, 1, 8, 0, bytes(100))
    assert png_data_shortfall(wide) == "truncated PNG (image data ends at 0% of the rows)"
