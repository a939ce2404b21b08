"""An independent evaluation renderer: the same facts, drawn by other code.

The `test_renderer` split is drawn here and never trained on. Nothing is
shared with the training generator's drawing (scenes_draw.py, scenes_v2.py,
scenes_background.py; a test checks the imports both ways): shapes are
signed-distance fields evaluated in numpy (coverage = clip(0.5 - distance)),
placement is constructive (a relation's two objects go on either side of a
split line) rather than rejection sampling, and the colours, backgrounds and
canvases come from this module's own tables. What it shares is the
specification: the vocabulary (scenes_grammar) and what the words mean in
pixels (scenes_semantics: colour regions, size threshold, relation geometry).
Pillow only wraps the finished array as an image.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from .scenes_semantics import (
    background_allowed,
    relation_holds,
    size_is_clear,
)

# Each inside its scenes_semantics region (a test checks), and none is a
# colour the generator uses as a fixed value.
COLOURS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "red": ((220, 20, 35), (190, 10, 10), (255, 40, 40)),
    "orange": ((255, 130, 0), (240, 110, 20)),
    "yellow": ((255, 220, 0), (250, 230, 40)),
    "green": ((0, 160, 60), (50, 180, 50), (30, 200, 90)),
    "blue": ((20, 70, 220), (0, 90, 255), (40, 60, 180)),
    "purple": ((130, 30, 180), (150, 60, 200), (110, 20, 150)),
    "white": ((255, 255, 255), (240, 240, 245)),
    "black": ((0, 0, 0), (25, 25, 30)),
}
BACKGROUNDS: tuple[tuple[int, int, int], ...] = (
    (250, 250, 250), (200, 200, 200), (128, 128, 128), (60, 60, 60), (15, 15, 15),
    (245, 235, 210), (210, 225, 240), (215, 235, 215), (220, 200, 170), (90, 100, 120),
)  # fmt: skip
CANVASES: tuple[tuple[int, int], ...] = (
    (256, 256), (224, 224), (320, 240), (240, 320), (300, 200),
    (200, 300), (400, 200), (200, 400), (288, 216),
)  # fmt: skip
GRADIENT_SHARE = 0.3
TILT = {"square": 8.0, "cross": 8.0, "diamond": 8.0}  # degrees; others +-10
SIZE_BANDS = {"small": (0.09, 0.17), "large": (0.26, 0.60)}
LARGE_CAP = {1: 0.60, 2: 0.42, 3: 0.34}
JPEG = {"quality": 90, "subsampling": "4:2:0"}


# --------------------------------------------------------------------------- distance fields
# p: (..., 2) points relative to the shape's centre, y pointing up, in units of
# the shape's radius r; every field returns distances in those units.


def _length(p: np.ndarray) -> np.ndarray:
    return np.sqrt((p**2).sum(axis=-1))


def _box(p: np.ndarray, half: tuple[float, float]) -> np.ndarray:
    d = np.abs(p) - np.array(half)
    outside = _length(np.maximum(d, 0.0))
    return outside + np.minimum(np.maximum(d[..., 0], d[..., 1]), 0.0)


def _polygon(p: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Exact distance to a closed polygon, negative inside (even-odd winding)."""
    d = ((p - vertices[0]) ** 2).sum(axis=-1)
    sign = np.ones(p.shape[:-1])
    for i in range(len(vertices)):
        here, previous = vertices[i], vertices[i - 1]
        edge, w = previous - here, p - here
        t = np.clip((w @ edge) / (edge @ edge), 0.0, 1.0)
        d = np.minimum(d, ((w - edge * t[..., None]) ** 2).sum(axis=-1))
        above, below = p[..., 1] >= here[1], p[..., 1] < previous[1]
        cross = edge[0] * w[..., 1] > edge[1] * w[..., 0]
        flip = (above & below & cross) | (~above & ~below & ~cross)
        sign = np.where(flip, -sign, sign)
    return sign * np.sqrt(d)


def _ring(corners: int, radius: float, phase_degrees: float) -> np.ndarray:
    angles = np.radians(phase_degrees + 360.0 * np.arange(corners) / corners)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=-1)


