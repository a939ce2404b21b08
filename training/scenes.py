"""Generated scenes: a seeded, offline dataset in Flickr8k's layout.

    OUT/images/scene_000000.jpg ...   RGB drawings of 1-3 coloured shapes
    OUT/images/render_000000.jpg ...  the same kind of facts drawn by the independent renderer
    OUT/captions.csv                  image,caption (5 differently phrased rows per image;
                                      one, worded by the image, with --captions canonical)
    OUT/scenes.jsonl                  one record per image: objects, bboxes, relation, facts
    OUT/splits.json                   train / val / test / test_novel (/ test_renderer) image
                                      lists + the holdout

Every image is a pure function of (seed, index, bucket, style), so the dataset
is byte-identical for a seed whatever the number of workers. The test_novel
split holds scenes with colour-shape pairs, or object pairs in a relation,
that no training scene contains: it measures whether a model composes or
memorises. test_renderer (optional) holds test-like facts drawn by other code
(scenes_sdf.py): it measures whether a model learnt the concepts or the
generator's look.

Modules: scenes_plan (holdout, splits, the facts of each scene), scenes_draw
(style v1, the shipped model's), scenes_v2 + scenes_background (style v2,
domain-randomised), scenes_sdf (the independent renderer), scenes_semantics
(what the words mean in pixels), scenes_grammar (captions and their parser).
Needs only numpy and Pillow.

    python -m capbatch.training.scenes --out DIR --n 10000 --seed 0 --workers 2
    python -m capbatch.training.scenes --out DIR --n 10000 --style v2 --test-renderer 500
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from capbatch.errors import UsageError
from capbatch.output.durable import create_exclusive, write_file

from . import scenes_draw, scenes_sdf, scenes_v2
from .scenes_draw import BACKGROUND_RGB, OBJECT_RGB, REFERENCE_SIZE
from .scenes_grammar import (
    AXIS,
    ObjectFact,
    SceneFacts,
    canonical_caption,
    make_captions,
    make_relation,
)
from .scenes_parse import (  # noqa: F401 - evaluation code reads them from here
    explain_mismatch,
    facts_match,
    mismatch_counts,
    parse_caption,
    semantic_accuracy,
)
from .scenes_plan import (
    RENDERER_SPLIT,
    SPLITS,
    Holdout,
    assign_buckets,
    choose_holdout,
    load_holdout,
    load_scene_facts,
    load_scene_records,
    load_splits,
    novel_reasons,
    plan_scene,
    relation_key,
)
from .scenes_semantics import relation_holds, size_is_clear

__all__ = [
    # dataset
    "generate_dataset",
    "render_scene",
    "SceneDatasetOptions",
    "Holdout",
    "choose_holdout",
    "novel_reasons",
    "relation_key",
    "assign_buckets",
    "load_scene_records",
    "load_scene_facts",
    "load_splits",
    "load_holdout",
    "main",
    "SPLITS",
    "RENDERER_SPLIT",
    "STYLES",
    "OBJECT_RGB",
    "BACKGROUND_RGB",
    # re-exported from scenes_grammar, so evaluation needs one import
    "SceneFacts",
    "ObjectFact",
    "parse_caption",
    "facts_match",
    "explain_mismatch",
    "semantic_accuracy",
    "mismatch_counts",
]

STYLES = ("v1", "v2")  # v1: the shipped model's data; v2: domain-randomised
# varied: 5 phrasings per image; canonical: one, its wording fixed by the image.
CAPTION_MODES = ("varied", "canonical")
CAPTIONS_PER_IMAGE = 5
RENDERER_STREAM = 0x5DF  # seeds the renderer's scenes apart from the generator's


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class SceneDatasetOptions:
    n: int
    seed: int = 0
    image_size: int = REFERENCE_SIZE  # v1: the canvas; v2: the short side's reference
    image_format: str = "jpg"  # "jpg" (v1: quality 95, 4:4:4; v2: drawn per image) | "png"
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    novel_fraction: float = 0.05
    style: str = "v1"
    renderer_scenes: int = 0  # extra scenes in test_renderer, drawn by scenes_sdf
    only: tuple[str, ...] | None = (
        None  # write only these splits' scenes (same bytes as a full run)
    )
    captions: str = "varied"  # CAPTION_MODES; the images are the same bytes either way

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
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {self.style!r}")
        if self.captions not in CAPTION_MODES:
            raise ValueError(f"captions must be one of {CAPTION_MODES}, got {self.captions!r}")
        if self.renderer_scenes < 0:
            raise ValueError(f"renderer_scenes must be >= 0, got {self.renderer_scenes}")
        if self.only is not None:
            unknown = set(self.only) - set(SPLITS) - {RENDERER_SPLIT}
            if unknown or not self.only:
                raise ValueError(f"only must name splits of {SPLITS + (RENDERER_SPLIT,)}")

    @property
    def name_width(self) -> int:
        return max(6, len(str(self.n - 1)))

    def image_name(self, index: int) -> str:
        return f"scene_{index:0{self.name_width}d}.{self.image_format}"

    def renderer_name(self, index: int) -> str:
        width = max(6, len(str(self.renderer_scenes - 1)))
        return f"render_{index:0{width}d}.{self.image_format}"

    def wants(self, split: str) -> bool:
        return self.only is None or split in self.only


# --------------------------------------------------------------------------- one scene


def _scene_rngs(seed: int, *stream: int) -> tuple[np.random.Generator, random.Random]:
    rng = np.random.default_rng([seed, *stream])
    return rng, random.Random(int(rng.integers(2**62)))


def _draw(rng, plan, bucket: str, options: SceneDatasetOptions) -> dict:
    if bucket == RENDERER_SPLIT:
        return scenes_sdf.render(rng, plan.objects, plan.axis)
    if options.style == "v2":
        return scenes_v2.draw_scene(rng, plan.objects, plan.axis, options.image_size)
    return scenes_draw.draw_scene(rng, plan.objects, plan.axis, options.image_size)


def _check_drawing(drawing: dict, axis: str | None) -> None:
    """v2 and renderer scenes must earn their words by scenes_semantics' rules."""
    canvas = tuple(drawing["canvas"])
    boxes = [o["bbox"] for o in drawing["objects"]]
    for obj in drawing["objects"]:
        if not size_is_clear(obj["bbox"], canvas, obj["size"]):
            raise RuntimeError(f"{obj} is not clearly {obj['size']} on a {canvas} canvas")
    if axis is not None:
        first = drawing["before"]
        if not relation_holds(boxes[first], boxes[1 - first], axis, 0, canvas):
            raise RuntimeError(f"the {axis} relation does not hold for {boxes}")


