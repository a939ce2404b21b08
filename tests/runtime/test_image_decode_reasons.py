"""image_decode's promises, pinned from its mutation survivors (issue 19).

What a user sees of this module: the format a file's first bytes name (the
directory walk keeps extension-less files by it), the exact reason a row gets
for each kind of non-image or broken image, the memory budget counted to the
byte before any pixel is decoded, JPEG draft scaling requested at the size the
resize needs, and data that ends early refused instead of captioned grey.
"""

from __future__ import annotations

import io
import math
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin, PngImagePlugin

from capbatch import image_decode
from capbatch.errors import InputDecodeError
from capbatch.image_decode import decode_image, sniff_image_format
from capbatch.image_limits import plan_decode, read_jpeg
from capbatch.preprocess import BAND_BYTES, PreprocessSpec
from tests.bombfiles import jpeg_dc_only
from tests.io_fixtures import RED, encode, gradient, marker_image, solid

SPEC = PreprocessSpec(size=32)
CROP = PreprocessSpec(size=32, resize="center_crop")
ORIENTATION = 0x0112


def reason_for(data: bytes, spec: PreprocessSpec = SPEC, **kwargs) -> str:
    with pytest.raises(InputDecodeError) as caught:
        decode_image(data, spec, **kwargs)
    return str(caught.value)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# -- the format named by the first bytes ----------------------------------------------------


def _saved(fmt: str, **kwargs) -> bytes:
    return encode(gradient((40, 30)), fmt, **kwargs)


def _bmp_with_dib_size(size: int) -> bytes:
    return b"BM" + bytes(12) + size.to_bytes(4, "little") + bytes(46)


