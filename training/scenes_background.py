"""Backgrounds of the domain-randomised (v2) generator: near-white to near-black, tones,
gradients, stripes, checks, clouds and photo-like 1/f noise.

Every background keeps a margin from the colours of its scene's objects
(scenes_semantics.background_allowed for its tones, then a check of its
pixels), so no object sits on a background of its own colour.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from .scenes_semantics import COLOUR_REGIONS, background_allowed, hsv_to_rgb

STYLES = ("plain", "linear", "radial", "stripes", "checker", "clouds", "photo")
GREY_SHARE = 0.45  # the rest are muted tones of any hue
MUTED_SATURATION = (0.10, 0.45)  # below every chromatic region's 0.55 minus the margin
MUTED_VALUE = (0.20, 0.92)
GREY_VALUE = (0.03, 0.97)  # near-black to near-white
GRAIN_SIGMA = 3.0  # fine sensor-like grain on photo backgrounds


def _tone(rng: np.random.Generator, object_colours) -> np.ndarray:
    """One background colour that keeps the margin from every object colour."""
    for _ in range(100):
        hue = float(rng.uniform(0, 360))
        if rng.random() < GREY_SHARE:
            rgb = hsv_to_rgb(hue, float(rng.uniform(0, 0.08)), float(rng.uniform(*GREY_VALUE)))
        else:
            saturation = float(rng.uniform(*MUTED_SATURATION))
            rgb = hsv_to_rgb(hue, saturation, float(rng.uniform(*MUTED_VALUE)))
        if background_allowed(rgb, object_colours):
            return np.array(rgb, dtype=np.float32)
    raise RuntimeError(f"no background tone keeps a margin from {object_colours}")


def _ramp(width: int, height: int, angle: float) -> np.ndarray:
    """(height, width) projection onto a direction, scaled to [0, 1]."""
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    ramp = xs * math.cos(angle) + ys * math.sin(angle)
    return (ramp - ramp.min()) / max(1e-6, float(ramp.max() - ramp.min()))


def _smooth_noise(rng: np.random.Generator, width: int, height: int, cells: int) -> np.ndarray:
    """(height, width) noise in [-1, 1] with about `cells` blobs along the short side."""
    short = min(width, height)
    grid = (max(2, round(cells * height / short)), max(2, round(cells * width / short)))
    low = rng.uniform(-1, 1, size=grid).astype(np.float32)
    smooth = Image.fromarray(low).resize((width, height), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(smooth), -1, 1)


def _photo_weight(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """1/f noise (octaves with amplitude falling as frequency rises), scaled to [0, 1]."""
    total = np.zeros((height, width), dtype=np.float32)
    for octave in range(5):
        cells = 3 * 2**octave
        total += _smooth_noise(rng, width, height, cells) / 2**octave
    return (total - total.min()) / max(1e-6, float(total.max() - total.min()))


def _weight(rng: np.random.Generator, style: str, width: int, height: int) -> np.ndarray:
    """(height, width) blend weight between the two tones of a two-tone style."""
    short = min(width, height)
    angle = float(rng.uniform(0, 2 * math.pi))
    if style == "linear":
        return _ramp(width, height, angle)
    if style == "radial":
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        xs, ys = np.meshgrid(np.arange(width), np.arange(height))
        distance = np.hypot(xs - cx, ys - cy).astype(np.float32)
        return distance / max(1e-6, float(distance.max()))
    if style == "stripes":
        period = float(rng.uniform(0.05, 0.2)) * short
        ramp = _ramp(width, height, angle) * max(width, height)
        return ((ramp // (period / 2)) % 2).astype(np.float32)
    if style == "checker":
        cell = max(4, int(float(rng.uniform(0.06, 0.18)) * short))
        cols, rows = np.arange(width) // cell, np.arange(height) // cell
        return ((cols[None, :] + rows[:, None]) % 2).astype(np.float32)
    if style == "clouds":
        return (_smooth_noise(rng, width, height, int(rng.integers(3, 9))) + 1) / 2
    return _photo_weight(rng, width, height)


def _hsv_arrays(pixels: np.ndarray):
    """Vectorised RGB (0..255) -> hue degrees, saturation, value."""
    rgb = pixels.reshape(-1, 3).astype(np.float32) / 255.0
    high, low = rgb.max(axis=1), rgb.min(axis=1)
    delta = high - low
    saturation = np.where(high > 0, delta / np.maximum(high, 1e-6), 0.0)
    safe = np.maximum(delta, 1e-6)
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    hue = np.where(
        high == r, ((g - b) / safe) % 6, np.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4)
    )
    return (hue * 60.0) % 360.0, saturation, high


def pixels_in_region(pixels: np.ndarray, colour: str, hsv=None) -> np.ndarray:
    """Boolean per pixel: inside the named colour's region (`hsv`: _hsv_arrays(pixels))."""
    hue, saturation, value = hsv if hsv is not None else _hsv_arrays(pixels)
    region = COLOUR_REGIONS[colour]
    inside = (saturation >= region.saturation[0]) & (saturation <= region.saturation[1])
    inside &= (value >= region.value[0]) & (value <= region.value[1])
    if region.hue is not None:
        low, high = region.hue
        wrapped = (hue >= low) & (hue <= high) | (hue + 360 >= low) & (hue + 360 <= high)
        inside &= wrapped
    return inside


def draw_background(
    rng: np.random.Generator, width: int, height: int, object_colours
) -> tuple[np.ndarray, dict]:
    """(height, width, 3) uint8 background whose pixels avoid the objects' colours."""
    for _attempt in range(8):
        style = STYLES[int(rng.integers(len(STYLES)))]
        base = _tone(rng, object_colours)
        canvas = np.broadcast_to(base, (height, width, 3)).astype(np.float32)
        if style != "plain":
            other = _tone(rng, object_colours)
            weight = _weight(rng, style, width, height)[..., None]
            canvas = base * (1 - weight) + other * weight
        if style == "photo":
            canvas = canvas + rng.normal(0, GRAIN_SIGMA, size=canvas.shape)
        pixels = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
        # A plain tone already keeps the margin; blends and grain are checked pixel by pixel.
        hsv = None if style == "plain" else _hsv_arrays(pixels)
        if hsv is None or not any(
            pixels_in_region(pixels, c, hsv).any() for c in sorted(set(object_colours))
        ):
            return pixels, {"style": style, "tone": [int(v) for v in base]}
    # Two-tone blends can pass through an object's colour; one plain tone cannot.
    base = _tone(rng, object_colours)
    pixels = np.broadcast_to(np.rint(base), (height, width, 3)).astype(np.uint8)
    return pixels, {"style": "plain", "tone": [int(v) for v in base]}
