"""Generated scenes: a seeded, offline dataset in Flickr8k's layout.

    OUT/images/scene_000000.jpg ...   RGB drawings of 1-3 coloured shapes
    OUT/captions.csv                  image,caption (5 differently phrased rows per image)
    OUT/scenes.jsonl                  one record per image: objects, bboxes, relation, facts
    OUT/splits.json                   train / val / test / test_novel image lists + the holdout

Every image is a pure function of (seed, index, bucket), so the dataset is
byte-identical for a seed whatever the number of workers. The test_novel split
holds scenes with colour-shape pairs, or object pairs in a relation, that no
training scene contains: it measures whether a model composes or memorises.

Needs only numpy and Pillow; the caption grammar lives in scenes_grammar.py.

    python -m capbatch.training.scenes --out DIR --n 10000 --seed 0 --workers 2
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import multiprocessing
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from capbatch.errors import UsageError

from .scenes_grammar import (
    AXIS,
    COLOURS,
    SHAPES,
    SIZES,
    ObjectFact,
    SceneFacts,
    explain_mismatch,
    facts_match,
    make_captions,
    make_relation,
    mismatch_counts,
    parse_caption,
    semantic_accuracy,
)

__all__ = [
    # dataset
    "generate_dataset",
    "render_scene",
    "SceneDatasetOptions",
    "Holdout",
    "choose_holdout",
    "novel_reasons",
    "load_scene_records",
    "load_scene_facts",
    "load_splits",
    "load_holdout",
    "main",
    # re-exported from scenes_grammar, so evaluation needs one import
    "SceneFacts",
    "ObjectFact",
    "parse_caption",
    "facts_match",
    "explain_mismatch",
    "semantic_accuracy",
    "mismatch_counts",
]

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

KIND_WEIGHTS = {"single": 0.2, "pair": 0.55, "count": 0.25}  # relations are the hard part
COUNT_WEIGHTS = {2: 0.6, 3: 0.4}
CAPTIONS_PER_IMAGE = 5


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


# --------------------------------------------------------------------------- holdout and splits

SPLITS = ("train", "val", "test", "test_novel")


@dataclass(frozen=True)
class Holdout:
    """What no training scene contains.

    `objects`: colour-shape pairs that appear only in test_novel scenes.
    `relations`: (object, object, axis) combinations, object order irrelevant:
    those two objects never stand side by side (horizontal) or one over the
    other (vertical) in a training scene, though each appears elsewhere.
    """

    objects: frozenset[tuple[str, str]]
    relations: frozenset[tuple[tuple[str, str], tuple[str, str], str]]

    def seen_objects(self) -> list[tuple[str, str]]:
        return [o for o in itertools.product(COLOURS, SHAPES) if o not in self.objects]

    def to_dict(self) -> dict:
        return {
            "objects": sorted(list(o) for o in self.objects),
            "relations": sorted([*a, axis, *b] for a, b, axis in self.relations),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Holdout:
        return cls(
            frozenset(tuple(o) for o in data["objects"]),
            frozenset(((r[0], r[1]), (r[3], r[4]), r[2]) for r in data["relations"]),
        )


def relation_key(a: tuple[str, str], b: tuple[str, str], axis: str):
    """The order-free key of two objects related along an axis."""
    first, second = sorted([tuple(a), tuple(b)])
    return (first, second, axis)


def choose_holdout(seed: int, n_objects: int = 6, n_relations: int = 48) -> Holdout:
    """A seeded holdout: `n_objects` colour-shape pairs with distinct colours and
    distinct shapes (so every colour and shape still trains with others), and
    `n_relations` relation combinations among the remaining pairs."""
    if not 0 <= n_objects <= min(len(COLOURS), len(SHAPES)):
        raise ValueError("n_objects must fit distinct colours and shapes")
    rng = random.Random(f"capbatch-scenes-holdout-{seed}")
    colours = rng.sample(COLOURS, n_objects)
    shapes = rng.sample(SHAPES, n_objects)
    objects = frozenset(zip(colours, shapes))
    seen = [o for o in itertools.product(COLOURS, SHAPES) if o not in objects]
    relations: set = set()
    while len(relations) < n_relations:
        a, b = rng.sample(seen, 2)
        relations.add(relation_key(a, b, rng.choice(("horizontal", "vertical"))))
    return Holdout(objects, frozenset(relations))


def novel_reasons(facts: SceneFacts, holdout: Holdout) -> list[str]:
    """Why a scene may not be in training: "object" and/or "relation"; [] if it may."""
    reasons = []
    if any(kind in holdout.objects for kind in facts.kinds):
        reasons.append("object")
    rel = facts.relation
    if rel is not None and relation_key(rel.subject, rel.object, rel.axis) in holdout.relations:
        reasons.append("relation")
    return reasons


def assign_buckets(
    n: int, seed: int, val_fraction: float, test_fraction: float, novel_fraction: float
) -> list[str]:
    """Which split each scene index is generated for: exact counts, seeded order."""
    counts = {
        "test_novel": round(n * novel_fraction),
        "val": round(n * val_fraction),
        "test": round(n * test_fraction),
    }
    buckets = [name for name, count in counts.items() for _ in range(count)]
    buckets += ["train"] * (n - len(buckets))
    random.Random(f"capbatch-scenes-buckets-{seed}-{n}").shuffle(buckets)
    return buckets


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class SceneDatasetOptions:
    n: int
    seed: int = 0
    image_size: int = REFERENCE_SIZE
    image_format: str = "jpg"  # "jpg" (quality 95, no chroma subsampling) | "png"
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    novel_fraction: float = 0.05

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.image_size < 64:
            raise ValueError(f"image_size must be >= 64, got {self.image_size}")
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image_format must be 'jpg' or 'png', got {self.image_format!r}")
        fractions = (self.val_fraction, self.test_fraction, self.novel_fraction)
        if any(f < 0 for f in fractions) or sum(fractions) >= 1:
            raise ValueError("split fractions must be >= 0 and leave room for train")

    @property
    def name_width(self) -> int:
        return max(6, len(str(self.n - 1)))

    def image_name(self, index: int) -> str:
        return f"scene_{index:0{self.name_width}d}.{self.image_format}"


# --------------------------------------------------------------------------- content


@dataclass(frozen=True)
class _Plan:
    kind: str  # "single" | "pair" | "count"
    objects: tuple[tuple[str, str, str], ...]  # (colour, shape, size)
    axis: str | None  # pairs only


def _weighted(rng: np.random.Generator, weights: dict):
    keys = list(weights)
    return keys[int(rng.choice(len(keys), p=np.array(list(weights.values()))))]


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _size(rng: np.random.Generator) -> str:
    return _pick(rng, SIZES)


def _plan_scene(rng: np.random.Generator, bucket: str, holdout: Holdout) -> _Plan:
    seen = holdout.seen_objects()
    kind = _weighted(rng, KIND_WEIGHTS)
    axis = _pick(rng, ("horizontal", "vertical"))
    if bucket == "test_novel":
        if holdout.relations and (not holdout.objects or rng.random() < 0.5):
            a, b, axis = _pick(rng, sorted(holdout.relations))
            if rng.random() < 0.5:
                a, b = b, a
            return _Plan("pair", ((*a, _size(rng)), (*b, _size(rng))), axis)
        first = _pick(rng, sorted(holdout.objects))
    else:
        first = _pick(rng, seen)
    if kind == "single":
        return _Plan(kind, ((*first, _size(rng)),), None)
    if kind == "count":
        size = _size(rng)
        return _Plan(kind, ((*first, size),) * _weighted(rng, COUNT_WEIGHTS), None)
    pool = list(itertools.product(COLOURS, SHAPES)) if bucket == "test_novel" else seen
    while True:
        second = _pick(rng, pool)
        if second == first:
            continue
        if bucket != "test_novel" and relation_key(first, second, axis) in holdout.relations:
            continue
        break
    if rng.random() < 0.5:
        first, second = second, first
    return _Plan(kind, ((*first, _size(rng)), (*second, _size(rng))), axis)


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


def _scene_rngs(seed: int, index: int) -> tuple[np.random.Generator, random.Random]:
    rng = np.random.default_rng([seed, index])
    return rng, random.Random(int(rng.integers(2**62)))


def render_scene(
    index: int, bucket: str, holdout: Holdout, options: SceneDatasetOptions
) -> tuple[Image.Image, dict]:
    """Scene `index` of the dataset as (RGB image, record). Pure function of its arguments."""
    rng, caption_rng = _scene_rngs(options.seed, index)
    size = options.image_size
    scale = size / REFERENCE_SIZE
    plan = _plan_scene(rng, bucket, holdout)
    background, background_info = draw_background(rng, size)
    for _attempt in range(20):
        sprites = [_make_sprite(rng, c, s, z, scale) for c, s, z in plan.objects]
        if _place(rng, sprites, plan.axis, size, scale):
            break
    else:  # pragma: no cover - the sizes above always fit a 256 canvas
        raise RuntimeError(f"could not place scene {index}'s objects")

    image = Image.fromarray(background)
    for sprite in sprites:
        image.paste(Image.new("RGB", sprite.mask.size, sprite.rgb), sprite.origin, sprite.mask)

    relation = None
    if plan.axis is not None:
        first, second = (0, 1) if _relation_holds(sprites[0], sprites[1], plan.axis, 0) else (1, 0)
        before, after = {"horizontal": ("left of", "right of"), "vertical": ("above", "below")}[
            plan.axis
        ]
        # Either object can be the subject; the caption grammar states both readings.
        relation = (first, before, second) if rng.random() < 0.5 else (second, after, first)
        assert AXIS[relation[1]] == plan.axis

    objects = [ObjectFact(s.colour, s.shape, s.size) for s in sprites]
    captions = make_captions(objects, relation, caption_rng, CAPTIONS_PER_IMAGE)
    facts = SceneFacts(
        tuple(objects),
        None
        if relation is None
        else make_relation(objects[relation[0]].kind, relation[1], objects[relation[2]].kind),
    )
    record = {
        "image": options.image_name(index),
        "index": index,
        "kind": plan.kind,
        "count": len(sprites),
        "objects": [
            {
                "colour": s.colour,
                "shape": s.shape,
                "size": s.size,
                "bbox": list(s.bbox),
                "rgb": list(s.rgb),
                "rotation": s.rotation,
            }
            for s in sprites
        ],
        "relation": None
        if relation is None
        else {"subject": relation[0], "predicate": relation[1], "object": relation[2]},
        "facts": facts.to_dict(),
        "background": background_info,
        "captions": captions,
        "split": bucket,
        "novel": novel_reasons(facts, holdout),
    }
    return image, record


# --------------------------------------------------------------------------- dataset writer


def _save_image(image: Image.Image, path: Path, image_format: str) -> None:
    if image_format == "jpg":
        # 4:4:4 (no chroma subsampling) keeps small shapes' colours clean at their edges.
        image.save(path, format="JPEG", quality=95, subsampling=0)
    else:
        image.save(path, format="PNG", compress_level=6)


def _render_and_save(job: tuple[int, str, Holdout, SceneDatasetOptions, str]) -> dict:
    index, bucket, holdout, options, images_dir = job
    image, record = render_scene(index, bucket, holdout, options)
    _save_image(image, Path(images_dir) / record["image"], options.image_format)
    return record


def _jobs(options: SceneDatasetOptions, holdout: Holdout, images_dir: Path) -> Iterator[tuple]:
    buckets = assign_buckets(
        options.n,
        options.seed,
        options.val_fraction,
        options.test_fraction,
        options.novel_fraction,
    )
    for index, bucket in enumerate(buckets):
        yield (index, bucket, holdout, options, str(images_dir))


def _check_split(record: dict) -> None:
    # The guarantee test_novel rests on: no training/val/test scene holds a held-out item.
    novel = bool(record["novel"])
    if novel != (record["split"] == "test_novel"):
        raise RuntimeError(
            f"{record['image']}: split {record['split']} but novel reasons {record['novel']}"
        )


def generate_dataset(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    image_size: int = REFERENCE_SIZE,
    workers: int = 1,
    image_format: str = "jpg",
    overwrite: bool = False,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    novel_fraction: float = 0.05,
) -> Path:
    """Write `n` scenes to out_dir in Flickr8k layout (see the module docstring); returns out_dir.

    The output is byte-identical for the same arguments, whatever `workers` is.
    Refuses a directory that already holds an images/ folder unless `overwrite`.
    """
    options = SceneDatasetOptions(
        n=n,
        seed=seed,
        image_size=image_size,
        image_format=image_format,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        novel_fraction=novel_fraction,
    )
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)
    images_dir = out / "images"
    if images_dir.exists() and any(images_dir.iterdir()):
        if not overwrite:
            raise UsageError(f"{images_dir} is not empty; pass overwrite=True / --overwrite")
        for stale in images_dir.glob("scene_*.*"):
            stale.unlink()
    images_dir.mkdir(parents=True, exist_ok=True)

    holdout = choose_holdout(seed)
    jobs = _jobs(options, holdout, images_dir)
    splits: dict[str, list[str]] = {name: [] for name in SPLITS}
    with (
        open(out / "captions.csv", "w", newline="", encoding="utf-8") as captions_file,
        open(out / "scenes.jsonl", "w", encoding="utf-8") as scenes_file,
    ):
        writer = csv.writer(captions_file, lineterminator="\n")
        writer.writerow(["image", "caption"])

        def write(record: dict) -> None:
            _check_split(record)
            splits[record["split"]].append(record["image"])
            for caption in record["captions"]:
                writer.writerow([record["image"], caption])
            scenes_file.write(json.dumps(record, sort_keys=True) + "\n")

        if workers == 1:
            for job in jobs:
                write(_render_and_save(job))
        else:
            with multiprocessing.get_context().Pool(workers) as pool:
                for record in pool.imap(_render_and_save, jobs, chunksize=32):
                    write(record)

    manifest = {
        **splits,
        "holdout": holdout.to_dict(),
        "seed": seed,
        "n": n,
        "image_size": image_size,
    }
    (out / "splits.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return out


# --------------------------------------------------------------------------- readers


def load_scene_records(data_dir: str | Path) -> list[dict]:
    """scenes.jsonl as a list of records, in image order."""
    path = Path(data_dir) / "scenes.jsonl"
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_scene_facts(data_dir: str | Path) -> dict[str, SceneFacts]:
    """image name -> the scene's true facts (sizes included)."""
    return {r["image"]: SceneFacts.from_dict(r["facts"]) for r in load_scene_records(data_dir)}


