"""Decoded image -> the encoder's uint8 HWC input.

This is the ONE implementation of resizing, shared by training (feature cache,
datasets) and the runtime. Normalisation is not here: it is inside the encoder
graph, with its constants taken from the model config.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageOps

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}

# Modes whose pixels are wider than 8 bits; Pillow's own convert("L") clips them at 255.
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")

# Rows converted at a time: the RGB conversion and the horizontal resize pass run
# band by band, so their temporaries stay about this size, not the image's.
BAND_BYTES = 4 * 1024 * 1024

# EXIF orientation values that swap width and height (the 90/270 degree ones).
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class PreprocessSpec:
    """How a decoded image becomes the encoder's uint8 (size, size, 3) input."""

    size: int = 224
    resize: str = "stretch"  # "stretch" | "center_crop" (shorter side to size, then crop)
    interpolation: str = "bilinear"  # "bilinear" | "bicubic" | "nearest"

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 32:
            raise ValueError(f"preprocess size must be an integer >= 32, got {self.size!r}")
        if self.resize not in ("stretch", "center_crop"):
            raise ValueError(f"unknown resize mode {self.resize!r}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"unknown interpolation {self.interpolation!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1..8), 1 when absent or unreadable.

    Broken EXIF blocks are common in the wild; they must not cost the image.
    """
    try:
        value = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # any EXIF parse failure means "no orientation"
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) the image has once its EXIF orientation is applied."""
    width, height = image.size
    if exif_orientation(image) in TRANSPOSING_ORIENTATIONS:
        return height, width
    return width, height


def _apply_orientation(image: Image.Image) -> Image.Image:
    if exif_orientation(image) == 1:
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block: keep the stored orientation
        return image


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    # 16-bit data spans 0..65535 by definition: map that full range onto 0..255,
    # as viewers do, rather than clipping at 255 or stretching each image's contrast.
    # (x + 128) // 257 is round(x / 257) exactly (x / 257 is never a half), in integers.
    array = np.asarray(image).astype(np.uint32)
    return Image.fromarray(((array + 128) // 257).astype(np.uint8), mode="L")


def _int32_to_l(image: Image.Image, peak: int) -> Image.Image:
    # Mode "I" carries no declared range: 8-bit data stays as is, 16-bit-sized data
    # maps like 16-bit, anything larger is scaled by its (whole-image) peak.
    # Pillow's point() truncates x / 257 + 0.5, which is round(x / 257) (never a
    # half), and convert("L") clips: the same bytes as numpy, 7x faster.
    if peak <= 255:
        return image.convert("L")
    if peak <= 65535:
        return image.point(lambda x: x * (1 / 257) + 0.5).convert("L")
    # Round half to even, as numpy does: float64 on one band only, never the image.
    scaled = np.round(np.asarray(image, dtype=np.float64) * (255.0 / peak))
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")


def _finite(array: np.ndarray) -> np.ndarray:
    # NaN and infinities count as 0 (as when this was one whole-image float64 array).
    return np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)


def _float_range(image: Image.Image) -> tuple[float, float]:
    """(lowest, span) of a mode "F" image's values, NaN and inf counted as 0."""
    lo, hi = None, None
    for band in _bands(image):
        array = np.asarray(band)  # float32: min and max are exact in it
        if not np.isfinite(array).all():
            array = _finite(array)
        if array.size:
            low, high = float(array.min()), float(array.max())
            lo, hi = (low, high) if lo is None else (min(lo, low), max(hi, high))
    if lo is None:
        return 0.0, 1.0
    return lo, (hi - lo if hi > lo else 1.0)


def _float_to_l(image: Image.Image, lo: float, span: float) -> Image.Image:
    array = _finite(np.asarray(image, dtype=np.float64))  # float64 on one band only
    return Image.fromarray(((array - lo) / span * 255).astype(np.uint8), mode="L")


def _cmyk_transform(image: Image.Image):
    """A LittleCMS transform from the embedded ICC profile to sRGB, None without a usable one.

    An embedded ICC profile says what the inks mean; Pillow's plain conversion
    ignores it and oversaturates print-ready files.
    """
    profile = image.info.get("icc_profile")
    if not profile:
        return None
    try:
        from PIL import ImageCms

        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        return ImageCms.buildTransform(source, ImageCms.createProfile("sRGB"), "CMYK", "RGB")
    except Exception:  # a broken profile: use the plain conversion
        return None


def _cmyk_to_rgb(image: Image.Image, transform) -> Image.Image:
    if transform is not None:
        try:
            from PIL import ImageCms

            return ImageCms.applyTransform(image, transform)
        except Exception:  # fall back to Pillow's plain conversion
            pass
    return image.convert("RGB")


def _to_eight_bit(image: Image.Image) -> Callable[[Image.Image], Image.Image]:
    """The per-band step for modes wider than 8 bits or CMYK; whole-image statistics read once."""
    if image.mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_l
    if image.mode == "I":
        peak = image.getextrema()[1]
        return lambda band: _int32_to_l(band, peak)
    if image.mode == "F":
        lo, span = _float_range(image)
        return lambda band: _float_to_l(band, lo, span)
    if image.mode == "CMYK":
        transform = _cmyk_transform(image)
        return lambda band: _cmyk_to_rgb(band, transform)
    return lambda band: band


def _eight_bit_to_rgb(image: Image.Image) -> Image.Image:
    """8-bit image (any mode) -> RGB, alpha and colour keys composited over white.

    Alpha is composited over white rather than dropped, so transparent areas do
    not turn into whatever colour happens to sit under them.
    """
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode in ("L", "RGB", "1") and "transparency" in image.info:
        # A tRNS colour key (grey or RGB PNG) is transparency too.
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        # YCbCr, L, 1, LAB, HSV, RGBX: Pillow's own conversions.
        image = image.convert("RGB")
    return image


def _band_converter(image: Image.Image) -> Callable[[Image.Image], Image.Image]:
    """A function turning any band of rows of `image` into RGB, as to_rgb does the whole."""
    to_eight_bit = _to_eight_bit(image)
    return lambda band: _eight_bit_to_rgb(to_eight_bit(band))


def _bands(image: Image.Image) -> Iterator[Image.Image]:
    width, height = image.size
    rows = max(1, BAND_BYTES // (4 * max(1, width)))
    for top in range(0, height, rows):
        yield image.crop((0, top, width, min(height, top + rows)))


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright 8-bit RGB from any Pillow mode (EXIF orientation applied), whole image at once.

    preprocess_image does the same conversion band by band (identical pixels).
    """
    image = _apply_orientation(image)
    return _band_converter(image)(image)


def resized_size(size: tuple[int, int], spec: PreprocessSpec) -> tuple[int, int]:
    """The size resize() scales an upright (width, height) image to, before any crop."""
    if spec.resize != "center_crop":
        return spec.size, spec.size
    width, height = size
    scale = spec.size / min(width, height)
    return max(spec.size, round(width * scale)), max(spec.size, round(height * scale))


def resize(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """RGB image -> uint8 array (spec.size, spec.size, 3)."""
    if image.mode != "RGB":
        raise ValueError(f"resize expects an RGB image, got mode {image.mode!r}; use to_rgb first")
    new_w, new_h = resized_size(image.size, spec)
    return _crop_centre(image.resize((new_w, new_h), _RESAMPLE[spec.interpolation]), spec)


def _crop_centre(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    size = spec.size
    if image.size != (size, size):  # center_crop: the longer side is cut
        left, top = (image.width - size) // 2, (image.height - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8)  # (S, S, 3)


def preprocess_image(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Any decoded Pillow image -> the encoder's uint8 HWC input (S, S, 3).

    Same pixels as resize(to_rgb(image), spec), with bounded extra memory: the
    conversion to RGB and the horizontal pass of the resize run on bands of
    rows (Pillow's resize is a horizontal pass, rounded to 8 bits, then a
    vertical one, so two resize calls give the bytes one call gives). A full
    RGB copy of a 13370x13370 16-bit or float image (and the float64 copies
    the conversion once made) is never held.
    """
    image = _apply_orientation(image)
    width, height = image.size
    new_w, new_h = resized_size(image.size, spec)
    resample = _RESAMPLE[spec.interpolation]
    convert = _band_converter(image)
    wide = Image.new("RGB", (new_w, height))  # horizontal pass done, vertical pending
    top = 0
    for band in _bands(image):
        rgb = convert(band)
        if new_w != width:
            rgb = rgb.resize((new_w, rgb.height), resample)
        wide.paste(rgb, (0, top))
        top += rgb.height
    if new_h != height:
        wide = wide.resize((new_w, new_h), resample)
    return _crop_centre(wide, spec)
