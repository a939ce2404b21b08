"""preprocess's promises, pinned from its mutation survivors (issue 19).

The one resize shared by training and the runtime: the spec's validation, the
EXIF orientations, each wide mode's mapping to 8 bits (exact values at the
rounding edges), alpha and colour keys over white, and the resize and crop
geometry, pixel for pixel.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from capbatch import preprocess
from capbatch.preprocess import (
    PreprocessSpec,
    exif_orientation,
    preprocess_image,
    resize,
    resized_size,
    to_rgb,
    upright_size,
)
from tests.io_fixtures import RED, WHITE, encode, marker_image

ORIENTATION = 0x0112


# -- the spec -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 31}, "preprocess size must be an integer >= 32, got 31"),
        ({"size": 64.0}, "preprocess size must be an integer >= 32, got 64.0"),
        ({"size": True}, "preprocess size must be an integer >= 32, got True"),
        ({"size": "64"}, "preprocess size must be an integer >= 32, got '64'"),
        ({"resize": "fit"}, "unknown resize mode 'fit'"),
        ({"resize": "Stretch"}, "unknown resize mode 'Stretch'"),
        ({"interpolation": "area"}, "unknown interpolation 'area'"),
        ({"interpolation": "BILINEAR"}, "unknown interpolation 'BILINEAR'"),
    ],
)
def test_spec_refusals_name_the_bad_value(kwargs, message):
    with pytest.raises(ValueError) as caught:
        PreprocessSpec(**kwargs)
    assert str(caught.value) == message


def test_spec_defaults_the_smallest_size_and_every_choice():
    assert PreprocessSpec().to_dict() == {
        "size": 224,
        "resize": "stretch",
        "interpolation": "bilinear",
    }
    assert PreprocessSpec(size=32).size == 32
    for resize_mode in ("stretch", "center_crop"):
        for interpolation in ("bilinear", "bicubic", "nearest"):
            spec = PreprocessSpec(size=32, resize=resize_mode, interpolation=interpolation)
            assert spec.to_dict()["interpolation"] == interpolation


# -- EXIF orientation -----------------------------------------------------------------------


def _with_orientation(value, image=None) -> Image.Image:
    image = image or marker_image((80, 40))
    exif = image.getexif()
    exif[ORIENTATION] = value
    return Image.open(io.BytesIO(encode(image, "PNG", exif=exif)))


def _red_corner(image: Image.Image) -> str:
    width, height = image.size
    corners = {
        "top-left": (2, 2),
        "top-right": (width - 3, 2),
        "bottom-left": (2, height - 3),
        "bottom-right": (width - 3, height - 3),
    }
    red = [name for name, xy in corners.items() if image.getpixel(xy) == RED]
    assert len(red) == 1, red
    return red[0]


@pytest.mark.parametrize(
    ("orientation", "size", "corner"),
    [
        (1, (80, 40), "top-left"),
        (2, (80, 40), "top-right"),  # mirrored
        (3, (80, 40), "bottom-right"),  # turned 180
        (4, (80, 40), "bottom-left"),  # flipped
        (5, (40, 80), "top-left"),  # transposed
        (6, (40, 80), "top-right"),  # turned 90 clockwise
        (7, (40, 80), "bottom-right"),  # transversed
        (8, (40, 80), "bottom-left"),  # turned 90 counter-clockwise
    ],
)
def test_each_exif_orientation_is_turned_upright(orientation, size, corner):
    image = _with_orientation(orientation)
    assert exif_orientation(image) == orientation
    assert upright_size(image) == size
    upright = to_rgb(image)
    assert upright.size == size and _red_corner(upright) == corner
    # preprocess_image turns it the same way: compare with the upright image resized.
    spec = PreprocessSpec(size=32, interpolation="nearest")
    assert np.array_equal(preprocess_image(image, spec), resize(upright, spec))


@pytest.mark.parametrize("value", [0, 9, 65535, "6", 6.0])
def test_orientation_values_outside_1_to_8_mean_upright(value):
    image = Image.new("RGB", (20, 10), RED)
    image.getexif()[ORIENTATION] = value
    assert exif_orientation(image) == 1 and upright_size(image) == (20, 10)


def test_an_image_without_exif_or_with_broken_exif_is_upright():
    assert exif_orientation(Image.new("RGB", (20, 10))) == 1
    broken = Image.new("RGB", (20, 10), RED)
    broken.info["exif"] = b"Exif\x00\x00garbage"
    assert exif_orientation(broken) == 1


def test_a_transpose_that_fails_keeps_the_stored_orientation(monkeypatch):
    def broken(image):
        raise SyntaxError("not a TIFF file")

    monkeypatch.setattr(preprocess.ImageOps, "exif_transpose", broken)
    image = _with_orientation(6)
    assert to_rgb(image).size == (80, 40)
    assert _red_corner(to_rgb(image)) == "top-left"


# -- wide modes to 8 bits -------------------------------------------------------------------


def _grey_values(image: Image.Image) -> list[int]:
    rgb = np.asarray(to_rgb(image))
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    return rgb[0, :, 0].tolist()


def test_sixteen_bit_values_round_to_the_nearest_eighth_bit_level():
    # x / 257 rounded: 128 -> 0.498, 129 -> 0.502, 385 -> 1.498, 386 -> 1.502.
    values = [0, 128, 129, 385, 386, 65535 - 129, 65535]
    expected = [0, 0, 1, 1, 2, 254, 255]
    little = Image.fromarray(np.array([values], dtype=np.uint16))
    assert little.mode == "I;16" and _grey_values(little) == expected
    big = Image.frombytes("I;16B", (len(values), 1), np.array(values, dtype=">u2").tobytes())
    assert _grey_values(big) == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([-5, 0, 17, 255], [0, 0, 17, 255]),  # 8-bit data kept, negatives clipped
        ([0, 128, 129, 256], [0, 0, 1, 1]),  # a peak of 256: 16-bit data, x / 257 rounded
        ([0, 385, 386, 65535], [0, 1, 2, 255]),
        # A peak past 16 bits scales by the peak, halves to even: 255 / 510000 per unit.
        ([-7, 1000, 3000, 510_000], [0, 0, 2, 255]),
        ([0, 65536], [0, 255]),
        # Past 16 bits the scale is 255 / peak, not 1 / 257: 33025 is 128.499 here.
        ([0, 33025, 65536], [0, 128, 255]),
        ([-5000, 0, 510_000], [0, 0, 255]),  # -2.5 rounds to -2: clipped, not wrapped
    ],
)
def test_32_bit_integer_data_maps_by_its_peak(values, expected):
    image = Image.fromarray(np.array([values], dtype=np.int32))
    assert image.mode == "I" and _grey_values(image) == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 0.5, 1.0], [0, 127, 255]),
        ([-1.0, 0.0, 1.0], [0, 127, 255]),
        ([5.0, 5.0], [0, 0]),  # no range: span 1
        ([np.nan, 2.0, 4.0], [0, 127, 255]),  # NaN counts as 0
        ([np.inf, -np.inf, 2.0], [0, 0, 255]),
        ([10.0, 20.0, 30.0], [0, 127, 255]),  # from the lowest value, not from 0
    ],
)
def test_float_data_is_stretched_over_its_range(values, expected):
    image = Image.fromarray(np.array([values], dtype=np.float32))
    assert image.mode == "F" and _grey_values(image) == expected


def test_float_range_spans_every_band(monkeypatch):
    # One row per band: the range is the whole image's, not each band's.
    monkeypatch.setattr(preprocess, "BAND_BYTES", 4 * 3)
    image = Image.fromarray(np.array([[0.0, 1.0, 2.0], [2.0, 3.0, 4.0]], dtype=np.float32))
    spec = PreprocessSpec(size=32, interpolation="nearest")
    pixels = preprocess_image(image, spec)
    assert pixels[0, 0].tolist() == [0, 0, 0] and pixels[-1, -1].tolist() == [255, 255, 255]
    assert pixels[0, 16, 0] == 63  # 1.0 of 0..4


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def cmyk_profile_of_white() -> bytes:
    """A minimal ICC v2 CMYK printer profile (lut16 A2B0) saying every ink mix is paper white."""
    white = struct.pack(">HHH", 0xFF00, 0x8000, 0x8000)  # Lab 100, 0, 0 in v2 encoding
    lut = b"mft2" + bytes(4) + bytes([4, 3, 2, 0])  # 4 inputs, 3 outputs, 2 grid points
    lut += b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    lut += struct.pack(">HH", 2, 2) + struct.pack(">HH", 0, 65535) * 4
    lut += white * 16 + struct.pack(">HH", 0, 65535) * 3
    white_point = b"XYZ " + bytes(4) + _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    tags = [(b"A2B0", lut), (b"wtpt", white_point)]
    at = 128 + 4 + 12 * len(tags)
    table, body = struct.pack(">I", len(tags)), b""
    for signature, data in tags:
        data += bytes(-len(data) % 4)
        table += signature + struct.pack(">II", at + len(body), len(data))
        body += data
    header = struct.pack(">I", at + len(body)) + bytes(4) + struct.pack(">I", 0x02100000)
    header += b"prtrCMYKLab " + bytes(12) + b"acsp" + bytes(28)
    header += _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    return header.ljust(128, b"\0") + table + body


def test_cmyk_colours_come_from_the_embedded_icc_profile(monkeypatch):
    image = Image.new("CMYK", (40, 30), (0, 255, 255, 0))  # red by Pillow's plain formula
    assert to_rgb(image).getpixel((0, 0)) == RED
    image.info["icc_profile"] = cmyk_profile_of_white()
    assert to_rgb(image).getpixel((0, 0)) == WHITE
    spec = PreprocessSpec(size=32)
    assert (preprocess_image(image, spec) == 255).all()
    # The same profile embedded in a JPEG, as print-ready files carry it.
    jpeg = encode(image, "JPEG", quality=95, icc_profile=image.info["icc_profile"])
    assert (preprocess_image(Image.open(io.BytesIO(jpeg)), spec) == 255).all()


def test_a_cmyk_transform_that_fails_falls_back_to_the_plain_conversion(monkeypatch):
    image = Image.new("CMYK", (4, 4), (0, 255, 255, 0))
    image.info["icc_profile"] = cmyk_profile_of_white()

    def fail(*args, **kwargs):
        raise OSError("cannot apply")

    monkeypatch.setattr("PIL.ImageCms.applyTransform", fail)
    assert to_rgb(image).getpixel((0, 0)) == RED


def test_cmyk_with_a_broken_icc_profile_is_converted_plainly():
    image = Image.new("CMYK", (4, 4), (0, 255, 255, 0))
    image.info["icc_profile"] = b"not a profile"
    assert to_rgb(image).getpixel((0, 0)) == RED


# -- alpha and colour keys over white -------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.new("RGBA", (4, 4), (255, 0, 0, 128)), (255, 127, 127)),  # half over white
        (Image.new("LA", (4, 4), (0, 128)), (127, 127, 127)),
        (Image.new("RGBA", (4, 4), (0, 0, 255, 0)), WHITE),
        (Image.new("RGBA", (4, 4), (255, 0, 0, 0)).convert("RGBa"), WHITE),
    ],
    ids=["RGBA-half", "LA-half", "RGBA-clear", "RGBa"],
)
def test_alpha_is_composited_over_white(image, expected):
    assert to_rgb(image).getpixel((0, 0)) == expected


def test_an_rgb_colour_key_is_transparency_and_other_colours_stay():
    image = Image.new("RGB", (4, 4), RED)
    image.putpixel((0, 0), (0, 0, 255))
    reopened = Image.open(io.BytesIO(encode(image, "PNG", transparency=RED)))
    rgb = to_rgb(reopened)
    assert rgb.getpixel((1, 1)) == WHITE and rgb.getpixel((0, 0)) == (0, 0, 255)


def test_a_one_bit_colour_key_is_transparency():
    image = Image.new("1", (4, 4), 0)
    image.putpixel((0, 0), 1)
    reopened = Image.open(io.BytesIO(encode(image, "PNG", transparency=0)))
    assert reopened.mode == "1" and reopened.info["transparency"] == 0
    rgb = to_rgb(reopened)
    assert rgb.getpixel((1, 1)) == WHITE and rgb.getpixel((0, 0)) == WHITE
    black_key = Image.open(io.BytesIO(encode(image, "PNG", transparency=1)))
    assert to_rgb(black_key).getpixel((1, 1)) == (0, 0, 0)


def test_a_palette_with_transparency_keeps_its_opaque_colours():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((0, 0), 1)
    image.info["transparency"] = 0
    rgb = to_rgb(image)
    assert rgb.getpixel((1, 1)) == WHITE and rgb.getpixel((0, 0)) == (0, 0, 255)


def test_a_pa_image_is_composited_over_white():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0] + [0] * 765)
    pa = image.convert("PA")
    pa.putalpha(0)
    assert pa.mode == "PA" and to_rgb(pa).getpixel((0, 0)) == WHITE


def test_other_modes_use_pillows_conversion():
    for mode in ("YCbCr", "LAB", "HSV"):
        image = Image.new("RGB", (4, 4), RED).convert(mode)
        assert to_rgb(image).mode == "RGB"
    assert to_rgb(Image.new("RGB", (4, 4), RED).convert("YCbCr")).getpixel((0, 0)) == (
        Image.new("RGB", (4, 4), RED).convert("YCbCr").convert("RGB").getpixel((0, 0))
    )


# -- resize and crop geometry ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "spec", "expected"),
    [
        ((100, 37), PreprocessSpec(size=32), (32, 32)),
        ((100, 37), PreprocessSpec(size=32, resize="center_crop"), (86, 32)),  # 100*32/37 = 86.5
        ((37, 100), PreprocessSpec(size=32, resize="center_crop"), (32, 86)),
        ((64, 64), PreprocessSpec(size=32, resize="center_crop"), (32, 32)),
        ((10, 7), PreprocessSpec(size=32, resize="center_crop"), (46, 32)),  # upscaled
        ((33, 32), PreprocessSpec(size=32, resize="center_crop"), (33, 32)),
    ],
)
def test_resized_size_puts_the_shorter_side_at_the_spec_size(size, spec, expected):
    assert resized_size(size, spec) == expected


def _columns(width: int, height: int) -> Image.Image:
    """Column x has red = x, so the crop's offset can be read from the pixels."""
    row = np.arange(width, dtype=np.uint8)
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = row
    pixels[..., 1] = np.arange(height, dtype=np.uint8)[:, None]
    return Image.fromarray(pixels, "RGB")