SNIFFED = [
    (_saved("JPEG"), "JPEG"),
    (_saved("PNG"), "PNG"),
    (b"GIF87a" + bytes(20), "GIF"),
    (b"GIF89a" + bytes(20), "GIF"),
    (_saved("TIFF"), "TIFF"),
    (b"MM\x00*" + bytes(20), "TIFF"),
    (b"II+\x00" + bytes(20), "TIFF"),  # BigTIFF
    (b"MM\x00+" + bytes(20), "TIFF"),
    (_saved("WEBP"), "WEBP"),
    (b"\x00\x00\x00\x1cftypavif" + bytes(20), "AVIF"),
    (b"\x00\x00\x00\x1cftypavis" + bytes(20), "AVIF"),
    (b"\x00\x00\x00\x18ftypheic" + bytes(20), "HEIC"),
    (b"\x00\x00\x00\x18ftypmif1" + bytes(20), "HEIC"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n" + bytes(20), "JPEG XL"),
    (b"\xff\x0a" + bytes(20), "JPEG XL"),  # a bare JPEG XL codestream
    (_saved("JPEG2000"), "JPEG2000"),
    (b"\xff\x4f\xff\x51" + bytes(20), "JPEG2000"),  # a J2K codestream
    (_saved("BMP"), "BMP"),
    (_bmp_with_dib_size(12), "BMP"),  # OS/2 1.x header
    (b"P6\n40 30\n255\n", "PPM"),
    (b"P1 2 2\n", "PPM"),
    (b"P7\tWIDTH", "PPM"),
    (b"P5#comment", "PPM"),
    (b"8BPS" + bytes(20), "PSD"),
    (_saved("QOI"), "QOI"),
    (_saved("ICO"), "ICO"),
    (_saved("DDS"), "DDS"),
    (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
    (b"\xef\xbb\xbf \r\n\t<SVG>", "SVG"),  # BOM, white space, upper case
    (b"BM" + bytes(12) + b"\x28\x00\x00\x00", "BMP"),  # the 18 bytes the check needs
    (b"\x00\x00\x01\x00\x01\x00", "ICO"),  # the 6 bytes the check needs
    (b'<?xml version="1.0"?><svg/>', "SVG"),
]

NOT_SNIFFED = [
    b"",
    b"RIFF\x00\x00\x00\x00WAVEfmt ",  # RIFF, but audio
    b"xxxxxxxxWEBP",  # WEBP's tag without RIFF
    b"\x00\x00\x00\x1cftypisom" + bytes(20),  # an MP4
    b"\x00\x00\x00\x0cjP  \r\n\x87",  # the JPEG 2000 signature cut short
    _bmp_with_dib_size(99),  # "BM" + an unknown DIB header size: text, not a bitmap
    b"BM" + bytes(12) + b"\x28\x00\x00",  # "BM" cut inside the DIB header size
    b"P8\n40 30\n",
    b"P6x",
    b"\x00\x00\x01\x00\x00\x00" + bytes(10),  # an ICO header listing no images
    b"\x00\x00\x01\x00\x01",  # an ICO header cut before its count ends
    b'<?xml version="1.0"?><note/>',
    b"GIF90a",
    b"X<svg/>",  # text before the tag: SVG only by a later look (describe_non_image)
    b"8bps",
]


@pytest.mark.parametrize(("data", "expected"), SNIFFED)
def test_each_format_is_named_by_its_first_bytes(data, expected):
    assert sniff_image_format(data[: image_decode.SNIFF_BYTES]) == expected


@pytest.mark.parametrize("data", NOT_SNIFFED)
def test_near_misses_are_not_named(data):
    assert sniff_image_format(data[: image_decode.SNIFF_BYTES]) is None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x00\x00\x00\x0cJXL \r\n\x87\n" + bytes(40), "unsupported image format (JPEG XL)"),
        (b"\x00\x00\x00\x18ftypheix" + bytes(40), "unsupported image format (HEIC)"),
        (b"  <svg/>", "unsupported image format (SVG)"),
        # Sniffed, but not a file Pillow can open: the header is broken.
        (b"8BPS" + bytes(40), "truncated or corrupt PSD header"),
        (b"qoif" + bytes(4), "truncated or corrupt QOI header"),
        # A parser error inside open() is that input's reason too, named by the sniffed format.
        (b"DDS " + bytes(40), "corrupt DDS: Unsupported header size 0"),
        (b"GIF89a" + bytes(3), "truncated or corrupt GIF header"),
    ],
    ids=["jxl", "heic", "svg", "psd", "qoi", "dds", "gif"],
)
def test_named_but_unreadable_formats_get_their_name_in_the_reason(data, expected):
    assert reason_for(data) == expected


# -- inputs that are not images -------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"<html><body>hi</body></html>", "not an image (looks like HTML)"),
        (b"\n  <HEAD><title>x</title></HEAD>", "not an image (looks like HTML)"),
        (b"<body>only a body</body>", "not an image (looks like HTML)"),
        (b"<!-- a comment first --><HTML lang=en>", "not an image (looks like HTML)"),
        (b"<!DOCTYPE HTML PUBLIC>", "not an image (looks like HTML)"),
        # SVG that the first 64 bytes do not give away: a comment first, or a long prolog.
        (b"<!-- drawn by hand --><svg width='1'/>", "unsupported image format (SVG)"),
        (b'<?xml version="1.0"?>' + b" " * 80 + b"<svg/>", "unsupported image format (SVG)"),
        (b"\xef\xbb\xbf<?XML version='1.0'?><note>hi</note>", "not an image (looks like XML)"),
        (b"%PDF-1.4\n" + bytes(range(128, 200)), "not an image (looks like a PDF document)"),
        (b"PK\x03\x04\x14\x00" + bytes(40), "not an image (looks like a ZIP archive)"),
        (b"\x1f\x8b\x08\x00" + bytes(40), "not an image (looks like gzip data)"),
        (b'\xef\xbb\xbf  {"name": "x.jpg"}', "not an image (looks like JSON)"),
        (b"[1, 2, 3]", "not an image (looks like JSON)"),
        (b"X{1}", "not an image (looks like text)"),
        (b"col\tumns\r\nand a form feed\f\n", "not an image (looks like text)"),
        (b"hello\x00world" * 4, "unsupported image format"),
        (b"  \n\t", "not an image (looks like text)"),
    ],
)
def test_each_kind_of_non_image_gets_its_reason(data, expected):
    assert reason_for(data) == expected


