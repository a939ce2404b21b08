"""Tiny real datasets for the training tests (a helper module: it holds no tests).

Images are drawn with Pillow in tmp_path: one coloured shape on a plain
background, with a caption that says exactly what is drawn, so a model that
learns must look at the image.
"""

from __future__ import annotations

import csv
import json
from itertools import product
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 60, 220),
    "yellow": (235, 210, 30),
}
SHAPES = ("circle", "square", "triangle")
SIDES = ("left", "right")


def draw_shape(colour: str, shape: str, side: str, size: int = 128) -> Image.Image:
    image = Image.new("RGB", (size, size), (200, 200, 200))
    draw = ImageDraw.Draw(image)
    r = size // 6
    cx = size // 4 if side == "left" else 3 * size // 4
    cy = size // 2
    box = (cx - r, cy - r, cx + r, cy + r)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return image


def shape_scenes(limit: int | None = None) -> list[tuple[str, str, Image.Image]]:
    """(name, caption, image) for every colour x shape x side, in a fixed order."""
    out = []
    for index, (colour, shape, side) in enumerate(product(COLOURS, SHAPES, SIDES)):
        caption = f"a {colour} {shape} on the {side}"
        out.append((f"shape_{index:03d}.png", caption, draw_shape(colour, shape, side)))
    return out[:limit] if limit else out


def write_csv_dataset(
    root: Path,
    scenes: list[tuple[str, str, Image.Image]],
    splits: dict[str, list[str]] | None = None,
    extra_captions: dict[str, list[str]] | None = None,
) -> Path:
    """captions.csv (+ splits.json) + images/ in `root`."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    with open(root / "captions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for name, caption, image in scenes:
            image.save(images / name)
            writer.writerow([name, caption])
            for more in (extra_captions or {}).get(name, []):
                writer.writerow([name, more])
    if splits is not None:
        (root / "splits.json").write_text(json.dumps(splits))
    return root


def write_flickr_dataset(root: Path, scenes, with_splits: bool = True) -> Path:
    folder = root / "Flicker8k_Dataset"
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, caption, image in scenes:
        image.save(folder / name)
        lines.append(f"{name}#0\t{caption}")
        lines.append(f"{name}#1\t{caption.upper()} .")
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    if with_splits:
        names = [s[0] for s in scenes]
        (root / "Flickr_8k.trainImages.txt").write_text("\n".join(names[:-2]) + "\n")
        (root / "Flickr_8k.devImages.txt").write_text(names[-2] + "\n")
        (root / "Flickr_8k.testImages.txt").write_text(names[-1] + "\n")
    return root


def write_karpathy_dataset(root: Path, scenes) -> Path:
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, (name, caption, image) in enumerate(scenes):
        image.save(folder / name)
        split = ["train", "restval", "val", "test"][index % 4]
        entries.append(
            {
                "filename": name,
                "split": split,
                "sentences": [
                    {"raw": caption, "tokens": caption.split()},
                    {"raw": caption + ".", "tokens": caption.split()},
                ],
            }
        )
    (root / "dataset_flickr8k.json").write_text(
        json.dumps({"dataset": "flickr8k", "images": entries})
    )
    return root
