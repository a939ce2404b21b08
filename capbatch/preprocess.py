"""Decoded image -> the encoder's uint8 HWC input.

This is the ONE implementation of resizing, shared by training (feature cache,
datasets) and the runtime. Normalisation is not here: it is inside the encoder
graph, with its constants taken from the model config.
"""

from __future__ import annotations

import io
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

# EXIF orientation values that swap width and height (the 90/270 degree ones).
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
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
    if exif_orientation(image) in _TRANSPOSING_ORIENTATIONS:
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
    array = np.asarray(image).astype(np.float64)
    return Image.fromarray(np.round(array / 257.0).astype(np.uint8), mode="L")


def _int32_to_l(image: Image.Image) -> Image.Image:
    # Mode "I" carries no declared range: 8-bit data stays as is, 16-bit-sized data
    # maps like 16-bit, anything larger is scaled by its peak.
    array = np.asarray(image, dtype=np.float64)
    peak = float(array.max()) if array.size else 0.0
    if peak <= 255:
        scale = 1.0
    elif peak <= 65535:
        scale = 1.0 / 257.0
    else:
        scale = 255.0 / peak
    return Image.fromarray(np.clip(np.round(array * scale), 0, 255).astype(np.uint8), mode="L")


def _float_to_l(image: Image.Image) -> Image.Image:
    array = np.asarray(image, dtype=np.float64)
    array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(array.min()), float(array.max())) if array.size else (0.0, 1.0)
    span = hi - lo if hi > lo else 1.0
    return Image.fromarray(((array - lo) / span * 255).astype(np.uint8), mode="L")


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    # An embedded ICC profile says what the inks mean; Pillow's plain conversion
    # ignores it and oversaturates print-ready files. Fall back to it when the
    # profile is missing or unusable.
    profile = image.info.get("icc_profile")
    if profile:
        try:
            from PIL import ImageCms

            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            converted = ImageCms.profileToProfile(
                image, source, ImageCms.createProfile("sRGB"), outputMode="RGB"
            )
            if converted is not None:
                return converted
        except Exception:  # a broken profile: use the plain conversion
            pass
    return image.convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright 8-bit RGB from any Pillow mode (EXIF orientation applied).

    Alpha is composited over white rather than dropped, so transparent areas do
    not turn into whatever colour happens to sit under them.
    """
    image = _apply_orientation(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        image = _sixteen_bit_to_l(image)
    elif image.mode == "I":
        image = _int32_to_l(image)
    elif image.mode == "F":
        image = _float_to_l(image)
    elif image.mode == "CMYK":
        image = _cmyk_to_rgb(image)
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


def resize(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """RGB image -> uint8 array (spec.size, spec.size, 3)."""
    if image.mode != "RGB":
        raise ValueError(f"resize expects an RGB image, got mode {image.mode!r}; use to_rgb first")
    resample = _RESAMPLE[spec.interpolation]
    size = spec.size
    if spec.resize == "center_crop":
        width, height = image.size
        scale = size / min(width, height)
        new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
        image = image.resize((new_w, new_h), resample)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    else:
        image = image.resize((size, size), resample)
    pixels = np.asarray(image, dtype=np.uint8)  # (S, S, 3)
    return pixels


def preprocess_image(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Any decoded Pillow image -> the encoder's uint8 HWC input (S, S, 3)."""
    return resize(to_rgb(image), spec)