def test_text_cut_inside_a_multibyte_character_is_still_text():
    # The reason reads the first KiB; a 4-byte character may straddle its end.
    emoji = "\N{GRINNING FACE}".encode()
    data = b"a" * 1021 + emoji + b" and more text"
    assert len(data[:1024]) == 1024 and data[1021:1024] == emoji[:3]
    assert reason_for(data) == "not an image (looks like text)"
    # Only the last 3 bytes are dropped: text must start whole and end whole before them.
    euro = "\N{EURO SIGN}".encode()
    ends_whole = b"a" * 1018 + euro + emoji[:3]
    assert reason_for(ends_whole + b"tail") == "not an image (looks like text)"
    starts_cut = emoji + b"a" * 1017 + emoji[:3]
    assert reason_for(starts_cut + b"tail") == "not an image (looks like text)"
    assert reason_for(b"\xff\xfe" + b"text" * 10) == "unsupported image format"  # not UTF-8


# -- limits and their messages --------------------------------------------------------------


def test_limits_of_one_are_allowed_and_below_one_are_programming_errors():
    one_pixel = encode(solid(RED, (1, 1)), "PNG")
    assert decode_image(one_pixel, SPEC, max_pixels=1).pixels.shape == (32, 32, 3)
    assert reason_for(one_pixel, max_decode_bytes=1).startswith("image needs too much memory")
    with pytest.raises(ValueError, match=r"^max_pixels must be >= 1, got 0$"):
        decode_image(one_pixel, SPEC, max_pixels=0)
    with pytest.raises(ValueError, match=r"^max_decode_bytes must be >= 1, got -5$"):
        decode_image(one_pixel, SPEC, max_decode_bytes=-5)


def test_an_image_of_exactly_max_pixels_decodes():
    data = encode(solid(RED, (40, 30)), "PNG")
    assert decode_image(data, SPEC, max_pixels=1200).width == 40
    assert reason_for(data, max_pixels=1199) == "image too large: 1200 pixels > limit 1199"


def test_pillows_own_bomb_check_is_reported_in_our_words(monkeypatch):
    # Pillow's global limit (left alone by capbatch) may be lower than ours.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    data = encode(solid(RED, (40, 30)), "PNG")  # 1200 pixels > 2 x 100: Pillow refuses in open()
    assert reason_for(data) == "image too large: 1200 pixels > limit 200"
    assert reason_for(data, max_pixels=150) == "image too large: 1200 pixels > limit 150"


def _failing_load(monkeypatch, error: BaseException) -> None:
    def load(self):
        raise error

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", load)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            Image.DecompressionBombError("Image size (400000000 pixels) exceeds limit of 5 pixels"),
            "image too large: 400000000 pixels > limit 5",
        ),
        (Image.DecompressionBombError("too big"), "image too large: too big"),
        (MemoryError(), "out of memory decoding PNG"),
        (EOFError(), "truncated PNG"),
        (OSError("image file is truncated (3 bytes not processed)"), "truncated PNG"),
        (OSError("Premature end of stream"), "truncated PNG"),
        (OSError("bad\nsecond line"), "corrupt PNG: bad"),
        (ValueError(), "corrupt PNG: ValueError"),
    ],
)
def test_each_kind_of_load_failure_gets_its_reason(monkeypatch, error, expected):
    _failing_load(monkeypatch, error)
    data = encode(solid(RED, (40, 30)), "PNG")
    assert reason_for(data, max_pixels=10_000) == expected


