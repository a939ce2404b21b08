"""`--attention-dir`: one PNG per image, one panel per generated word.

Each panel is the encoder's input image with that step's attention over the
region grid drawn as a heatmap on top (as in the Show-Attend-Tell paper).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .errors import OutputError
from .output.durable import make_folder, write_file

PANELS_PER_ROW = 5
LABEL_HEIGHT = 14
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def attention_file_name(key: str) -> str:
    """A flat, safe, unique file name for a row key ("a/b.jpg" -> "a_b.jpg-<hash>.png")."""
    readable = _UNSAFE.sub("_", key).strip("._")[-80:] or "image"
    digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{readable}-{digest}.png"


def _heat(alpha: np.ndarray, size: int) -> np.ndarray:
    """alpha (L,) over a square grid -> (size, size) weights in [0, 1]."""
    grid = math.isqrt(alpha.shape[0])
    if grid * grid != alpha.shape[0]:
        raise ValueError(f"attention over {alpha.shape[0]} regions is not a square grid")
    peak = float(alpha.max()) or 1.0
    cells = (alpha.reshape(grid, grid) / peak * 255).astype(np.uint8)  # (g, g)
    up = Image.fromarray(cells, mode="L").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(up, dtype=np.float32) / 255.0  # (size, size)


def render_attention(pixels: np.ndarray, words: Sequence[str], alphas: np.ndarray) -> Image.Image:
    """pixels (S, S, 3) uint8, alphas (steps, L) -> a grid of labelled panels.

    Steps beyond the words (the <end> step) get the label "<end>".
    """
    size = pixels.shape[0]
    steps = alphas.shape[0]
    labels = list(words)[:steps] + ["<end>"] * max(0, steps - len(words))
    columns = min(PANELS_PER_ROW, max(1, steps))
    rows = max(1, math.ceil(steps / columns))
    sheet = Image.new("RGB", (columns * size, rows * (size + LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(sheet)
    base = pixels.astype(np.float32)
    red = np.array([255.0, 0.0, 0.0], np.float32)
    for index in range(steps):
        heat = _heat(alphas[index], size)[..., None]  # (S, S, 1)
        panel = (base * (1.0 - 0.6 * heat) + red * 0.6 * heat).clip(0, 255).astype(np.uint8)
        left = (index % columns) * size
        top = (index // columns) * (size + LABEL_HEIGHT)
        sheet.paste(Image.fromarray(panel), (left, top + LABEL_HEIGHT))
        draw.text((left + 2, top + 1), labels[index], fill="black")
    return sheet


def save_attention_map(
    directory: Path, key: str, pixels: np.ndarray, words: Sequence[str], alphas: np.ndarray
) -> Path:
    """Write the key's map into `directory` whole (a link at its name is replaced, never
    followed; a link in place of the folder is refused)."""
    directory = make_folder(directory, "--attention-dir")
    sheet = render_attention(pixels, words, alphas)
    target = directory / attention_file_name(key)
    try:
        return write_file(target, lambda handle: sheet.save(handle, format="PNG"))
    except OSError as exc:
        raise OutputError(f"cannot write the attention map {target}: {exc.strerror or exc}") from None
