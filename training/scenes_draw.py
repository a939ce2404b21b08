"""The training generator's v1 drawing: flat shapes on muted textured tones, one canvas size.

Moved unchanged out of scenes.py (same random draws in the same order), so a
seed gives the same bytes as before the move: the shipped model and samples/
were drawn by this code. scenes_v2.py adds the domain-randomised style.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# --------------------------------------------------------------------------- palette

# Object colours, >= 100 apart in RGB from each other (closest: yellow/orange).
OBJECT_RGB: dict[str, tuple[int, int, int]] = {
    "red": (205, 30, 30),
    "green": (40, 160, 60),
    "blue": (35, 80, 215),
    "yellow": (245, 225, 45),
    "orange": (245, 125, 20),
    "purple": (140, 45, 175),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}

# Muted background tones, each >= 105 from every object colour, so no object
# ever sits on a background of (nearly) its own colour.
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "sand": (200, 185, 145),
    "sage": (135, 155, 125),
    "rose": (185, 150, 150),
    "mist": (165, 180, 195),
    "taupe": (150, 130, 110),
    "khaki": (170, 165, 120),
    "lilac": (170, 155, 185),
    "stone": (160, 160, 150),
    "clay": (170, 120, 100),
    "umber": (110, 70, 60),
}
BACKGROUND_STYLES = ("plain", "gradient", "clouds", "noise", "stripes", "checker")

# Jitter bounds. Each keeps a pixel within ~25 RGB units of its base colour, far
# below the palettes' separations, so a colour word is never ambiguous.
OBJECT_CHANNEL_JITTER = 10
OBJECT_BRIGHTNESS_JITTER = 0.06
BACKGROUND_TONE_JITTER = 8
BACKGROUND_TEXTURE_AMPLITUDE = 12

# --------------------------------------------------------------------------- geometry

REFERENCE_SIZE = 256  # pixel constants below are for a 256x256 canvas and scale with it
HALF_EXTENT_PX = {"small": (16, 22), "large": (34, 44)}  # half the shape's box
EDGE_MARGIN_PX = 4
OBJECT_GAP_PX = 8  # between any two objects' bboxes: no overlap, no touching
RELATION_GAP_PX = 14  # along the relation's axis
# A relation is stated only when the centres' offset across its axis is at most
# this fraction of the offset along it ("left of", not "diagonally up-left").
RELATION_MAX_SLOPE = 0.5
SUPERSAMPLE = 4  # masks are drawn 4x larger and box-filtered down: anti-aliased edges

# Rotation jitter per shape (degrees, +-). Squares and crosses stay upright
# enough not to become diamonds and X's; symmetric shapes can turn freely.
ROTATION_JITTER = {
    "circle": 0.0,
    "square": 15.0,
    "triangle": 20.0,
    "star": 36.0,
    "hexagon": 30.0,
    "diamond": 12.0,
    "cross": 15.0,
    "heart": 20.0,
}


def _regular_polygon(corners: int, radius: float = 1.0, phase: float = -90.0):
    return [
        (
            radius * math.cos(math.radians(phase + 360.0 * i / corners)),
            radius * math.sin(math.radians(phase + 360.0 * i / corners)),
        )
        for i in range(corners)
    ]


def _star() -> list[tuple[float, float]]:
    outer = _regular_polygon(5, 1.0)
    inner = _regular_polygon(5, 0.45, phase=-90.0 + 36.0)
    return [p for pair in zip(outer, inner) for p in pair]


def _heart() -> list[tuple[float, float]]:
    points = []
    for i in range(72):
        t = 2 * math.pi * i / 72
        x = 16 * math.sin(t) ** 3
        y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
        points.append((x / 17.0, (y + 2.5) / 15.0))
    return points


def _cross(arm: float = 0.33) -> list[tuple[float, float]]:
    a = arm
    return [
        (-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a),
        (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a),
    ]  # fmt: skip


# Outlines in unit coordinates (about [-1, 1]^2, y down); the circle is drawn as an ellipse.
SHAPE_OUTLINES: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)],
    "triangle": [(x, y + 0.2) for x, y in _regular_polygon(3, 1.15)],
    "star": _star(),
    "hexagon": _regular_polygon(6, 1.0, phase=0.0),
    "diamond": [(0.0, -1.0), (0.68, 0.0), (0.0, 1.0), (-0.68, 0.0)],
    "cross": _cross(),
    "heart": _heart(),
}


def shape_mask(shape: str, half_extent: int, rotation: float) -> Image.Image:
    """Anti-aliased 'L' mask of one shape, (2 * half_extent + 4) pixels square."""
    side = 2 * half_extent + 4
    big = side * SUPERSAMPLE
    centre = big / 2.0
    scale = half_extent * SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse((centre - scale, centre - scale, centre + scale, centre + scale), fill=255)
    else:
        cos, sin = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
        points = [
            (centre + scale * (x * cos - y * sin), centre + scale * (x * sin + y * cos))
            for x, y in SHAPE_OUTLINES[shape]
        ]
        draw.polygon(points, fill=255)
    return mask.resize((side, side), Image.Resampling.BOX)


def _mask_bbox(mask: Image.Image) -> tuple[int, int, int, int]:
    """Box (x0, y0, x1, y1), x1/y1 exclusive, of the mask's mostly-covered pixels."""
    covered = np.asarray(mask) >= 128
    ys, xs = np.nonzero(covered)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


