"""Generated scenes, style v2: seeded factors, their ranges, the word rules, the CLI."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from capbatch.training import scenes_background, scenes_v2
from capbatch.training.scenes import (
    RENDERER_SPLIT,
    SPLITS,
    SceneDatasetOptions,
    generate_dataset,
    load_scene_records,
    load_splits,
)
from capbatch.training.scenes_cli import main
from capbatch.training.scenes_grammar import (
    COLOURS,
    SHAPES,
    SceneFacts,
)
from capbatch.training.scenes_parse import (
    facts_match,
)
from capbatch.training.scenes_semantics import (
    COLOUR_REGIONS,
    LARGE_RANGE,
    SIZE_THRESHOLD,
    SMALL_RANGE,
    colour_names_of,
    hsv_to_rgb,
    in_region,
)
from PIL import Image, JpegImagePlugin

N_SCENES = 48


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scenes_v2") / "data"
    return generate_dataset(out, n=N_SCENES, seed=2, style="v2", renderer_scenes=4)


@pytest.fixture(scope="module")
def records(dataset) -> list[dict]:
    return [r for r in load_scene_records(dataset) if r["split"] != RENDERER_SPLIT]


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------- reproducibility


def test_v2_is_byte_identical_for_a_seed_whatever_the_worker_count(tmp_path):
    one = generate_dataset(tmp_path / "one", n=12, seed=5, workers=1, style="v2", renderer_scenes=3)
    two = generate_dataset(tmp_path / "two", n=12, seed=5, workers=2, style="v2", renderer_scenes=3)
    digest = _digest(one)
    assert len(digest) == 12 + 3 + 3
    assert digest == _digest(two)
    other = generate_dataset(tmp_path / "other", n=12, seed=6, style="v2")
    assert _digest(other)["images/scene_000000.jpg"] != digest["images/scene_000000.jpg"]


def test_only_writes_a_subset_with_the_same_bytes(tmp_path, dataset):
    part = generate_dataset(
        tmp_path / "part", n=N_SCENES, seed=2, style="v2", renderer_scenes=4,
        only=("test", RENDERER_SPLIT),
    )  # fmt: skip
    full_splits, part_splits = load_splits(dataset), load_splits(part)
    assert part_splits["test"] == full_splits["test"]
    assert part_splits[RENDERER_SPLIT] == full_splits[RENDERER_SPLIT]
    assert part_splits["train"] == part_splits["val"] == part_splits["test_novel"] == []
    for name in part_splits["test"] + part_splits[RENDERER_SPLIT]:
        assert (part / "images" / name).read_bytes() == (dataset / "images" / name).read_bytes()
    assert json.loads((part / "splits.json").read_text())["only"] == sorted(
        ["test", RENDERER_SPLIT]
    )
    # ... and `capbatch-train eval` reads it: "only" is not a split of image names.
    from capbatch.training.data import read_dataset

    read = read_dataset(part)
    assert "only" not in read.splits
    assert [im.name for im in read.splits["test"]] == part_splits["test"]


def test_v2_plans_the_same_facts_as_v1_for_a_seed(tmp_path, records):
    # Only the drawing changes with the style, so v1 and v2 test splits compare like for like.
    v1 = generate_dataset(tmp_path / "v1", n=N_SCENES, seed=2, only=("test",))
    v1_facts = {r["image"]: r["facts"]["objects"] for r in load_scene_records(v1)}
    for record in records:
        if record["image"] in v1_facts:
            kinds = [(o["colour"], o["shape"], o["size"]) for o in record["facts"]["objects"]]
            v1_kinds = [(o["colour"], o["shape"], o["size"]) for o in v1_facts[record["image"]]]
            assert kinds == v1_kinds


# --------------------------------------------------------------------------- factors


def test_canvases_vary_in_size_and_aspect_within_bounds(dataset, records):
    sizes = set()
    for record in records:
        width, height = record["canvas"]
        assert 0.5 <= width / height <= 2.0
        assert 128 <= min(width, height) <= 320
        sizes.add((width, height))
        if record["index"] < 8:
            with Image.open(dataset / "images" / record["image"]) as image:
                assert image.size == (width, height)
    assert len(sizes) > N_SCENES * 0.8
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes)


def test_sizes_are_continuous_and_their_words_follow_the_threshold(records):
    extents = {"small": [], "large": []}
    for record in records:
        width, height = record["canvas"]
        for obj in record["objects"]:
            x0, y0, x1, y1 = obj["bbox"]
            extent = max(x1 - x0, y1 - y0) / min(width, height)
            assert extent == pytest.approx(obj["extent"], abs=1e-3)
            low, high = SMALL_RANGE if obj["size"] == "small" else LARGE_RANGE
            assert low <= extent <= high, obj
            assert (extent < SIZE_THRESHOLD) == (obj["size"] == "small")
            extents[obj["size"]].append(extent)
    assert min(extents["small"]) < 0.11 and max(extents["large"]) > 0.4
    assert len({round(e, 3) for e in extents["large"] + extents["small"]}) > 40


def test_object_colours_lie_in_their_regions_and_vary(records):
    rgbs = {}
    for record in records:
        for obj in record["objects"]:
            assert colour_names_of(obj["rgb"]) == [obj["colour"]], obj
            rgbs.setdefault(obj["colour"], set()).add(tuple(obj["rgb"]))
    assert len(rgbs) == len(COLOURS)
    assert all(len(values) > 1 for values in rgbs.values())


def test_objects_keep_their_colour_through_the_degradations(dataset, records):
    for record in records:
        pixels = np.asarray(Image.open(dataset / "images" / record["image"]), dtype=np.float64)
        for obj in record["objects"]:
            x0, y0, x1, y1 = obj["bbox"]
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            patch = np.median(pixels[cy - 1 : cy + 2, cx - 1 : cx + 2].reshape(-1, 3), axis=0)
            assert in_region(obj["colour"], patch, 12, 0.15), (record["image"], obj, patch)


def test_degradations_and_jpeg_settings_vary_and_are_applied(dataset, records):
    qualities = [r["jpeg"]["quality"] for r in records]
    assert 50 <= min(qualities) and max(qualities) <= 95 and len(set(qualities)) > 10
    assert {r["jpeg"]["subsampling"] for r in records} == {"4:2:0", "4:4:4"}
    for factor in ("perspective", "blur", "noise"):
        values = [r["degradation"][factor] for r in records]
        assert any(v == 0 for v in values) and any(v > 0 for v in values), factor
    for record in records[:12]:
        with Image.open(dataset / "images" / record["image"]) as image:
            sampling = JpegImagePlugin.get_sampling(image)
        assert sampling == {"4:4:4": 0, "4:2:0": 2}[record["jpeg"]["subsampling"]]


def test_backgrounds_vary_in_style_and_brightness(records):
    assert len({r["background"]["style"] for r in records}) >= 5
    values = [max(r["background"]["tone"]) for r in records]
    assert min(values) < 60 and max(values) > 200


@pytest.mark.parametrize("seed", range(6))
def test_background_pixels_keep_a_margin_from_the_objects_colours(seed):
    rng = np.random.default_rng(seed)
    for colours in (["white"], ["black"], ["red", "orange"], ["yellow", "green"], ["purple"]):
        pixels, info = scenes_background.draw_background(rng, 90, 60, colours)
        assert pixels.shape == (60, 90, 3)
        for colour in colours:
            assert not scenes_background.pixels_in_region(pixels, colour).any(), (colours, info)


def test_vectorised_region_test_agrees_with_the_scalar_one():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(40, 50, 3)).astype(np.uint8)
    for colour in COLOURS:
        inside = scenes_background.pixels_in_region(pixels, colour)
        expected = [in_region(colour, p) for p in pixels.reshape(-1, 3)]
        assert inside.tolist() == expected


def test_every_caption_parses_back_and_relations_hold(records):
    assert {r["kind"] for r in records} == {"single", "pair", "count"}
    for record in records:
        truth = SceneFacts.from_dict(record["facts"])
        assert all(facts_match(c, truth) for c in record["captions"])
        boxes = [o["bbox"] for o in record["objects"]]
        for a, b in itertools.combinations(boxes, 2):
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
        rel = record["relation"]
        if rel is None:
            continue
        first, second = boxes[rel["subject"]], boxes[rel["object"]]
        if rel["predicate"] in ("right of", "below"):
            first, second = second, first
        horizontal = rel["predicate"] in ("left of", "right of")
        along, across = (0, 1) if horizontal else (1, 0)
        centre = [(first[i] + first[i + 2]) / 2 for i in (0, 1)]
        other = [(second[i] + second[i + 2]) / 2 for i in (0, 1)]
        assert second[along] >= first[along + 2]  # boxes apart along the axis
        assert abs(other[across] - centre[across]) <= 0.5 * (other[along] - centre[along])


def test_canonical_captions_are_one_per_image_worded_by_the_image(tmp_path, dataset, records):
    """--captions canonical: the same images, one caption each, the left or upper object first."""
    out = tmp_path / "canon"
    args = ["--out", str(out), "--n", str(N_SCENES), "--seed", "2", "--style", "v2"]
    assert main([*args, "--test-renderer", "4", "--captions", "canonical"]) == 0
    assert _digest(out / "images") == _digest(dataset / "images")
    assert json.loads((out / "splits.json").read_text())["captions"] == "canonical"
    assert "captions" not in json.loads((dataset / "splits.json").read_text())
    with open(out / "captions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[1:]
    by_image = {r["image"]: r for r in load_scene_records(out)}
    assert sorted(image for image, _ in rows) == sorted(by_image)  # exactly one row each
    relations = 0
    for image, caption in rows:
        record = by_image[image]
        assert record["captions"] == [caption]
        assert facts_match(caption, SceneFacts.from_dict(record["facts"]))
        if record["relation"] is None:
            # no relation: the varied set's first (canonical) wording
            continue
        relations += 1
        first_named = next(
            o
            for o in record["objects"]
            if f"{o['colour']} {o['shape']}"
            in caption.split(" to the left of ")[0].split(" above ")[0]
        )
        other = next(o for o in record["objects"] if o is not first_named)
        axis = 0 if " to the left of " in caption else 1
        assert " right of " not in caption and " below " not in caption
        assert first_named["bbox"][axis + 2] <= other["bbox"][axis]  # named first: left/above
    assert relations >= 5
    varied_first = {r["image"]: r["captions"][0] for r in records if r["relation"] is None}
    assert all(by_image[image]["captions"] == [c] for image, c in varied_first.items())
    with pytest.raises(SystemExit) as refused:
        main([*args, "--overwrite", "--captions", "shuffled"])
    assert refused.value.code == 2
    with pytest.raises(ValueError, match="captions must be one of"):
        SceneDatasetOptions(n=4, captions="shuffled")


# --------------------------------------------------------------------------- the word rules


def test_colour_regions_are_disjoint_with_margins():
    for hue, s, v in itertools.product(
        range(0, 360, 3), np.linspace(0, 1, 21), np.linspace(0, 1, 21)
    ):
        assert len(colour_names_of(hsv_to_rgb(hue, s, v))) <= 1
    hues = sorted(r.hue for r in COLOUR_REGIONS.values() if r.hue)
    for (_, high), (low, _) in zip(hues, hues[1:] + [(hues[0][0] + 360, 0)]):
        assert low - high >= 12


def test_object_rgb_stays_in_its_region_for_every_colour():
    rng = np.random.default_rng(1)
    for colour in COLOURS:
        assert all(in_region(colour, scenes_v2.object_rgb(rng, colour)) for _ in range(50))


def test_canvas_sizes_cover_both_orientations_and_squares():
    rng = np.random.default_rng(3)
    canvases = [scenes_v2.draw_canvas_size(rng, 256) for _ in range(300)]
    ratios = [w / h for w, h in canvases]
    assert min(ratios) < 0.6 and max(ratios) > 1.7 and ratios.count(1.0) > 30
    assert all(0.5 <= r <= 2.0 for r in ratios)


def test_every_shape_is_drawn_in_both_sizes(records):
    seen = {(o["shape"], o["size"]) for r in records for o in r["objects"]}
    assert {s for s, _ in seen} == set(SHAPES)


# --------------------------------------------------------------------------- options and CLI


def test_v1_datasets_keep_their_old_manifest_keys(tmp_path):
    out = generate_dataset(tmp_path / "v1", n=4, seed=0)
    manifest = json.loads((out / "splits.json").read_text())
    assert set(manifest) == {*SPLITS, "holdout", "seed", "n", "image_size"}
    assert set(load_scene_records(out)[0]) == {
        "image", "index", "kind", "count", "objects", "relation", "facts",
        "background", "captions", "split", "novel",
    }  # fmt: skip


def test_new_options_are_validated():
    with pytest.raises(ValueError):
        SceneDatasetOptions(n=4, style="v3")
    with pytest.raises(ValueError):
        SceneDatasetOptions(n=4, renderer_scenes=-1)
    with pytest.raises(ValueError):
        SceneDatasetOptions(n=4, only=("bogus",))


def test_cli_draws_v2_and_the_renderer_split(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--out", str(out), "--n", "6", "--style", "v2", "--test-renderer", "2"]
    assert main(args) == 0
    assert "test_renderer 2" in capsys.readouterr().out
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names[:2] == ["render_000000.jpg", "render_000001.jpg"] and len(names) == 8
    assert json.loads((out / "splits.json").read_text())["style"] == "v2"
    assert main(["--out", str(tmp_path / "bad"), "--n", "4", "--only", "bogus"]) == 2
    assert "only must name splits" in capsys.readouterr().err