def load_splits(data_dir: str | Path) -> dict[str, list[str]]:
    """split name (train, val, test, test_novel) -> image names."""
    data = json.loads((Path(data_dir) / "splits.json").read_text(encoding="utf-8"))
    return {name: list(data[name]) for name in SPLITS}


def load_holdout(data_dir: str | Path) -> Holdout:
    data = json.loads((Path(data_dir) / "splits.json").read_text(encoding="utf-8"))
    return Holdout.from_dict(data["holdout"])


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m capbatch.training.scenes",
        description="Generate the seeded scenes dataset (Flickr8k layout).",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--n", type=int, default=10_000, help="number of scenes (images)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes drawing images")
    parser.add_argument("--image-size", type=int, default=REFERENCE_SIZE)
    parser.add_argument("--format", choices=("jpg", "png"), default="jpg", dest="image_format")
    parser.add_argument("--overwrite", action="store_true", help="replace existing scene images")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        out = generate_dataset(
            args.out,
            n=args.n,
            seed=args.seed,
            image_size=args.image_size,
            workers=args.workers,
            image_format=args.image_format,
            overwrite=args.overwrite,
        )
    except (UsageError, ValueError) as exc:
        print(f"scenes: error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    splits = load_splits(out)
    sizes = ", ".join(f"{name} {len(images)}" for name, images in splits.items())
    print(
        f"wrote {args.n} scenes to {out} in {elapsed:.1f} s "
        f"({args.n / max(elapsed, 1e-9):.0f} images/s); {sizes}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