def test_a_pillow_bomb_error_without_numbers_keeps_pillows_words(monkeypatch):
    def refuse(*args, **kwargs):
        raise Image.DecompressionBombError("too many frames")

    monkeypatch.setattr(Image, "open", refuse)
    assert reason_for(encode(solid(RED), "PNG")) == "image too large: too many frames"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (encode(solid(RED), "PNG"), "out of memory decoding PNG"),
        (b"\x01\x02\x03 not sniffed", "out of memory decoding image"),
    ],
)
def test_a_failure_inside_open_is_that_inputs_reason(monkeypatch, data, expected):
    def fail(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(Image, "open", fail)
    assert reason_for(data) == expected


def test_a_real_corrupt_stream_is_corrupt_not_truncated():
    data = bytearray(encode(gradient((64, 48)), "PNG"))
    at = data.index(b"IDAT")
    for index in range(at + 10, at + 40):
        data[index] ^= 0x55
    assert reason_for(bytes(data)) == "corrupt PNG: broken data stream when reading image file"


def test_a_completeness_check_tripping_on_hostile_bytes_is_a_corrupt_row(monkeypatch):
    def trip(data):
        raise struct.error("unpack requires a buffer of 8 bytes")

    monkeypatch.setattr(image_decode, "png_data_shortfall", trip)
    black = encode(solid((0, 0, 0)), "PNG")  # a zero last row: the check runs
    assert reason_for(black) == "corrupt PNG: unpack requires a buffer of 8 bytes"


def test_a_conversion_failure_names_format_and_mode(monkeypatch):
    def fail(image, spec):
        raise ValueError("conversion not supported\nmore")

    monkeypatch.setattr(image_decode, "preprocess_image", fail)
    data = encode(solid(200, (40, 30), "L"), "PNG")
    assert reason_for(data) == "cannot convert PNG image (mode L): conversion not supported"


def test_formats_the_sniffer_does_not_know_are_named_by_pillow():
    data = encode(solid(RED), "TGA")
    assert sniff_image_format(data[:64]) is None
    assert reason_for(data, max_decode_bytes=100).endswith("(40x30 TGA mode RGB)")


# -- the memory budget, counted to the byte -------------------------------------------------


def plan_total(mode, size, resized, *, decoder=0, rotated=False, spec=SPEC) -> int:
    return plan_decode(
        mode,
        size,
        resized,
        interpolation=spec.interpolation,
        decoder_bytes=decoder,
        rotated=rotated,
        band_bytes=BAND_BYTES,
    ).total


def assert_budget_is(data: bytes, total: int, spec: PreprocessSpec = SPEC) -> None:
    """The decode fits a budget of exactly `total` bytes and is refused at one byte less."""
    assert decode_image(data, spec, max_decode_bytes=total).pixels.shape == (32, 32, 3)
    assert reason_for(data, spec, max_decode_bytes=total - 1).startswith(
        "image needs too much memory to decode: about "
    )


def test_budget_of_a_png_is_its_pixels_and_conversion_only():
    assert_budget_is(_saved("PNG"), plan_total("RGB", (40, 30), (32, 32)))


def test_budget_of_a_webp_counts_libwebps_two_rgba_buffers():
    data = _saved("WEBP", lossless=True)
    assert_budget_is(data, plan_total("RGB", (40, 30), (32, 32), decoder=2 * 4 * 40 * 30))


def test_budget_of_a_compressed_tiff_counts_one_strip_and_a_raw_one_none():
    strips = _saved("TIFF", compression="tiff_deflate", strip_size=40 * 3 * 8)
    assert Image.open(io.BytesIO(strips)).tag_v2[278] == 8  # rows per strip
    assert_budget_is(strips, plan_total("RGB", (40, 30), (32, 32), decoder=8 * 40 * 4))
    one_strip = _saved("TIFF", compression="tiff_deflate")  # all 30 rows in one strip
    assert_budget_is(one_strip, plan_total("RGB", (40, 30), (32, 32), decoder=30 * 40 * 4))
    assert_budget_is(_saved("TIFF"), plan_total("RGB", (40, 30), (32, 32)))


def _ico(entries: list[tuple[int, int, bytes]]) -> bytes:
    """An ICO of (directory width, directory height, image bytes) entries."""
    offset = 6 + 16 * len(entries)
    directory, body = b"", b""
    for width, height, payload in entries:
        directory += struct.pack(
            "<BBBBHHII", width % 256, height % 256, 0, 0, 1, 32, len(payload), offset + len(body)
        )
        body += payload
    return struct.pack("<HHH", 0, 1, len(entries)) + directory + body


def test_budget_of_an_ico_bmp_entry_counts_the_mask_and_rgba_copies():
    buffer = io.BytesIO()
    solid((0, 0, 255, 255), (48, 48), "RGBA").save(
        buffer, "ICO", sizes=[(48, 48)], bitmap_format="bmp"
    )
    bmp_icon = buffer.getvalue()
    assert_budget_is(bmp_icon, plan_total("RGBA", (48, 48), (32, 32), decoder=2 * 4 * 48 * 48))
    png_icon = _ico([(48, 48, encode(solid((0, 0, 255, 255), (48, 48), "RGBA"), "PNG"))])
    assert_budget_is(png_icon, plan_total("RGBA", (48, 48), (32, 32)))


@pytest.mark.filterwarnings("ignore:Image was not the expected size")
def test_an_ico_entry_larger_than_the_one_pillow_picks_still_counts():
    # The directory lists the 300x300 PNG as 16x16, so Pillow decodes the 32x32
    # entry; the limits are checked, from the headers, against the largest one.
    small = encode(solid((0, 255, 0, 255), (32, 32), "RGBA"), "PNG")
    large = encode(solid((255, 0, 0, 255), (300, 300), "RGBA"), "PNG")
    data = _ico([(32, 32, small), (16, 16, large)])
    assert Image.open(io.BytesIO(data)).size == (32, 32)
    assert reason_for(data, max_pixels=50_000) == "image too large: 90000 pixels > limit 50000"
    assert_budget_is(data, plan_total("RGBA", (300, 300), (32, 32)))


def _rotated(fmt: str, orientation: int = 6, **kwargs) -> bytes:
    image = marker_image((80, 40))
    exif = image.getexif()
    exif[ORIENTATION] = orientation
    return encode(image, fmt, exif=exif, **kwargs)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "PNG"])