def render_scene(
    index: int, bucket: str, holdout: Holdout, options: SceneDatasetOptions
) -> tuple[Image.Image, dict]:
    """Scene `index` of `bucket` as (RGB image, record). Pure function of its arguments.

    test_renderer scenes are numbered on their own and drawn by scenes_sdf with
    test's facts (nothing held out), so test vs test_renderer isolates the drawing.
    """
    renderer = bucket == RENDERER_SPLIT
    rng, caption_rng = _scene_rngs(
        options.seed, *((RENDERER_STREAM, index) if renderer else (index,))
    )
    plan = plan_scene(rng, "test" if renderer else bucket, holdout)
    drawing = _draw(rng, plan, bucket, options)
    if renderer or options.style != "v1":
        _check_drawing(drawing, plan.axis)

    relation = None
    if plan.axis is not None:
        first = drawing["before"]
        second = 1 - first
        before, after = {"horizontal": ("left of", "right of"), "vertical": ("above", "below")}[
            plan.axis
        ]
        # Either object can be the subject; the caption grammar states both readings.
        relation = (first, before, second) if rng.random() < 0.5 else (second, after, first)
        assert AXIS[relation[1]] == plan.axis

    objects = [ObjectFact(o["colour"], o["shape"], o["size"]) for o in drawing["objects"]]
    facts = SceneFacts(
        tuple(objects),
        None
        if relation is None
        else make_relation(objects[relation[0]].kind, relation[1], objects[relation[2]].kind),
    )
    # caption_rng is its own stream: not drawing from it leaves the image unchanged.
    if options.captions == "canonical":
        captions = [canonical_caption(objects, facts.relation)]
    else:
        captions = make_captions(objects, relation, caption_rng, CAPTIONS_PER_IMAGE)
    record = {
        "image": options.renderer_name(index) if renderer else options.image_name(index),
        "index": index,
        "kind": plan.kind,
        "count": len(objects),
        "objects": drawing["objects"],
        "relation": None
        if relation is None
        else {"subject": relation[0], "predicate": relation[1], "object": relation[2]},
        "facts": facts.to_dict(),
        "background": drawing["background"],
        "captions": captions,
        "split": bucket,
        "novel": novel_reasons(facts, holdout),
    }
    # v1 records keep their old keys (and bytes); the others say how they were drawn.
    if renderer or options.style != "v1":
        record["style"] = "sdf" if renderer else options.style
        record["canvas"] = drawing["canvas"]
        for key in ("degradation", "jpeg"):
            if key in drawing and (key != "jpeg" or options.image_format == "jpg"):
                record[key] = drawing[key]
    return drawing["image"], record


