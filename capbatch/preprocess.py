"""Decoded image -> the encoder's uint8 HWC input.

This is the ONE implementation of resizing, shared by training (feature cache,
datasets) and the runtime. Normalisation is not here: it is inside the encoder
graph, with its constants taken from the model config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageOps

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class PreprocessSpec:
    """How a decoded image becomes the encoder's uint8 (size, size, 3) input."""

    size: int = 224
    resize: str = "stretch"  # "stretch" | "center_crop" (shorter side to size, then crop)
    interpolation: str = "bilinear"  # "bilinear" | "bicubic" | "nearest"

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 32:
            raise ValueError(f"preprocess size must be an integer >= 32, got {self.size!r}")
        if self.resize not in ("stretch", "center_crop"):
            raise ValueError(f"unknown resize mode {self.resize!r}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"unknown interpolation {self.interpolation!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright 8-bit RGB from any Pillow mode (EXIF orientation applied).

    Alpha is composited over white rather than dropped, so transparent areas do
    not turn into whatever colour happens to sit under them.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit grey: scale to 8 bits by range instead of clipping at 255.
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() if array.size else 0.0
        scale = 255.0 / peak if peak > 255 else 1.0
        image = Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        lo, hi = (float(array.min()), float(array.max())) if array.size else (0.0, 1.0)
        span = hi - lo if hi > lo else 1.0
        image = Image.fromarray(((array - lo) / span * 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        # CMYK, YCbCr, L, 1, LAB, HSV: Pillow's own conversions.
        image = image.convert("RGB")
    return image


def resize(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """RGB image -> uint8 array (spec.size, spec.size, 3)."""
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
    return np.asarray(image, dtype=np.uint8)


def preprocess_image(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Any decoded Pillow image -> the encoder's uint8 HWC input."""
    return resize(to_rgb(image), spec)
