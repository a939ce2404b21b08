"""The independent evaluation renderer: no shared drawing code, same facts, same parser."""

from __future__ import annotations

import ast
import inspect
import itertools
import random
from pathlib import Path

import numpy as np
import pytest
from capbatch.training import scenes_background, scenes_draw, scenes_sdf, scenes_v2
from capbatch.training.scenes import (
    RENDERER_SPLIT,
    SceneDatasetOptions,
    choose_holdout,
    generate_dataset,
    load_scene_records,
    load_splits,
    render_scene,
)
from capbatch.training.scenes_grammar import (
    COLOURS,
    PLURALS,
    PREDICATES,
    SHAPES,
    ObjectFact,
    SceneFacts,
    caption_templates,
    make_relation,
)
from capbatch.training.scenes_parse import (
    explain_mismatch,
    mismatch_counts,
    parse_caption,
    semantic_accuracy,
)
from capbatch.training.scenes_semantics import (
    background_allowed,
    colour_names_of,
    size_is_clear,
    size_word,
)
from PIL import Image

GENERATOR_DRAWING = (scenes_draw, scenes_v2, scenes_background)
SHARED_SPEC = {"scenes_semantics", "scenes_grammar"}  # what the words mean; no drawing


def _imported_modules(module) -> set[str]:
    """Every module name an import statement of `module` names (relative ones without dots)."""
    tree = ast.parse(inspect.getsource(module))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = (node.module or "").split(".")[-1]
            names.add(base)
            if not node.module:  # "from . import x"
                names |= {alias.name for alias in node.names}
    return names


def _scene_modules(module) -> set[str]:
    return {name for name in _imported_modules(module) if name.startswith("scenes")}


def test_renderer_imports_only_the_shared_specification():
    assert _scene_modules(scenes_sdf) <= SHARED_SPEC
    assert "ImageDraw" not in inspect.getsource(scenes_sdf)  # shapes are distance fields


@pytest.mark.parametrize("module", GENERATOR_DRAWING, ids=lambda m: m.__name__)
def test_generator_drawing_never_imports_the_renderer(module):
    assert "scenes_sdf" not in _scene_modules(module)
    assert "scenes_sdf" not in inspect.getsource(module)


def test_no_module_holds_the_others_functions():
    def functions_from(module, owners):
        return {
            name
            for name, value in vars(module).items()
            if callable(value) and getattr(value, "__module__", "") in owners
        }

    generator = {m.__name__ for m in GENERATOR_DRAWING} | {"capbatch.training.scenes"}
    assert functions_from(scenes_sdf, generator) == set()
    for module in GENERATOR_DRAWING:
        assert functions_from(module, {scenes_sdf.__name__}) == set()


def test_renderer_colours_are_its_own_and_inside_the_named_regions():
    generator_values = {tuple(v) for v in scenes_draw.OBJECT_RGB.values()}
    assert set(scenes_sdf.COLOURS) == set(COLOURS)
    for colour, values in scenes_sdf.COLOURS.items():
        for rgb in values:
            assert colour_names_of(rgb) == [colour], (colour, rgb)
            assert rgb not in generator_values
    for colour in COLOURS:  # every object colour has backgrounds that keep the margin
        assert sum(background_allowed(b, [colour]) for b in scenes_sdf.BACKGROUNDS) >= 3


# --------------------------------------------------------------------------- rendered scenes


@pytest.fixture(scope="module")
def rendered() -> list[tuple[Image.Image, dict]]:
    holdout = choose_holdout(0)
    options = SceneDatasetOptions(n=10, seed=4, renderer_scenes=120)
    return [render_scene(i, RENDERER_SPLIT, holdout, options) for i in range(120)]


def test_renderer_scenes_cover_the_vocabulary(rendered):
    objects = [o for _, r in rendered for o in r["objects"]]
    assert {o["shape"] for o in objects} == set(SHAPES)
    assert {o["colour"] for o in objects} == set(COLOURS)
    assert {r["kind"] for _, r in rendered} == {"single", "pair", "count"}
    assert {r["relation"]["predicate"] for _, r in rendered if r["relation"]} == set(PREDICATES)
    assert len({tuple(r["canvas"]) for _, r in rendered}) >= 6