# --------------------------------------------------------------------------- drawing


def _tone(rng: np.random.Generator) -> tuple[str, np.ndarray]:
    name = _pick(rng, list(BACKGROUND_RGB))
    jitter = rng.integers(-BACKGROUND_TONE_JITTER, BACKGROUND_TONE_JITTER + 1, size=3)
    return name, np.array(BACKGROUND_RGB[name], dtype=np.float32) + jitter


def _unit_ramp(size: int, angle: float) -> np.ndarray:
    """(size, size) projection of each pixel onto a direction, scaled to [0, 1]."""
    axis = np.arange(size, dtype=np.float32)
    ramp = axis[None, :] * math.cos(angle) + axis[:, None] * math.sin(angle)
    return (ramp - ramp.min()) / max(1e-6, float(ramp.max() - ramp.min()))


def draw_background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    """(size, size, 3) uint8 background and a description of it."""
    style = _pick(rng, BACKGROUND_STYLES)
    name, base = _tone(rng)
    tones = [name]
    canvas = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    angle = float(rng.uniform(0, 2 * math.pi))
    if style in ("gradient", "stripes", "checker"):
        other_name, other = _tone(rng)
        while other_name == name:
            other_name, other = _tone(rng)
        tones.append(other_name)
        if style == "gradient":
            weight = _unit_ramp(size, angle)[..., None]
        elif style == "stripes":
            period = float(rng.uniform(14, 40)) * size / REFERENCE_SIZE
            ramp = _unit_ramp(size, angle) * size
            weight = ((ramp // (period / 2)) % 2)[..., None]
        else:
            cell = int(rng.integers(16, 41)) * size // REFERENCE_SIZE
            cell_index = np.arange(size) // cell
            weight = ((cell_index[None, :] + cell_index[:, None]) % 2)[..., None].astype(np.float32)
        canvas = base * (1 - weight) + other * weight
    elif style == "clouds":
        cells = int(rng.integers(3, 9))
        low = rng.uniform(-1, 1, size=(cells, cells)).astype(np.float32)
        smooth = Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC)
        canvas = (
            canvas + BACKGROUND_TEXTURE_AMPLITUDE * np.clip(np.asarray(smooth), -1, 1)[..., None]
        )
    elif style == "noise":
        noise = rng.normal(0, BACKGROUND_TEXTURE_AMPLITUDE / 2.5, size=(size, size, 1))
        canvas = canvas + np.clip(
            noise, -BACKGROUND_TEXTURE_AMPLITUDE, BACKGROUND_TEXTURE_AMPLITUDE
        )
    pixels = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return pixels, {"style": style, "tones": tones}


def _object_rgb(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    base = np.array(OBJECT_RGB[colour], dtype=np.float32)
    brightness = 1.0 + rng.uniform(-OBJECT_BRIGHTNESS_JITTER, OBJECT_BRIGHTNESS_JITTER)
    jitter = rng.integers(-OBJECT_CHANNEL_JITTER, OBJECT_CHANNEL_JITTER + 1, size=3)
    rgb = np.clip(np.rint(base * brightness + jitter), 0, 255).astype(int)
    return (int(rgb[0]), int(rgb[1]), int(rgb[2]))


@dataclass
class _Sprite:
    colour: str
    shape: str
    size: str
    rgb: tuple[int, int, int]
    rotation: float
    mask: Image.Image
    local_bbox: tuple[int, int, int, int]
    origin: tuple[int, int] = (0, 0)

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = self.local_bbox
        ox, oy = self.origin
        return (x0 + ox, y0 + oy, x1 + ox, y1 + oy)

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return ((x0 + x1) / 2.0, (y0 + y1) / 2.0)


def _make_sprite(rng: np.random.Generator, colour: str, shape: str, size: str, scale: float):
    low, high = HALF_EXTENT_PX[size]
    half_extent = max(4, round(float(rng.uniform(low, high)) * scale))
    limit = ROTATION_JITTER[shape]
    rotation = round(float(rng.uniform(-limit, limit)), 2) if limit else 0.0
    mask = shape_mask(shape, half_extent, rotation)
    return _Sprite(colour, shape, size, _object_rgb(rng, colour), rotation, mask, _mask_bbox(mask))


def _gap(a: tuple, b: tuple) -> float:
    """Clearance between two boxes (negative when they overlap on both axes)."""
    dx = max(b[0] - a[2], a[0] - b[2])
    dy = max(b[1] - a[3], a[1] - b[3])
    return max(dx, dy)


def _relation_holds(a: _Sprite, b: _Sprite, axis: str, gap: float) -> bool:
    """`a` lies clearly before `b` along the axis (left of / above)."""
    (ax, ay), (bx, by) = a.centre, b.centre
    if axis == "horizontal":
        return b.bbox[0] - a.bbox[2] >= gap and abs(by - ay) <= RELATION_MAX_SLOPE * (bx - ax)
    return b.bbox[1] - a.bbox[3] >= gap and abs(bx - ax) <= RELATION_MAX_SLOPE * (by - ay)


def _place(
    rng: np.random.Generator, sprites: list[_Sprite], axis: str | None, size: int, scale: float
) -> bool:
    """Random non-overlapping positions (and the relation, for pairs); False if none found."""
    margin = EDGE_MARGIN_PX * scale
    for _ in range(400):
        for sprite in sprites:
            x0, y0, x1, y1 = sprite.local_bbox
            low_x, high_x = margin - x0, size - margin - x1
            low_y, high_y = margin - y0, size - margin - y1
            if high_x < low_x or high_y < low_y:
                return False
            sprite.origin = (
                int(rng.integers(math.ceil(low_x), math.floor(high_x) + 1)),
                int(rng.integers(math.ceil(low_y), math.floor(high_y) + 1)),
            )
        boxes = [s.bbox for s in sprites]
        if any(_gap(a, b) < OBJECT_GAP_PX * scale for a, b in itertools.combinations(boxes, 2)):
            continue
        if axis is not None:
            a, b = sprites
            gap = RELATION_GAP_PX * scale
            if not (_relation_holds(a, b, axis, gap) or _relation_holds(b, a, axis, gap)):
                continue
        return True
    return False


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def draw_scene(
    rng: np.random.Generator, objects: tuple[tuple[str, str, str], ...], axis: str | None, size: int
) -> dict:
    """Draw planned (colour, shape, size) objects on a size x size canvas.

    Returns {"image", "objects" (record dicts), "before" (for a pair: the index
    of the object left of / above the other), "background"}.
    """
    scale = size / REFERENCE_SIZE
    background, background_info = draw_background(rng, size)
    for _attempt in range(20):
        sprites = [_make_sprite(rng, c, s, z, scale) for c, s, z in objects]
        if _place(rng, sprites, axis, size, scale):
            break
    else:  # pragma: no cover - the sizes above always fit a 256 canvas
        raise RuntimeError("could not place the scene's objects")

    image = Image.fromarray(background)
    for sprite in sprites:
        image.paste(Image.new("RGB", sprite.mask.size, sprite.rgb), sprite.origin, sprite.mask)
    before = None
    if axis is not None:
        before = 0 if _relation_holds(sprites[0], sprites[1], axis, 0) else 1
    records = [
        {
            "colour": s.colour,
            "shape": s.shape,
            "size": s.size,
            "bbox": list(s.bbox),
            "rgb": list(s.rgb),
            "rotation": s.rotation,
        }
        for s in sprites
    ]
    return {"image": image, "objects": records, "before": before, "background": background_info}
