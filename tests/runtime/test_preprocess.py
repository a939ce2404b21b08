"""The one resize implementation: modes, orientation and shapes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from capbatch import preprocess
from capbatch.preprocess import PreprocessSpec, preprocess_image, resize, to_rgb, upright_size
from tests.io_fixtures import RED, WHITE, encode, marker_image


@pytest.mark.parametrize(
    "kwargs",
    [{"size": 16}, {"size": 224.0}, {"size": True}, {"resize": "fit"}, {"interpolation": "area"}],
)
def test_spec_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        PreprocessSpec(**kwargs)


def test_spec_round_trips_through_dict():
    spec = PreprocessSpec(size=64, resize="center_crop", interpolation="bicubic")
    assert PreprocessSpec(**spec.to_dict()) == spec


@pytest.mark.parametrize("resize_mode", ["stretch", "center_crop"])
def test_preprocess_shape_and_dtype(resize_mode):
    spec = PreprocessSpec(size=32, resize=resize_mode)
    pixels = preprocess_image(Image.new("RGB", (100, 37), RED), spec)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    assert (pixels == RED).all()


def test_center_crop_keeps_the_middle():
    image = Image.new("RGB", (300, 100), (0, 0, 255))
    image.paste(RED, (100, 0, 200, 100))  # the middle third is red
    pixels = preprocess_image(image, PreprocessSpec(size=32, resize="center_crop"))
    assert (pixels[:, 2:-2] == RED).all()


def test_resize_refuses_non_rgb():
    with pytest.raises(ValueError, match="RGB"):
        resize(Image.new("L", (40, 40)), PreprocessSpec(size=32))


def test_rgba_transparency_is_composited_over_white():
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert to_rgb(image).getpixel((0, 0)) == WHITE
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    assert to_rgb(image).getpixel((0, 0)) == RED


def test_la_and_palette_with_transparency():
    la = Image.new("LA", (8, 8), (0, 0))
    assert to_rgb(la).getpixel((0, 0)) == WHITE
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.info["transparency"] = 0
    assert to_rgb(palette).getpixel((0, 0)) == WHITE
    palette.info.pop("transparency")
    assert to_rgb(palette).getpixel((0, 0)) == RED


def test_grey_png_colour_key_is_transparency():
    image = Image.new("L", (8, 8), 7)
    reopened = Image.open(io.BytesIO(encode(image, "PNG", transparency=7)))
    assert to_rgb(reopened).getpixel((0, 0)) == WHITE


def test_sixteen_bit_grey_maps_the_full_range():
    values = np.array([[0, 257 * 128, 65535, 1000]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    rgb = np.asarray(to_rgb(image))
    assert rgb[0, :, 0].tolist() == [0, 128, 255, 4]
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_int32_and_float_modes():
    eight_bit = Image.fromarray(np.array([[0, 200]], dtype=np.int32))
    assert np.asarray(to_rgb(eight_bit))[0, :, 0].tolist() == [0, 200]
    sixteen = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    assert np.asarray(to_rgb(sixteen))[0, :, 0].tolist() == [0, 255]
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(to_rgb(floats))[0, :, 0].tolist() == [0, 127, 255]


def test_one_bit_and_cmyk():
    assert to_rgb(Image.new("1", (4, 4), 1)).getpixel((0, 0)) == WHITE
    assert to_rgb(Image.new("CMYK", (4, 4), (0, 255, 255, 0))).getpixel((0, 0)) == RED


def test_exif_orientation_is_applied():
    image = marker_image((80, 40))
    exif = image.getexif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    reopened = Image.open(io.BytesIO(encode(image, "PNG", exif=exif)))
    assert upright_size(reopened) == (40, 80)
    upright = to_rgb(reopened)
    assert upright.size == (40, 80)
    # The stored top-left marker ends top-right once rotated clockwise.
    assert upright.getpixel((36, 3)) == RED
    assert upright.getpixel((3, 3)) == WHITE


def test_broken_exif_keeps_the_image():
    image = Image.new("RGB", (10, 20), RED)
    image.info["exif"] = b"Exif\x00\x00garbage"
    assert upright_size(image) == (10, 20)
    assert to_rgb(image).size == (10, 20)


def _all_modes(size=(97, 61)) -> dict[str, Image.Image]:
    rng = np.random.default_rng(3)
    width, height = size
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    floats = rng.normal(size=(height, width)).astype(np.float32)
    floats[3, 3], floats[5, 5] = np.nan, np.inf
    keyed = rgb.convert("P")
    keyed.info["transparency"] = 3
    return {
        "RGB": rgb,
        "L": rgb.convert("L"),
        "1": rgb.convert("1"),
        "P+tRNS": keyed,
        "RGBA": Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8)),
        "LA": rgb.convert("LA"),
        "CMYK": rgb.convert("CMYK"),
        "YCbCr": rgb.convert("YCbCr"),
        "I;16": Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16)),
        "I 8-bit": Image.fromarray(rng.integers(-9, 256, (height, width), dtype=np.int32)),
        "I 16-bit": Image.fromarray(rng.integers(-9, 65536, (height, width), dtype=np.int32)),
        "I wide": Image.fromarray(rng.integers(-9, 10**7, (height, width), dtype=np.int32)),
        "F": Image.fromarray(floats),
    }


@pytest.mark.parametrize(
    "spec",
    [
        PreprocessSpec(size=32),
        PreprocessSpec(size=48, resize="center_crop", interpolation="bicubic"),
        PreprocessSpec(size=40, interpolation="nearest"),
    ],
)
def test_band_by_band_preprocessing_gives_the_whole_image_pixels(monkeypatch, spec):
    # Tiny bands (a few rows each): conversions and the horizontal pass run per band,
    # with whole-image statistics (int peak, float range) read before the first one.
    monkeypatch.setattr(preprocess, "BAND_BYTES", 4 * 97 * 7)
    for name, image in _all_modes().items():
        whole = resize(to_rgb(image), spec)  # one conversion, one resize call
        banded = preprocess_image(image, spec)
        assert np.array_equal(whole, banded), name
