"""What the scene words mean in pixels: colour regions, the size threshold, relation geometry.

The caption grammar (scenes_grammar.py) says which words exist; this module
says when a drawing earns them. It is the one specification that both the
training generator (scenes_draw.py, scenes_v2.py) and the independent
evaluation renderer (scenes_sdf.py) draw to, each with its own code and its
own values inside these bounds. It holds numbers and predicates, no drawing.

Pure Python (colorsys only), like the grammar.

- **Colours** are regions of hue/saturation/value (HSV, each in [0, 1]; hue
  in degrees here), not points. Neighbouring regions are kept apart by at
  least 12 degrees of hue, or by saturation/value gaps for white and black,
  so a colour drawn anywhere inside a region is never close to another name.
- **Sizes**: an object is "small" when the longer side of its bounding box is
  under SIZE_THRESHOLD of the canvas's short side, "large" otherwise. Drawers
  never draw inside the dead band (SMALL_MAX, LARGE_MIN) around the threshold,
  so the word is never a coin toss.
- **Relations**: "A left of B" when B's box starts at least a gap after A's
  box ends along x, and the centres' offset across the axis is at most
  RELATION_MAX_SLOPE times the offset along it, both in pixels and in
  coordinates normalised by the canvas's width and height (the runtime
  stretches every image to a square, so the relation must survive that too).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass


@dataclass(frozen=True)
class ColourRegion:
    """Hue interval (degrees, may wrap past 360) and saturation/value bounds, all inclusive."""

    hue: tuple[float, float] | None  # None: any hue (white, black)
    saturation: tuple[float, float]
    value: tuple[float, float]


# Chromatic colours need strong saturation; orange and yellow also need high
# value because dark orange reads as brown and dark yellow as olive.
COLOUR_REGIONS: dict[str, ColourRegion] = {
    "red": ColourRegion((350.0, 368.0), (0.75, 1.0), (0.55, 1.0)),  # 368 = 8 degrees, wrapped
    "orange": ColourRegion((20.0, 32.0), (0.80, 1.0), (0.85, 1.0)),
    "yellow": ColourRegion((47.0, 64.0), (0.70, 1.0), (0.85, 1.0)),
    "green": ColourRegion((100.0, 145.0), (0.60, 1.0), (0.45, 1.0)),
    "blue": ColourRegion((205.0, 235.0), (0.65, 1.0), (0.50, 1.0)),
    "purple": ColourRegion((270.0, 295.0), (0.55, 1.0), (0.45, 0.90)),
    "white": ColourRegion(None, (0.0, 0.10), (0.88, 1.0)),
    "black": ColourRegion(None, (0.0, 1.0), (0.0, 0.14)),
}

# How far a background must stay from the region of any object colour in its
# scene: the region grown by this much on every bound.
BACKGROUND_MARGIN_HUE = 12.0
BACKGROUND_MARGIN_SV = 0.12

SIZE_THRESHOLD = 0.21  # bbox longer side / canvas short side: small below, large at or above
SMALL_RANGE = (0.08, 0.18)  # what drawers draw for "small" ...
LARGE_RANGE = (0.24, 0.70)  # ... and for "large"; (0.18, 0.24) is the dead band

RELATION_MAX_SLOPE = 0.5
ASPECT_RANGE = (0.5, 2.0)  # canvas width / height


def rgb_to_hsv(rgb) -> tuple[float, float, float]:
    """(r, g, b) in 0..255 -> (hue degrees 0..360, saturation 0..1, value 0..1)."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
    return h * 360.0, s, v


def hsv_to_rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((hue % 360.0) / 360.0, saturation, value)
    return (round(r * 255), round(g * 255), round(b * 255))


def _hue_inside(hue: float, interval: tuple[float, float], grow: float) -> bool:
    low, high = interval[0] - grow, interval[1] + grow
    return any(low <= hue + turn <= high for turn in (-360.0, 0.0, 360.0))


def in_region(colour: str, rgb, hue_margin: float = 0.0, sv_margin: float = 0.0) -> bool:
    """`rgb` lies in the named colour's region, grown by the margins (0: the region itself)."""
    region = COLOUR_REGIONS[colour]
    hue, saturation, value = rgb_to_hsv(rgb)
    s_low, s_high = region.saturation
    v_low, v_high = region.value
    if not (s_low - sv_margin <= saturation <= s_high + sv_margin):
        return False
    if not (v_low - sv_margin <= value <= v_high + sv_margin):
        return False
    return region.hue is None or _hue_inside(hue, region.hue, hue_margin)


def colour_names_of(rgb) -> list[str]:
    """The colour words whose regions hold `rgb` (at most one; [] between regions)."""
    return [name for name in COLOUR_REGIONS if in_region(name, rgb)]


def background_allowed(rgb, object_colours) -> bool:
    """A background colour keeps the margin from every object colour of its scene."""
    return not any(
        in_region(c, rgb, BACKGROUND_MARGIN_HUE, BACKGROUND_MARGIN_SV) for c in object_colours
    )


def size_word(bbox, canvas: tuple[int, int]) -> str:
    """ "small" or "large" for a box (x0, y0, x1, y1) on a (width, height) canvas."""
    return "small" if relative_extent(bbox, canvas) < SIZE_THRESHOLD else "large"


def relative_extent(bbox, canvas: tuple[int, int]) -> float:
    x0, y0, x1, y1 = bbox
    return max(x1 - x0, y1 - y0) / min(canvas)


def size_is_clear(bbox, canvas: tuple[int, int], word: str) -> bool:
    """The box's extent lies in the range drawers use for `word` (outside the dead band)."""
    low, high = SMALL_RANGE if word == "small" else LARGE_RANGE
    return low <= relative_extent(bbox, canvas) <= high


def relation_holds(a, b, axis: str, gap: float, canvas: tuple[int, int]) -> bool:
    """Box `a` lies clearly before box `b` (left of, or above) along `axis`."""
    (ax, ay), (bx, by) = _centre(a), _centre(b)
    width, height = canvas
    if axis == "horizontal":
        along, across = bx - ax, abs(by - ay)
        scaled = (along / width, across / height)
        start_gap = b[0] - a[2]
    else:
        along, across = by - ay, abs(bx - ax)
        scaled = (along / height, across / width)
        start_gap = b[1] - a[3]
    return (
        start_gap >= gap
        and across <= RELATION_MAX_SLOPE * along
        and scaled[1] <= RELATION_MAX_SLOPE * scaled[0]
    )


def _centre(box) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0)
