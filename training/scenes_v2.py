"""The training generator's domain-randomised style (v2).

Same shapes as v1 (scenes_draw.shape_mask), but everything a model could
latch onto instead of the concepts varies: canvas size and aspect ratio,
object size (continuous, with the size words from scenes_semantics'
threshold), each colour anywhere in its HSV region, backgrounds from
near-white to near-black with textures and photo-like noise
(scenes_background.py), slight perspective, blur, noise and the JPEG quality
and chroma subsampling the image is saved with. Shapes are filled only: the
grammar has no word for an outline. docs/scenes.md gives every range and why.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageFilter

from .scenes_background import draw_background
from .scenes_draw import ROTATION_JITTER, SUPERSAMPLE, _mask_bbox, shape_mask
from .scenes_semantics import (
    ASPECT_RANGE,
    COLOUR_REGIONS,
    LARGE_RANGE,
    SMALL_RANGE,
    hsv_to_rgb,
    in_region,
    relation_holds,
    size_is_clear,
)

SHORT_SIDE_RANGE = (0.5, 1.25)  # times the dataset's image_size (128-320 px at 256)
SQUARE_SHARE = 0.25  # canvases kept square, as most photos and the old data are
EDGE_MARGIN = 0.02  # of the short side, between a box and the canvas edge
OBJECT_GAP = 0.03  # between any two boxes
RELATION_GAP = 0.05  # between a relation's boxes along its axis
# Two or three large objects cannot all be 70 % of the short side and fit.
LARGE_CAP = {1: 0.70, 2: 0.48, 3: 0.40}
PERSPECTIVE_SHARE, PERSPECTIVE_MAX = 0.5, 0.04  # corner shift, fraction of each side
BLUR_SHARE, BLUR_RADIUS = 0.4, (0.3, 1.4)  # Gaussian radius in px at a 256 short side
NOISE_SHARE, NOISE_SIGMA = 0.5, (2.0, 9.0)
JPEG_QUALITY = (50, 95)
JPEG_SUBSAMPLING = ("4:2:0", "4:4:4")


def draw_canvas_size(rng: np.random.Generator, base: int) -> tuple[int, int]:
    """(width, height): short side 0.5-1.25 x base, aspect 1:2 to 2:1 (log-uniform)."""
    short = int(round(base * float(rng.uniform(*SHORT_SIDE_RANGE))))
    if rng.random() < SQUARE_SHARE:
        return short, short
    ratio = math.exp(float(rng.uniform(math.log(ASPECT_RANGE[0]), math.log(ASPECT_RANGE[1]))))
    if ratio >= 1:
        return int(round(short * ratio)), short
    return short, int(round(short / ratio))


def object_rgb(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    """A colour drawn uniformly from the named region (rounding checked back in)."""
    region = COLOUR_REGIONS[colour]
    while True:
        hue = float(rng.uniform(*region.hue)) if region.hue else float(rng.uniform(0, 360))
        rgb = hsv_to_rgb(
            hue, float(rng.uniform(*region.saturation)), float(rng.uniform(*region.value))
        )
        if in_region(colour, rgb):
            return rgb


def _sprite(rng, colour: str, shape: str, size: str, short: int, cap: float) -> dict:
    """One object's mask at a size drawn log-uniformly in its size word's range."""
    low, high = SMALL_RANGE if size == "small" else (LARGE_RANGE[0], min(LARGE_RANGE[1], cap))
    target = math.exp(float(rng.uniform(math.log(low), math.log(high)))) * short
    limit = ROTATION_JITTER[shape]
    rotation = round(float(rng.uniform(-limit, limit)), 2) if limit else 0.0
    half = max(3, round(target / 2))
    for _ in range(3):  # rescale until the drawn box's longer side is the target
        mask = shape_mask(shape, half, rotation)
        x0, y0, x1, y1 = _mask_bbox(mask)
        half = max(3, round(half * target / max(x1 - x0, y1 - y0)))
    mask = shape_mask(shape, half, rotation)
    return {
        "colour": colour,
        "shape": shape,
        "size": size,
        "rgb": object_rgb(rng, colour),
        "rotation": rotation,
        "mask": mask,
        "local": _mask_bbox(mask),
    }


def _box(sprite: dict, origin: tuple[int, int]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = sprite["local"]
    return (x0 + origin[0], y0 + origin[1], x1 + origin[0], y1 + origin[1])


def _gap(a, b) -> float:
    return max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])


def _place(rng, sprites: list[dict], axis: str | None, canvas: tuple[int, int]) -> bool:
    """Each object in turn at a random spot clear of the others (and in the relation)."""
    width, height = canvas
    short = min(canvas)
    margin = EDGE_MARGIN * short
    boxes: list[tuple] = []
    for sprite in sprites:
        x0, y0, x1, y1 = sprite["local"]
        low_x, high_x = math.ceil(margin - x0), math.floor(width - margin - x1)
        low_y, high_y = math.ceil(margin - y0), math.floor(height - margin - y1)
        if high_x < low_x or high_y < low_y:
            return False
        for _ in range(200):
            origin = (int(rng.integers(low_x, high_x + 1)), int(rng.integers(low_y, high_y + 1)))
            box = _box(sprite, origin)
            if any(_gap(box, other) < OBJECT_GAP * short for other in boxes):
                continue
            if axis is not None and boxes:
                gap = RELATION_GAP * short
                if not (
                    relation_holds(boxes[0], box, axis, gap, canvas)
                    or relation_holds(box, boxes[0], axis, gap, canvas)
                ):
                    continue
            sprite["origin"] = origin
            boxes.append(box)
            break
        else:
            return False
    return True


def _homography(source, target) -> np.ndarray:
    """3x3 matrix mapping the four `source` points onto the four `target` points."""
    rows, values = [], []
    for (x, y), (u, v) in zip(source, target):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        values += [u, v]
    solution = np.linalg.solve(np.array(rows, dtype=np.float64), np.array(values, np.float64))
    return np.append(solution, 1.0).reshape(3, 3)


def _warp_box(matrix: np.ndarray, box) -> list[int]:
    x0, y0, x1, y1 = box
    corners = np.array([[x0, y0, 1], [x1, y0, 1], [x1, y1, 1], [x0, y1, 1]], dtype=np.float64)
    mapped = corners @ matrix.T
    xs, ys = mapped[:, 0] / mapped[:, 2], mapped[:, 1] / mapped[:, 2]
    return [math.floor(xs.min()), math.floor(ys.min()), math.ceil(xs.max()), math.ceil(ys.max())]


def _perspective(rng, image: Image.Image, objects: list[dict], axis, before) -> float:
    """Warp the image slightly (source corners moved inwards, so no fill shows); 0 if not.

    The boxes move with the image; the warp is dropped when a box would leave
    the canvas, a size leave its clear range or the relation stop holding.
    """
    if rng.random() >= PERSPECTIVE_SHARE:
        return 0.0
    width, height = image.size
    shift = float(rng.uniform(0.01, PERSPECTIVE_MAX))
    corners = [(0, 0), (width, 0), (width, height), (0, height)]
    inward = [(1, 1), (-1, 1), (-1, -1), (1, -1)]
    source = [
        (
            x + sx * float(rng.uniform(0, shift)) * width,
            y + sy * float(rng.uniform(0, shift)) * height,
        )
        for (x, y), (sx, sy) in zip(corners, inward)
    ]
    to_source = _homography(corners, source)
    to_output = np.linalg.inv(to_source)
    boxes = [_warp_box(to_output, o["bbox"]) for o in objects]
    canvas = (width, height)
    if any(b[0] < 0 or b[1] < 0 or b[2] > width or b[3] > height for b in boxes):
        return 0.0
    if not all(size_is_clear(b, canvas, o["size"]) for b, o in zip(boxes, objects)):
        return 0.0
    if axis is not None:
        gap = RELATION_GAP * min(canvas) / 2
        if not relation_holds(boxes[before], boxes[1 - before], axis, gap, canvas):
            return 0.0
    coefficients = (to_source / to_source[2, 2]).flatten()[:8]
    warped = image.transform(
        canvas, Image.Transform.PERSPECTIVE, tuple(coefficients), Image.Resampling.BICUBIC
    )
    image.paste(warped)
    for obj, box in zip(objects, boxes):
        obj["bbox"] = box
    return round(shift, 4)


def _degrade(rng, image: Image.Image, objects, axis, before) -> tuple[Image.Image, dict]:
    """Perspective, then blur, then sensor noise; and the JPEG settings to save with."""
    short = min(image.size)
    perspective = _perspective(rng, image, objects, axis, before)
    blur = 0.0
    if rng.random() < BLUR_SHARE:
        blur = round(float(rng.uniform(*BLUR_RADIUS)) * short / 256, 3)
        image = image.filter(ImageFilter.GaussianBlur(blur))
    noise = 0.0
    if rng.random() < NOISE_SHARE:
        noise = round(float(rng.uniform(*NOISE_SIGMA)), 2)
        pixels = np.asarray(image, dtype=np.float32)
        pixels = pixels + rng.normal(0, noise, size=pixels.shape)
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    jpeg = {
        "quality": int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)),
        "subsampling": JPEG_SUBSAMPLING[int(rng.integers(len(JPEG_SUBSAMPLING)))],
    }
    return image, {"perspective": perspective, "blur": blur, "noise": noise, "jpeg": jpeg}


def _layout(rng, objects, axis, canvas) -> list[dict]:
    short = min(canvas)
    cap = LARGE_CAP[len(objects)]
    for _attempt in range(50):
        sprites = [_sprite(rng, c, s, z, short, cap) for c, s, z in objects]
        if all(size_is_clear(s["local"], canvas, s["size"]) for s in sprites) and _place(
            rng, sprites, axis, canvas
        ):
            return sprites
    raise RuntimeError(f"could not place {objects} on a {canvas} canvas")


def draw_scene(
    rng: np.random.Generator, objects: tuple[tuple[str, str, str], ...], axis: str | None, base: int
) -> dict:
    """Draw planned (colour, shape, size) objects in the v2 style.

    Returns {"image", "objects", "before", "background", "canvas", "degradation",
    "jpeg"}; "before" is, for a pair, the index of the object left of / above the other.
    """
    canvas = draw_canvas_size(rng, base)
    sprites = _layout(rng, objects, axis, canvas)
    pixels, background = draw_background(rng, *canvas, [c for c, _, _ in objects])
    image = Image.fromarray(pixels)
    for s in sprites:
        image.paste(Image.new("RGB", s["mask"].size, s["rgb"]), s["origin"], s["mask"])
    records = [
        {
            "colour": s["colour"],
            "shape": s["shape"],
            "size": s["size"],
            "bbox": list(_box(s, s["origin"])),
            "rgb": list(s["rgb"]),
            "rotation": s["rotation"],
        }
        for s in sprites
    ]
    before = None
    if axis is not None:
        before = 0 if relation_holds(records[0]["bbox"], records[1]["bbox"], axis, 0, canvas) else 1
    image, degradation = _degrade(rng, image, records, axis, before)
    for record in records:
        x0, y0, x1, y1 = record["bbox"]
        record["extent"] = round(max(x1 - x0, y1 - y0) / min(canvas), 4)
    jpeg = degradation.pop("jpeg")
    return {
        "image": image,
        "objects": records,
        "before": before,
        "background": background,
        "canvas": list(canvas),
        "degradation": degradation,
        "jpeg": jpeg,
    }


__all__ = ["draw_scene", "draw_canvas_size", "object_rgb", "SUPERSAMPLE"]