# --------------------------------------------------------------------------- dataset writer


def _save_image(image: Image.Image, path: Path, image_format: str, jpeg: dict | None) -> None:
    if image_format == "jpg" and jpeg:  # v2 and the renderer draw their own settings
        image.save(path, format="JPEG", quality=jpeg["quality"], subsampling=jpeg["subsampling"])
    elif image_format == "jpg":
        # 4:4:4 (no chroma subsampling) keeps small shapes' colours clean at their edges.
        image.save(path, format="JPEG", quality=95, subsampling=0)
    else:
        image.save(path, format="PNG", compress_level=6)


def _render_and_save(job: tuple[int, str, Holdout, SceneDatasetOptions, str]) -> dict:
    index, bucket, holdout, options, images_dir = job
    image, record = render_scene(index, bucket, holdout, options)
    _save_image(image, Path(images_dir) / record["image"], options.image_format, record.get("jpeg"))
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
        if options.wants(bucket):
            yield (index, bucket, holdout, options, str(images_dir))
    if options.wants(RENDERER_SPLIT):
        for index in range(options.renderer_scenes):
            yield (index, RENDERER_SPLIT, holdout, options, str(images_dir))


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
    *,
    style: str = "v1",
    renderer_scenes: int = 0,
    only: tuple[str, ...] | None = None,
    captions: str = "varied",
) -> Path:
    """Write `n` scenes to out_dir in Flickr8k layout (see the module docstring); returns out_dir.

    The output is byte-identical for the same arguments, whatever `workers` is.
    `style` "v2" draws domain-randomised scenes; `renderer_scenes` adds that many
    test_renderer scenes; `only` writes just the named splits' scenes, each
    image the same bytes as in a full run; `captions` "canonical" writes one
    caption per image whose wording the image fixes (same images).
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
        style=style,
        renderer_scenes=renderer_scenes,
        only=tuple(only) if only is not None else None,
        captions=captions,
    )
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)
    images_dir = _empty_images_dir(out, overwrite)
    holdout = choose_holdout(seed)
    jobs = _jobs(options, holdout, images_dir)
    splits: dict[str, list[str]] = {name: [] for name in SPLITS}
    if renderer_scenes:
        splits[RENDERER_SPLIT] = []
    with (
        _open_new(out / "captions.csv", newline="") as captions_file,
        _open_new(out / "scenes.jsonl") as scenes_file,
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
            # forkserver, not fork: a forked child of a process with threads (pytest,
            # torch, a decode pool) can inherit a held lock and hang for ever (seen).
            with multiprocessing.get_context("forkserver").Pool(workers) as pool:
                for record in pool.imap(_render_and_save, jobs, chunksize=32):
                    write(record)

    manifest = _manifest(splits, holdout, options)
    write_file(out / "splits.json", json.dumps(manifest, indent=1) + "\n")
    return out


def _open_new(path: Path, **text):
    """A text file written from scratch as rows stream in; a link at its name is
    removed, never written through (created with O_EXCL | O_NOFOLLOW)."""
    path.unlink(missing_ok=True)
    return os.fdopen(create_exclusive(path), "w", encoding="utf-8", **text)


def _empty_images_dir(out: Path, overwrite: bool) -> Path:
    images_dir = out / "images"
    if images_dir.exists() and any(images_dir.iterdir()):
        if not overwrite:
            raise UsageError(f"{images_dir} is not empty; pass overwrite=True / --overwrite")
        for pattern in ("scene_*.*", "render_*.*"):
            for stale in images_dir.glob(pattern):
                stale.unlink()
    images_dir.mkdir(parents=True, exist_ok=True)
    return images_dir


def _manifest(splits: dict, holdout: Holdout, options: SceneDatasetOptions) -> dict:
    manifest = {
        **splits,
        "holdout": holdout.to_dict(),
        "seed": options.seed,
        "n": options.n,
        "image_size": options.image_size,
    }
    # v1 datasets keep their old splits.json bytes; the new settings are recorded when used.
    if options.style != "v1":
        manifest["style"] = options.style
    if options.renderer_scenes:
        manifest["renderer_scenes"] = options.renderer_scenes
    if options.only is not None:
        manifest["only"] = sorted(options.only)
    if options.captions != "varied":
        manifest["captions"] = options.captions
    return manifest


if __name__ == "__main__":  # python -m capbatch.training.scenes (training/scenes_cli.py)
    from .scenes_cli import main

    sys.exit(main())