def test_center_crop_cuts_the_longer_side_evenly():
    spec = PreprocessSpec(size=32, resize="center_crop", interpolation="nearest")
    wide = preprocess_image(_columns(101, 32), spec)  # (101 - 32) // 2 = 34 cut on the left
    assert wide[0, :, 0].tolist() == list(range(34, 66)) and wide[:, 0, 1].tolist() == list(
        range(32)
    )
    odd = preprocess_image(_columns(103, 32), spec)  # 35.5 cut: floor, not rounding
    assert odd[0, :, 0].tolist() == list(range(35, 67))
    tall = preprocess_image(_columns(32, 101), spec)
    assert tall[:, 0, 1].tolist() == list(range(34, 66)) and tall[0, :, 0].tolist() == list(
        range(32)
    )
    odd_tall = preprocess_image(_columns(32, 103), spec)  # the same floor downwards
    assert odd_tall[:, 0, 1].tolist() == list(range(35, 67))


def test_an_image_already_at_the_size_is_kept_pixel_for_pixel():
    image = _columns(32, 32)
    for resize_mode in ("stretch", "center_crop"):
        pixels = preprocess_image(image, PreprocessSpec(size=32, resize=resize_mode))
        assert np.array_equal(pixels, np.asarray(image))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_each_interpolation_is_pillows_own(interpolation):
    rng = np.random.default_rng(7)
    image = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8), "RGB")
    spec = PreprocessSpec(size=32, interpolation=interpolation)
    resample = {
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "nearest": Image.Resampling.NEAREST,
    }[interpolation]
    expected = np.asarray(image.resize((32, 32), resample))
    assert np.array_equal(preprocess_image(image, spec), expected)
    assert np.array_equal(resize(image, spec), expected)


@pytest.mark.parametrize("size", [(32, 90), (90, 32)])
def test_one_axis_at_the_size_is_resized_along_the_other_only(size):
    rng = np.random.default_rng(11)
    width, height = size
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    spec = PreprocessSpec(size=32)
    expected = np.asarray(image.resize((32, 32), Image.Resampling.BILINEAR))
    assert np.array_equal(preprocess_image(image, spec), expected)


def test_resize_refuses_other_modes_with_advice():
    with pytest.raises(ValueError) as caught:
        resize(Image.new("RGBA", (40, 40)), PreprocessSpec(size=32))
    assert str(caught.value) == "resize expects an RGB image, got mode 'RGBA'; use to_rgb first"