def test_budget_of_an_exif_rotated_image_counts_the_upright_copy(fmt):
    # Stored 80x40, displayed 40x80: center_crop resizes the upright image to 32x64.
    data = _rotated(fmt, **({"quality": 95} if fmt == "JPEG" else {"lossless": True}))
    decoder = 2 * 4 * 80 * 40 if fmt == "WEBP" else 0
    total = plan_total("RGB", (80, 40), (32, 64), decoder=decoder, rotated=True, spec=CROP)
    assert_budget_is(data, total, CROP)
    decoded = decode_image(data, CROP)
    assert (decoded.width, decoded.height) == (40, 80)


def test_budget_of_a_rotated_tiff_counts_the_copy_pillow_makes():
    # Pillow turns a TIFF upright itself, in load() (size already 40x80 when opened):
    # the copy is counted from the orientation tag, which is not in info["exif"].
    data = _rotated("TIFF")
    assert "exif" not in Image.open(io.BytesIO(data)).info
    assert_budget_is(data, plan_total("RGB", (40, 80), (32, 32), rotated=True))
    decoded = decode_image(data, SPEC)
    assert (decoded.width, decoded.height) == (40, 80)


@pytest.mark.parametrize(("orientation", "upright"), [(2, (80, 40)), (3, (80, 40)), (8, (40, 80))])
def test_budget_and_reported_size_follow_each_orientation(orientation, upright):
    data = _rotated("JPEG", orientation, quality=95)
    resized = (64, 32) if upright == (80, 40) else (32, 64)
    assert_budget_is(data, plan_total("RGB", (80, 40), resized, rotated=True, spec=CROP), CROP)
    decoded = decode_image(data, CROP)
    assert (decoded.width, decoded.height) == upright