def test_renderer_draws_what_its_record_says(rendered):
    for image, record in rendered:
        canvas = tuple(record["canvas"])
        assert image.size == canvas and record["style"] == "sdf" and record["novel"] == []
        pixels = np.asarray(image, dtype=np.float64)
        for obj in record["objects"]:
            assert size_word(obj["bbox"], canvas) == obj["size"]
            assert size_is_clear(obj["bbox"], canvas, obj["size"])
            x0, y0, x1, y1 = obj["bbox"]
            box = pixels[y0:y1, x0:x1].reshape(-1, 3)
            # the object's exact colour covers a good part of its box
            hits = np.abs(box - np.array(obj["rgb"])).max(axis=1) <= 2
            assert hits.mean() > 0.3, (record["captions"][0], obj)
        rel = record["relation"]
        if rel:
            a, b = (record["objects"][rel[k]]["bbox"] for k in ("subject", "object"))
            axis = 0 if rel["predicate"] in ("left of", "right of") else 1
            first, second = (a, b) if rel["predicate"] in ("left of", "above") else (b, a)
            assert first[axis + 2] <= second[axis]


def test_parser_scores_renderer_scenes(rendered):
    """Captions of the renderer's facts parse back to those facts; wrong ones are caught."""
    truths, canonical, wrong = [], [], []
    for _, record in rendered:
        truth = SceneFacts.from_dict(record["facts"])
        objects = [ObjectFact(o["colour"], o["shape"], o["size"]) for o in record["objects"]]
        rel = record["relation"]
        relation = None if rel is None else (rel["subject"], rel["predicate"], rel["object"])
        for caption in caption_templates(objects, relation):
            assert parse_caption(caption) is not None
            assert explain_mismatch(caption, truth) is None, (caption, truth)
        truths.append(truth)
        canonical.append(record["captions"][0])
        if rel is None:
            first = objects[0]
            plural = f"two {first.colour} {PLURALS[first.shape]}"
            wrong.append(plural if len(objects) == 1 else f"a {first.colour} {first.shape}")
        else:
            mirrored = {"left of": "right of", "right of": "left of", "above": "below",
                        "below": "above"}[rel["predicate"]]  # fmt: skip
            wrong.append(caption_templates(objects, (rel["subject"], mirrored, rel["object"]))[0])
    assert semantic_accuracy(canonical, truths) == 1.0
    errors = mismatch_counts(wrong, truths)
    assert "ok" not in errors and set(errors) <= {"count", "relation"}


def test_renderer_is_seeded(rendered):
    holdout = choose_holdout(0)
    options = SceneDatasetOptions(n=10, seed=4, renderer_scenes=120)
    for index in (0, 7):
        image, record = render_scene(index, RENDERER_SPLIT, holdout, options)
        assert record == rendered[index][1]
        assert image.tobytes() == rendered[index][0].tobytes()
    other = render_scene(0, RENDERER_SPLIT, holdout, SceneDatasetOptions(n=10, seed=5))
    assert (
        other[1]["facts"] != rendered[0][1]["facts"]
        or other[1]["canvas"] != rendered[0][1]["canvas"]
    )


def test_distance_fields_are_signed_and_anti_aliased():
    for shape in SHAPES:
        alpha, box = scenes_sdf._coverage(shape, 20.0, 0.0, (32, 32), (64, 64))
        assert alpha[32, 32] == 1.0 and alpha[0, 0] == 0.0, shape  # inside / outside
        assert ((alpha > 0) & (alpha < 1)).any(), shape  # a soft edge
        x0, y0, x1, y1 = box
        assert 8 < x1 - x0 <= 42 and 8 < y1 - y0 <= 42


# --------------------------------------------------------------------------- the split


def test_test_renderer_split_is_written_and_never_in_training(tmp_path):
    out = generate_dataset(tmp_path / "data", n=20, seed=1, renderer_scenes=5)
    splits = load_splits(out)
    assert splits[RENDERER_SPLIT] == [f"render_{i:06d}.jpg" for i in range(5)]
    assert not set(splits[RENDERER_SPLIT]) & set(splits["train"] + splits["val"])
    records = {r["image"]: r for r in load_scene_records(out)}
    for name in splits[RENDERER_SPLIT]:
        assert records[name]["split"] == RENDERER_SPLIT
        assert Path(out / "images" / name).is_file()
    # the training reader sees it as one more split, with its captions
    from capbatch.training.data import read_dataset

    dataset = read_dataset(out)
    assert [im.name for im in dataset.split(RENDERER_SPLIT)] == splits[RENDERER_SPLIT]
    assert all(len(im.captions) == 5 for im in dataset.split(RENDERER_SPLIT))


def test_grammar_round_trips_pairs_the_renderer_can_draw():
    rng = random.Random(3)
    kinds = list(itertools.product(COLOURS, SHAPES))
    for _ in range(200):
        a, b = rng.sample(kinds, 2)
        predicate = rng.choice(PREDICATES)
        objects = [ObjectFact(*a, "small"), ObjectFact(*b, "large")]
        truth = SceneFacts(tuple(objects), make_relation(a, predicate, b))
        assert all(
            explain_mismatch(c, truth) is None
            for c in caption_templates(objects, (0, predicate, 1))
        )
