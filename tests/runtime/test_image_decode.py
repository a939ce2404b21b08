"""decode_image: every mode converts, every failure is an InputDecodeError with a clear reason."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from capbatch.errors import InputDecodeError
from capbatch.image_decode import DEFAULT_MAX_PIXELS, decode_image, sniff_image_format
from capbatch.preprocess import PreprocessSpec, preprocess_image
from tests.io_fixtures import (
    BLUE,
    GREEN,
    HEIC_BYTES,
    HTML_BYTES,
    RED,
    WHITE,
    encode,
    gradient,
    jpeg_bytes,
    marker_image,
    png_bytes,
    png_header_only,
    solid,
)

SPEC = PreprocessSpec(size=32)


def decoded_colour(data: bytes) -> tuple[int, int, int]:
    pixels = decode_image(data, SPEC).pixels
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    return tuple(int(v) for v in pixels[16, 16])


def close_to(actual, expected, tolerance=12) -> bool:
    return all(abs(int(a) - int(e)) <= tolerance for a, e in zip(actual, expected))


def reason_for(data: bytes, **kwargs) -> str:
    with pytest.raises(InputDecodeError) as caught:
        decode_image(data, SPEC, **kwargs)
    return str(caught.value)


# -- formats and modes --------------------------------------------------------------------


def test_rgb_jpeg_and_reported_size():
    result = decode_image(jpeg_bytes(RED, (40, 30)), SPEC)
    assert (result.width, result.height) == (40, 30)
    assert close_to(tuple(result.pixels[16, 16]), RED)


@pytest.mark.parametrize(
    ("mode", "colour", "fmt", "expected"),
    [
        ("L", 200, "PNG", (200, 200, 200)),
        ("L", 200, "JPEG", (200, 200, 200)),
        ("1", 1, "PNG", WHITE),
        ("1", 1, "TIFF", WHITE),
        ("LA", (0, 0), "PNG", WHITE),  # fully transparent -> white background
        ("RGBA", (0, 0, 255, 255), "PNG", BLUE),
        ("RGBA", (0, 0, 255, 0), "PNG", WHITE),
        ("RGB", GREEN, "WEBP", GREEN),
        ("RGB", RED, "BMP", RED),
        ("RGB", RED, "TIFF", RED),
    ],
)
def test_modes_and_formats(mode, colour, fmt, expected):
    data = encode(
        solid(colour, (40, 30), mode), fmt, **({"lossless": True} if fmt == "WEBP" else {})
    )
    assert close_to(decoded_colour(data), expected)


def test_adobe_cmyk_jpeg_is_not_inverted():
    # Pillow writes CMYK JPEGs the Adobe way (inverted, APP14 marker), as Photoshop does.
    data = encode(solid((0, 255, 255, 0), (40, 30), "CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).info.get("adobe") is not None
    assert close_to(decoded_colour(data), RED, tolerance=20)


def test_sixteen_bit_grey_png():
    values = np.full((30, 40), 257 * 100, dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert close_to(decoded_colour(data), (100, 100, 100), tolerance=1)


def test_palette_png_with_transparency():
    image = Image.new("P", (40, 30), 1)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    assert close_to(decoded_colour(encode(image, "PNG", transparency=1)), WHITE)
    assert close_to(decoded_colour(encode(image, "PNG", transparency=0)), GREEN)


def test_animated_gif_and_multipage_tiff_use_the_first_frame():
    frames = [solid(RED, (40, 30)), solid(BLUE, (40, 30))]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    tiff = encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(gif)).n_frames == 2
    assert close_to(decoded_colour(gif), RED)
    assert close_to(decoded_colour(tiff), RED)


@pytest.mark.parametrize("size", [(1, 1), (20000, 10)])
def test_extreme_aspect_and_tiny_images(size):
    result = decode_image(encode(solid(RED, size), "PNG"), SPEC)
    assert (result.width, result.height) == size
    assert result.pixels.shape == (32, 32, 3)


def test_exif_rotated_jpeg_is_upright():
    image = marker_image((80, 40))
    exif = image.getexif()
    exif[0x0112] = 6  # stored landscape, displayed portrait (rotate 90 clockwise)
    result = decode_image(encode(image, "JPEG", quality=95, exif=exif), PreprocessSpec(size=40))
    assert (result.width, result.height) == (40, 80)
    pixels = result.pixels.astype(int)  # (40, 40, 3), the upright image stretched
    top_right, top_left = pixels[2:8, -8:-2].mean((0, 1)), pixels[2:8, 2:8].mean((0, 1))
    assert close_to(top_right, RED, tolerance=40)
    assert close_to(top_left, WHITE, tolerance=40)


def test_big_jpegs_are_decoded_in_draft_mode_close_to_a_full_decode(monkeypatch):
    data = encode(gradient((1600, 1200)), "JPEG", quality=92)
    spec = PreprocessSpec(size=224)
    reference = preprocess_image(Image.open(io.BytesIO(data)), spec)

    drafts = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        drafts.append((size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    result = decode_image(data, spec)
    assert drafts, "draft mode was not used"
    requested, loaded = drafts[0]
    assert loaded == (800, 600)  # 1/2 scale keeps >= 2 x 224 on both sides
    assert (result.width, result.height) == (1600, 1200)
    difference = np.abs(result.pixels.astype(int) - reference.astype(int))
    assert difference.mean() < 2.0 and difference.max() < 24


def test_small_jpegs_and_draft_false_skip_draft_mode(monkeypatch):
    calls = []
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", lambda *a: calls.append(a))
    decode_image(encode(gradient((300, 300)), "JPEG"), PreprocessSpec(size=224))
    decode_image(encode(gradient((1600, 1200)), "JPEG"), PreprocessSpec(size=224), draft=False)
    assert calls == []


def test_center_crop_draft_keeps_the_shorter_side():
    # 3000x1000: the shorter side needs 2 x 224; 1/2 scale (500 high) is the most allowed.
    data = encode(gradient((3000, 1000)), "JPEG")
    spec = PreprocessSpec(size=224, resize="center_crop")
    reference = preprocess_image(Image.open(io.BytesIO(data)), spec)
    result = decode_image(data, spec)
    assert np.abs(result.pixels.astype(int) - reference.astype(int)).mean() < 2.0


# -- failures -----------------------------------------------------------------------------


def test_zero_bytes():
    assert reason_for(b"") == "empty file (0 bytes)"


def test_truncated_jpeg_and_png():
    jpeg = encode(gradient((200, 150)), "JPEG")
    png = encode(gradient((200, 150)), "PNG")
    assert reason_for(jpeg[: len(jpeg) // 2]) == "truncated JPEG"
    assert reason_for(png[: len(png) // 2]) == "truncated PNG"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_headers():
    assert "JPEG" in reason_for(jpeg_bytes()[:40])
    assert "PNG" in reason_for(png_bytes()[:30])


def test_html_text_and_other_non_images():
    assert reason_for(HTML_BYTES) == "not an image (looks like HTML)"
    assert reason_for(b"just some notes\nabout a photo\n") == "not an image (looks like text)"
    assert (
        reason_for(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n") == "not an image (looks like a PDF document)"
    )
    assert reason_for(bytes(range(256)) * 4) == "unsupported image format"


def test_unsupported_formats_are_named():
    assert reason_for(HEIC_BYTES) == "unsupported image format (HEIC)"
    svg = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>'
    assert reason_for(svg) == "unsupported image format (SVG)"


def test_decompression_bomb_is_refused_from_the_header():
    limit_before = Image.MAX_IMAGE_PIXELS
    assert reason_for(png_header_only(20000, 20000)) == (
        f"image too large: 400000000 pixels > limit {DEFAULT_MAX_PIXELS}"
    )
    # A stricter per-call limit, below Pillow's own, is honoured without global state.
    data = encode(solid(RED, (400, 300)), "PNG")
    assert reason_for(data, max_pixels=100_000) == "image too large: 120000 pixels > limit 100000"
    assert decode_image(data, SPEC).width == 400
    assert Image.MAX_IMAGE_PIXELS == limit_before


def test_corrupt_jpeg_body():
    data = bytearray(encode(gradient((200, 150)), "JPEG"))
    data[300:2000] = bytes(1700)  # zero a slab of entropy-coded data
    try:
        decode_image(bytes(data), SPEC)  # libjpeg may recover with grey blocks
    except InputDecodeError as exc:
        assert "JPEG" in str(exc)


def test_bad_max_pixels_is_a_programming_error():
    with pytest.raises(ValueError):
        decode_image(jpeg_bytes(), SPEC, max_pixels=0)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (jpeg_bytes(), "JPEG"),
        (png_bytes(), "PNG"),
        (HEIC_BYTES, "HEIC"),
        (HTML_BYTES, None),
        (b"BMW is a car make, not a bitmap", None),
        (b"", None),
    ],
)
def test_sniff_image_format(head, expected):
    assert sniff_image_format(head[:64]) == expected


@pytest.mark.filterwarnings("ignore")  # Pillow warns about the broken metadata it skips
def test_mutated_images_only_ever_raise_input_decode_error():
    # A short deterministic mutation run; the long fuzz is a separate harness.
    rng = random.Random(5)
    seeds = [encode(gradient((48, 32)), fmt) for fmt in ("JPEG", "PNG", "GIF", "TIFF", "WEBP")]
    outcomes = set()
    for _ in range(400):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            if rng.random() < 0.7:
                data[rng.randrange(len(data))] = rng.randrange(256)
            else:
                data = data[: rng.randrange(1, len(data) + 1)]
        try:
            decode_image(bytes(data), SPEC)
            outcomes.add("ok")
        except InputDecodeError as exc:
            assert str(exc) and "\n" not in str(exc) and len(str(exc)) < 200
            outcomes.add("error")
    assert outcomes == {"ok", "error"}


def test_jpeg_scan_work_limit_counts_blocks_over_all_scans(monkeypatch):
    from capbatch import image_limits

    data = encode(gradient((320, 240)), "JPEG", progressive=True)
    facts = image_limits.read_jpeg(data)
    # 320x240 4:2:0: 1200 luma blocks + 2 x 300 chroma blocks; libjpeg writes 10 scans.
    assert sum(facts.blocks.values()) == 1800 and facts.scans == 10 and facts.complete()
    monkeypatch.setattr(image_limits, "MAX_JPEG_SCAN_BLOCKS", facts.scan_blocks - 1)
    assert reason_for(data).startswith("JPEG too costly to decode: 10 scans over 1800 blocks")
    monkeypatch.setattr(image_limits, "MAX_JPEG_SCAN_BLOCKS", facts.scan_blocks)
    assert decode_image(data, SPEC).width == 320


@pytest.mark.filterwarnings("ignore:Image was not the expected size")  # Pillow finds out late
def test_ico_entries_are_sized_from_their_own_headers():
    from tests.bombfiles import ico_png_bomb

    data = ico_png_bomb(300)  # the directory says 256x256
    assert reason_for(data, max_pixels=256 * 256) == (
        "image too large: 90000 pixels > limit 65536"
    )
    assert (decode_image(data, SPEC).width, decode_image(data, SPEC).height) == (300, 300)


def test_memory_budget_is_per_call_and_names_the_image():
    data = encode(solid(RED, (400, 300)), "PNG")
    assert reason_for(data, max_decode_bytes=100_000).startswith(
        "image needs too much memory to decode: about 2.3 MiB > limit 0.1 MiB (400x300 PNG mode RGB)"
    )
    with pytest.raises(ValueError):
        decode_image(data, SPEC, max_decode_bytes=0)