def test_budget_of_a_progressive_jpeg_counts_every_blocks_coefficients():
    data = encode(gradient((80, 40)), "JPEG", progressive=True, quality=90)
    # 80x40 at 4:2:0: 10x5 luma blocks and 5x3 blocks for each chroma component.
    assert sum(read_jpeg(data).blocks.values()) == 50 + 15 + 15
    assert_budget_is(data, plan_total("RGB", (80, 40), (32, 32), decoder=80 * 64 * 2))


def test_a_png_over_the_budget_is_refused_before_any_pixel_is_decoded(monkeypatch):
    loaded = []
    original = PngImagePlugin.PngImageFile.load

    def spy(self):
        loaded.append(self.size)
        return original(self)

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", spy)
    assert reason_for(_saved("PNG"), max_decode_bytes=1000).startswith("image needs too much")
    assert loaded == []


# -- JPEG draft scaling ---------------------------------------------------------------------


def draft_requests(monkeypatch, size, spec) -> list[tuple[int, int]]:
    requested = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, request):
        requested.append(request)
        return original(self, mode, request)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    decoded = decode_image(encode(gradient(size), "JPEG"), spec)
    assert (decoded.width, decoded.height) == size and decoded.pixels.shape[:2] == (spec.size,) * 2
    return requested


@pytest.mark.parametrize(
    ("size", "spec", "expected"),
    [
        ((1600, 1200), PreprocessSpec(size=224), [(448, 448)]),
        ((896, 896), PreprocessSpec(size=224), [(448, 448)]),  # exactly 1/2: still allowed
        ((1000, 1000), PreprocessSpec(size=224), [(448, 448)]),
        ((895, 1600), PreprocessSpec(size=224), []),  # one side short of the margin
        ((1600, 895), PreprocessSpec(size=224), []),
        # center_crop: the shorter side ends at 224, the longer keeps its proportion.
        ((3000, 1000), PreprocessSpec(size=224, resize="center_crop"), [(1344, 448)]),
        ((1000, 3000), PreprocessSpec(size=224, resize="center_crop"), [(448, 1344)]),
        ((3000, 895), PreprocessSpec(size=224, resize="center_crop"), []),
    ],
)
def test_draft_is_requested_at_twice_the_size_the_resize_needs(monkeypatch, size, spec, expected):
    assert draft_requests(monkeypatch, size, spec) == expected


# -- data that ends early -------------------------------------------------------------------


def _interlaced_png(width: int, height: int, passes: int) -> bytes:
    """An Adam7 RGB PNG of grey 200 whose data holds only the first `passes` passes."""
    adam7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2))
    adam7 += ((0, 1, 1, 2),)
    raw = b""
    for x0, y0, dx, dy in adam7[:passes]:
        pass_w, pass_h = math.ceil((width - x0) / dx), math.ceil((height - y0) / dy)
        if pass_w > 0 and pass_h > 0:
            raw += (b"\x00" + bytes([200]) * 3 * pass_w) * pass_h
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def test_an_interlaced_png_missing_its_last_pass_is_truncated_though_its_last_row_is_whole():
    # Row 48 of 49 is complete after pass 6; the odd rows come only in pass 7.
    whole = decode_image(_interlaced_png(64, 49, 7), SPEC)
    assert whole.pixels[16, 16].tolist() == [200, 200, 200]
    assert reason_for(_interlaced_png(64, 49, 6)) == (
        "truncated PNG (image data ends at 51% of the rows)"
    )


def test_a_png_missing_only_its_last_row_is_truncated():
    rows = [b"\x00" + bytes([200]) * 3 * 64 for _ in range(47)]
    header = struct.pack(">IIBBBBB", 64, 48, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + _chunk(b"IEND", b"")
    )
    assert reason_for(data) == "truncated PNG (image data ends at 97% of the rows)"