def _star_vertices() -> np.ndarray:
    outer, inner = _ring(5, 1.0, 90.0), _ring(5, 0.5, 90.0 + 36.0)
    return np.stack([outer, inner], axis=1).reshape(-1, 2)


def _heart(p: np.ndarray) -> np.ndarray:
    """Quilez's heart: bottom tip at (0, 0), about 1.2 tall; shifted to centre it."""
    q = np.stack([np.abs(p[..., 0]), p[..., 1] + 0.8], axis=-1) * 0.67
    upper = _length(q - np.array([0.25, 0.75])) - math.sqrt(2.0) / 4.0
    tip = ((q - np.array([0.0, 1.0])) ** 2).sum(axis=-1)
    half = 0.5 * np.maximum(q[..., 0] + q[..., 1], 0.0)[..., None]
    side = ((q - half) ** 2).sum(axis=-1)
    lower = np.sqrt(np.minimum(tip, side)) * np.sign(q[..., 0] - q[..., 1])
    return np.where(q[..., 1] + q[..., 0] > 1.0, upper, lower) / 0.67


_TRIANGLE = _ring(3, 1.0, 90.0) - np.array([0.0, 0.25])  # centred on its box
_HEXAGON = _ring(6, 1.0, 0.0)
_DIAMOND = np.array([[0.0, 1.0], [0.7, 0.0], [0.0, -1.0], [-0.7, 0.0]])
_STAR = _star_vertices()


def shape_distance(shape: str, p: np.ndarray) -> np.ndarray:
    if shape == "circle":
        return _length(p) - 1.0
    if shape == "square":
        return _box(p, (0.78, 0.78))
    if shape == "cross":
        return np.minimum(_box(p, (1.0, 0.3)), _box(p, (0.3, 1.0)))
    if shape == "heart":
        return _heart(p)
    vertices = {"triangle": _TRIANGLE, "hexagon": _HEXAGON, "diamond": _DIAMOND, "star": _STAR}
    return _polygon(p, vertices[shape])


# --------------------------------------------------------------------------- one object


def _coverage(shape: str, radius: float, tilt: float, centre, canvas) -> tuple[np.ndarray, tuple]:
    """Anti-aliased coverage (H, W) in [0, 1] of a shape, and its box of >= half-covered pixels."""
    width, height = canvas
    xs = np.arange(width) + 0.5 - centre[0]
    ys = centre[1] - (np.arange(height) + 0.5)  # y up
    px, py = np.meshgrid(xs, ys)
    cos, sin = math.cos(math.radians(tilt)), math.sin(math.radians(tilt))
    p = np.stack([px * cos + py * sin, -px * sin + py * cos], axis=-1) / radius
    alpha = np.clip(0.5 - shape_distance(shape, p) * radius, 0.0, 1.0)
    rows, cols = np.nonzero(alpha >= 0.5)
    if rows.size == 0:
        return alpha, (0, 0, 0, 0)
    return alpha, (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)


def _radius_for(rng, size: str, count: int, short: int) -> float:
    low, high = SIZE_BANDS[size]
    if size == "large":
        high = min(high, LARGE_CAP[count])
    return float(rng.uniform(low, high)) * short / 2.0


# --------------------------------------------------------------------------- placement


def _uniform(rng, low: float, high: float) -> float:
    if high < low:
        raise ValueError("no room")
    return float(rng.uniform(low, high))


def _centres(rng, radii: list[float], axis: str | None, canvas) -> list[tuple[float, float]]:
    """Centres: a pair straddles a split line across its axis; others anywhere, apart."""
    width, height = canvas
    pad = 0.03 * min(canvas)
    if axis is not None:
        along, across = (width, height) if axis == "horizontal" else (height, width)
        split = float(rng.uniform(0.42, 0.58)) * along
        a = _uniform(rng, pad + radii[0], split - pad - radii[0])
        b = _uniform(rng, split + pad + radii[1], along - pad - radii[1])
        middle = _uniform(rng, max(radii) + pad, across - max(radii) - pad)
        drift = 0.2 * (b - a)
        offsets = [float(rng.uniform(-drift, drift)) / 2 for _ in range(2)]
        cross = [min(max(middle + o, r + pad), across - r - pad) for o, r in zip(offsets, radii)]
        if axis == "horizontal":
            return [(a, cross[0]), (b, cross[1])]
        return [(cross[0], a), (cross[1], b)]
    centres: list[tuple[float, float]] = []
    for r in radii:
        for _ in range(500):
            c = (
                _uniform(rng, r + pad, width - r - pad),
                _uniform(rng, r + pad, height - r - pad),
            )
            if all(math.dist(c, o) > r + ro + pad for o, ro in zip(centres, radii)):
                centres.append(c)
                break
        else:
            raise ValueError("no room")
    return centres