def test_a_progressive_jpeg_cut_after_its_dc_scan_is_truncated_even_with_a_black_bottom():
    # A last row of exact zeros (grey, DC only) must not send it to the PNG check.
    picture = np.array(gradient((64, 48)).convert("L"))
    picture[32:] = 0
    data = jpeg_dc_only_of(Image.fromarray(picture))
    assert reason_for(data) == "truncated JPEG (progressive scans end before full detail)"
    assert reason_for(jpeg_dc_only()) == "truncated JPEG (progressive scans end before full detail)"


def jpeg_dc_only_of(picture: Image.Image) -> bytes:
    jpeg = encode(picture, "JPEG", progressive=True, quality=90)
    first = jpeg.index(b"\xff\xda")
    second = jpeg.index(b"\xff\xda", first + 2)
    return jpeg[:second] + b"\xff\xd9"


def _tiff(width: int, height: int, *, tile=None, rows_per_strip=None) -> bytes:
    """A deflated 8-bit grey TIFF of value 90, in tiles (w, h), strips, or one strip
    without a RowsPerStrip tag (the whole image by the TIFF spec's default)."""
    if tile is not None:
        tile_w, tile_h = tile
        pieces = [
            zlib.compress(bytes([90]) * tile_w * tile_h)
            for _ in range(0, height, tile_h)
            for _ in range(0, width, tile_w)
        ]
        layout = [(322, 3, 1, tile_w), (323, 3, 1, tile_h), (324, 4, "offsets"), (325, 4, "counts")]
    else:
        rows = rows_per_strip or height
        pieces = [
            zlib.compress(bytes([90]) * width * min(rows, height - top))
            for top in range(0, height, rows)
        ]
        layout = [(273, 4, "offsets"), (279, 4, "counts")]
        if rows_per_strip is not None:
            layout.append((278, 3, 1, rows_per_strip))
    entries = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 1, 8), (259, 3, 1, 8)]
    entries += [(262, 3, 1, 1), (277, 3, 1, 1)]
    entries = sorted(entries + layout, key=lambda entry: entry[0])
    arrays_at = 8 + 2 + 12 * len(entries) + 4
    count = len(pieces)
    data_at = arrays_at + 8 * count
    offsets = [data_at + sum(len(p) for p in pieces[:index]) for index in range(count)]
    values = {"offsets": offsets, "counts": [len(p) for p in pieces]}
    ifd = struct.pack("<H", len(entries))
    for tag, kind, *rest in entries:
        if rest[0] in values:
            listed = values[rest[0]]
            at = arrays_at if rest[0] == "offsets" else arrays_at + 4 * count
            value = listed[0] if count == 1 else at
            ifd += struct.pack("<HHII", tag, kind, count, value)
        else:
            ifd += struct.pack("<HHIHH", tag, kind, rest[0], rest[1], 0)
    ifd += struct.pack("<I", 0)
    arrays = struct.pack(f"<{count}I", *offsets) + struct.pack(f"<{count}I", *values["counts"])
    return b"II*\x00" + struct.pack("<I", 8) + ifd + arrays + b"".join(pieces)


@pytest.mark.parametrize(
    ("layout", "decoder"),
    [
        ({"tile": (16, 32)}, 32 * 16 * 4),  # one 16x32 tile at a time
        ({"tile": (48, 64)}, 48 * 48 * 4),  # a tile taller than the image: its rows only
        ({"rows_per_strip": 16}, 16 * 64 * 4),
        ({}, 48 * 64 * 4),  # no RowsPerStrip: one strip of the whole image
    ],
    ids=["tiles", "tall-tile", "strips", "no-rows-per-strip"],
)
def test_budget_of_a_tiled_or_stripped_tiff_counts_one_tile_or_strip(layout, decoder):
    data = _tiff(64, 48, **layout)
    assert decode_image(data, SPEC).pixels[16, 16].tolist() == [90, 90, 90]
    assert_budget_is(data, plan_total("L", (64, 48), (32, 32), decoder=decoder))