def _apart(boxes, short: int) -> bool:
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            if max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3]) < 0.02 * short:
                return False
    return True


# --------------------------------------------------------------------------- scene


def _background(rng, canvas, object_colours) -> tuple[np.ndarray, dict]:
    allowed = [c for c in BACKGROUNDS if background_allowed(c, object_colours)]
    first = np.array(allowed[int(rng.integers(len(allowed)))], dtype=np.float64)
    width, height = canvas
    if rng.random() >= GRADIENT_SHARE:
        return np.broadcast_to(first, (height, width, 3)).copy(), {"style": "plain"}
    second = np.array(allowed[int(rng.integers(len(allowed)))], dtype=np.float64)
    t = np.linspace(0.0, 1.0, height)[:, None, None]
    return np.broadcast_to(first * (1 - t) + second * t, (height, width, 3)).copy(), {
        "style": "vertical gradient"
    }


def _try_layout(rng, objects, axis, canvas):
    short = min(canvas)
    radii = [_radius_for(rng, size, len(objects), short) for _, _, size in objects]
    tilts = [float(rng.uniform(-TILT.get(s, 10.0), TILT.get(s, 10.0))) for _, s, _ in objects]
    centres = _centres(rng, radii, axis, canvas)
    drawn = [
        _coverage(shape, r, t, c, canvas)
        for (_, shape, _), r, t, c in zip(objects, radii, tilts, centres)
    ]
    boxes = [box for _, box in drawn]
    width, height = canvas
    inside = all(b[0] > 0 and b[1] > 0 and b[2] < width and b[3] < height for b in boxes)
    ok = (
        inside
        and _apart(boxes, short)
        and all(size_is_clear(box, canvas, size) for box, (_, _, size) in zip(boxes, objects))
    )
    if axis is not None:
        ok = ok and relation_holds(boxes[0], boxes[1], axis, 0.04 * short, canvas)
    return (drawn, tilts) if ok else None


def render(rng: np.random.Generator, objects, axis: str | None) -> dict:
    """Draw planned (colour, shape, size) objects; same result keys as the generator's drawers.

    For a pair, the planned objects are put in a random order along the axis;
    "before" is the index of the one left of / above the other.
    """
    order = list(range(len(objects)))
    if axis is not None and rng.random() < 0.5:
        order.reverse()
    placed = [objects[i] for i in order]
    canvas = CANVASES[int(rng.integers(len(CANVASES)))]
    for _attempt in range(100):
        try:
            layout = _try_layout(rng, placed, axis, canvas)
        except ValueError:  # a range left no room: draw again
            layout = None
        if layout is not None:
            break
    else:
        raise RuntimeError(f"renderer could not lay out {objects} on {canvas}")
    drawn, tilts = layout
    pixels, background = _background(rng, canvas, [c for c, _, _ in objects])
    records = []
    for (colour, shape, size), (alpha, box), tilt in zip(placed, drawn, tilts):
        table = COLOURS[colour]
        rgb = np.array(table[int(rng.integers(len(table)))], dtype=np.float64)
        pixels = pixels * (1 - alpha[..., None]) + rgb * alpha[..., None]
        records.append(
            {"colour": colour, "shape": shape, "size": size, "bbox": list(box),
             "rgb": [int(v) for v in rgb], "rotation": round(tilt, 2)}
        )  # fmt: skip
    back = [0] * len(order)
    for position, index in enumerate(order):
        back[index] = position
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    return {
        "image": image,
        "objects": [records[back[i]] for i in range(len(objects))],
        "before": None if axis is None else order[0],
        "background": background,
        "canvas": list(canvas),
        "jpeg": dict(JPEG),
    }
