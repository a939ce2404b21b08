"""Generated scenes: determinism, caption grammar round trip, accuracy, splits, pixels, CLI."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from capbatch.training.scenes import (
    BACKGROUND_RGB,
    OBJECT_RGB,
    SPLITS,
    SceneDatasetOptions,
    assign_buckets,
    choose_holdout,
    generate_dataset,
    load_holdout,
    load_scene_facts,
    load_scene_records,
    load_splits,
    novel_reasons,
    relation_key,
    render_scene,
)
from capbatch.training.scenes_cli import main
from capbatch.training.scenes_grammar import (
    COLOURS,
    PREDICATES,
    SHAPES,
    SIZES,
    CaptionGrammarError,
    ObjectFact,
    SceneFacts,
    caption_templates,
    grammar_vocabulary,
    make_relation,
)
from capbatch.training.scenes_parse import (
    explain_mismatch,
    facts_match,
    mismatch_counts,
    parse_caption,
    semantic_accuracy,
)
from PIL import Image

from capbatch.errors import UsageError

N_SCENES = 160


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("scenes") / "data", n=N_SCENES, seed=3)


@pytest.fixture(scope="module")
def records(dataset) -> list[dict]:
    return load_scene_records(dataset)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes_whatever_the_worker_count(tmp_path):
    one = generate_dataset(tmp_path / "one", n=24, seed=5, workers=1)
    two = generate_dataset(tmp_path / "two", n=24, seed=5, workers=2)
    digest = _digest(one)
    assert len(digest) == 24 + 3  # images + captions.csv, scenes.jsonl, splits.json
    assert digest == _digest(two)


def test_different_seed_gives_different_scenes(tmp_path):
    a = generate_dataset(tmp_path / "a", n=8, seed=1)
    b = generate_dataset(tmp_path / "b", n=8, seed=2)
    assert (a / "captions.csv").read_text() != (b / "captions.csv").read_text()
    assert (a / "images/scene_000000.jpg").read_bytes() != (
        b / "images/scene_000000.jpg"
    ).read_bytes()


# --------------------------------------------------------------------------- layout


def test_layout_captions_csv_has_five_distinct_captions_per_image(dataset):
    with open(dataset / "captions.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["image", "caption"]
    per_image: dict[str, list[str]] = {}
    for image, caption in rows[1:]:
        per_image.setdefault(image, []).append(caption)
    assert len(per_image) == N_SCENES
    assert all(len(c) == 5 and len(set(c)) == 5 for c in per_image.values())
    assert sorted(per_image) == sorted(p.name for p in (dataset / "images").iterdir())


def test_images_are_rgb_of_the_stated_size(dataset, records):
    for record in records[:40]:
        with Image.open(dataset / "images" / record["image"]) as image:
            assert image.format == "JPEG"
            assert image.mode == "RGB"
            assert image.size == (256, 256)


def test_png_option_and_other_sizes(tmp_path):
    out = generate_dataset(tmp_path / "png", n=3, seed=0, image_size=128, image_format="png")
    for record in load_scene_records(out):
        with Image.open(out / "images" / record["image"]) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (128, 128))
        assert record["image"].endswith(".png")


def test_scenes_cover_shapes_colours_counts_relations_and_backgrounds(records):
    objects = [o for r in records for o in r["objects"]]
    assert {o["shape"] for o in objects} == set(SHAPES)
    assert {o["colour"] for o in objects} == set(COLOURS)
    assert {o["size"] for o in objects} == set(SIZES)
    assert {r["count"] for r in records} == {1, 2, 3}
    assert {r["relation"]["predicate"] for r in records if r["relation"]} == set(PREDICATES)
    assert len({r["background"]["style"] for r in records}) == 6
    assert len({tuple(r["objects"][0]["bbox"][:2]) for r in records}) > N_SCENES * 0.9


# --------------------------------------------------------------------------- pixels and geometry


def _nearest_colour(rgb: np.ndarray) -> str:
    return min(OBJECT_RGB, key=lambda name: math.dist(OBJECT_RGB[name], rgb))


def test_objects_have_their_colour_at_their_bbox_centre(dataset, records):
    for record in records:
        pixels = np.asarray(Image.open(dataset / "images" / record["image"]), dtype=np.float64)
        for obj in record["objects"]:
            x0, y0, x1, y1 = obj["bbox"]
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            patch = np.median(pixels[cy - 1 : cy + 2, cx - 1 : cx + 2].reshape(-1, 3), axis=0)
            assert _nearest_colour(patch) == obj["colour"], (record["image"], obj, patch)
            assert math.dist(patch, OBJECT_RGB[obj["colour"]]) < 45
            # and the background around the box is not that colour
            ring = pixels[max(0, y0 - 3), max(0, x0 - 3)]
            assert math.dist(ring, OBJECT_RGB[obj["colour"]]) > 60


def test_objects_are_inside_the_canvas_and_apart(records):
    for record in records:
        boxes = [o["bbox"] for o in record["objects"]]
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256
        for a, b in itertools.combinations(boxes, 2):
            apart_x = a[2] <= b[0] or b[2] <= a[0]
            apart_y = a[3] <= b[1] or b[3] <= a[1]
            assert apart_x or apart_y


def test_stated_relations_hold_geometrically(records):
    pairs = [r for r in records if r["relation"]]
    assert pairs
    for record in pairs:
        rel = record["relation"]
        subject = record["objects"][rel["subject"]]["bbox"]
        obj = record["objects"][rel["object"]]["bbox"]
        predicate = rel["predicate"]
        if predicate in ("right of", "below"):
            subject, obj = obj, subject
            predicate = {"right of": "left of", "below": "above"}[predicate]
        sx, sy = (subject[0] + subject[2]) / 2, (subject[1] + subject[3]) / 2
        ox, oy = (obj[0] + obj[2]) / 2, (obj[1] + obj[3]) / 2
        if predicate == "left of":
            assert subject[2] + 10 <= obj[0]
            assert abs(oy - sy) <= 0.5 * (ox - sx)
        else:
            assert subject[3] + 10 <= obj[1]
            assert abs(ox - sx) <= 0.5 * (oy - sy)


def test_palettes_are_far_apart():
    for a, b in itertools.combinations(OBJECT_RGB.values(), 2):
        assert math.dist(a, b) >= 100
    for tone in BACKGROUND_RGB.values():
        for colour in OBJECT_RGB.values():
            assert math.dist(tone, colour) >= 105


# --------------------------------------------------------------------------- captions <-> facts


def test_every_generated_caption_parses_back_to_its_scene(records):
    for record in records:
        truth = SceneFacts.from_dict(record["facts"])
        for caption in record["captions"]:
            assert facts_match(caption, truth), (caption, truth)
            assert parse_caption(caption).kinds == truth.kinds


def test_all_phrasings_of_many_rendered_scenes_parse_back():
    holdout = choose_holdout(0)
    options = SceneDatasetOptions(n=300, seed=11, image_size=96)
    for index in range(300):
        _, record = render_scene(index, "train", holdout, options)
        truth = SceneFacts.from_dict(record["facts"])
        objects = [ObjectFact(o["colour"], o["shape"], o["size"]) for o in record["objects"]]
        rel = record["relation"]
        relation = None if rel is None else (rel["subject"], rel["predicate"], rel["object"])
        for caption in caption_templates(objects, relation):
            assert facts_match(caption, truth), (caption, truth)


def test_grammar_round_trips_every_single_and_count_and_many_relations():
    rng = random.Random(0)
    for colour, shape, size in itertools.product(COLOURS, SHAPES, SIZES):
        obj = ObjectFact(colour, shape, size)
        for n in (1, 2, 3):
            truth = SceneFacts((obj,) * n)
            for caption in caption_templates([obj] * n):
                assert facts_match(caption, truth), caption
    kinds = list(itertools.product(COLOURS, SHAPES))
    for _ in range(1500):
        a, b = rng.sample(kinds, 2)
        objects = [ObjectFact(*a, rng.choice(SIZES)), ObjectFact(*b, rng.choice(SIZES))]
        predicate = rng.choice(PREDICATES)
        truth = SceneFacts(tuple(objects), make_relation(a, predicate, b))
        for caption in caption_templates(objects, (0, predicate, 1)):
            assert facts_match(caption, truth), caption


def test_vocabulary_is_small_and_covers_every_caption(records):
    vocabulary = grammar_vocabulary()
    assert len(vocabulary) < 100
    used = {w for r in records for c in r["captions"] for w in c.split()}
    assert used <= vocabulary


def _pair_truth(sizes=("small", "large")) -> SceneFacts:
    return SceneFacts(
        (ObjectFact("red", "circle", sizes[0]), ObjectFact("blue", "square", sizes[1])),
        make_relation(("red", "circle"), "left of", ("blue", "square")),
    )


@pytest.mark.parametrize(
    "caption",
    [
        "a red circle to the left of a blue square",
        "a red circle left of a blue square",
        "a blue square is to the right of a red circle",
        "a blue square right of a red circle",
        "there is a small red circle to the left of a large blue square",
        "the image shows a large blue square to the right of a red circle.",
        "A Red Circle, to the left of a blue square",
    ],
)
def test_mirrored_and_rephrased_relations_match(caption):
    assert facts_match(caption, _pair_truth())


@pytest.mark.parametrize(
    ("caption", "reason"),
    [
        ("a red circle to the right of a blue square", "relation"),
        ("a blue square to the left of a red circle", "relation"),
        ("a red circle above a blue square", "relation"),
        ("a blue square below a red circle", "relation"),
        ("a green circle to the left of a blue square", "colour"),
        ("a red star to the left of a blue square", "shape"),
        ("a blue circle to the left of a red square", "object"),
        ("a red circle", "count"),
        ("two red circles", "colour"),
        ("a large red circle to the left of a blue square", "size"),
        ("a red circle to the left of a small blue square", "size"),
        ("a red circle to the left of", "unparsable"),
        ("a red circle to the left of a blue square and a star", "unparsable"),
    ],
)
def test_wrong_facts_do_not_match(caption, reason):
    assert not facts_match(caption, _pair_truth())
    assert explain_mismatch(caption, _pair_truth()) == reason


def test_counts_and_sizes_must_be_true():
    two = SceneFacts((ObjectFact("green", "star", "small"),) * 2)
    assert facts_match("two green stars", two)
    assert facts_match("there are two small green stars", two)
    assert explain_mismatch("three green stars", two) == "count"
    assert explain_mismatch("two large green stars", two) == "size"
    assert explain_mismatch("two green crosses", two) == "shape"
    assert explain_mismatch("a green star", two) == "count"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "red circle",
        "a red",
        "a circle red",
        "a red circle circle",
        "a red red circle",
        "two red circle",
        "a red circles",
        "there is two red circles",
        "there are a red circle",
        "a red circle to the left of a red circle",
        "a red circle next to a blue square",
        "four red circles",
        "a purple banana",
    ],
)
def test_parser_rejects_text_outside_the_grammar(text):
    assert parse_caption(text) is None


def test_parser_reads_facts():
    facts = parse_caption("a large orange heart is below a white hexagon")
    assert facts.count == 2
    assert facts.relation == make_relation(("white", "hexagon"), "above", ("orange", "heart"))
    assert {o.size for o in facts.objects} == {"large", None}
    assert parse_caption("three small black crosses").kinds == (("black", "cross"),) * 3


def test_grammar_refuses_inexpressible_scenes():
    red = ObjectFact("red", "circle", "small")
    with pytest.raises(CaptionGrammarError):
        caption_templates([red, red], (0, "left of", 1))
    with pytest.raises(CaptionGrammarError):
        caption_templates([red, ObjectFact("blue", "square", "small")])


def test_semantic_accuracy_and_mismatch_counts():
    truth = [_pair_truth(), SceneFacts((ObjectFact("black", "heart", "large"),))]
    captions = ["a blue square right of a red circle", "a black star"]
    assert semantic_accuracy(captions, truth) == 0.5
    assert mismatch_counts(captions, truth) == {"ok": 1, "shape": 1}
    with pytest.raises(ValueError):
        semantic_accuracy(captions[:1], truth)


def test_facts_round_trip_through_dicts(records):
    for record in records[:20]:
        facts = SceneFacts.from_dict(record["facts"])
        assert SceneFacts.from_dict(json.loads(json.dumps(facts.to_dict()))) == facts


# --------------------------------------------------------------------------- splits


def test_splits_are_disjoint_and_complete(dataset):
    splits = load_splits(dataset)
    names = [name for split in SPLITS for name in splits[split]]
    assert len(names) == len(set(names)) == N_SCENES
    assert all(splits[split] for split in SPLITS)


def test_held_out_combinations_never_occur_in_train(dataset, records):
    holdout = load_holdout(dataset)
    assert holdout == choose_holdout(3)
    facts = load_scene_facts(dataset)
    splits = load_splits(dataset)
    for split in ("train", "val", "test"):
        for name in splits[split]:
            assert novel_reasons(facts[name], holdout) == []
            assert not set(facts[name].kinds) & holdout.objects
    reasons = Counter(
        r for name in splits["test_novel"] for r in novel_reasons(facts[name], holdout)
    )
    assert reasons["object"] > 0 and reasons["relation"] > 0
    assert all(novel_reasons(facts[name], holdout) for name in splits["test_novel"])
    # held-out objects' colours and shapes still appear in training, with other partners
    train_kinds = {k for name in splits["train"] for k in facts[name].kinds}
    for colour, shape in holdout.objects:
        assert any(c == colour for c, _ in train_kinds) and any(s == shape for _, s in train_kinds)


def test_holdout_is_seeded_and_composable():
    holdout = choose_holdout(0)
    assert holdout == choose_holdout(0) != choose_holdout(1)
    assert len({c for c, _ in holdout.objects}) == len({s for _, s in holdout.objects}) == 6
    for a, b, axis in holdout.relations:
        assert a not in holdout.objects and b not in holdout.objects
        assert relation_key(b, a, axis) == (a, b, axis)


def test_ten_thousand_scenes_leave_at_least_eight_thousand_for_training():
    buckets = Counter(assign_buckets(10_000, 0, 0.05, 0.05, 0.05))
    assert buckets["train"] >= 8_000
    assert buckets["test_novel"] == buckets["val"] == buckets["test"] == 500


def test_options_are_validated():
    with pytest.raises(ValueError):
        SceneDatasetOptions(n=0)
    with pytest.raises(ValueError):
        SceneDatasetOptions(n=10, image_format="gif")
    with pytest.raises(ValueError):
        SceneDatasetOptions(n=10, val_fraction=0.5, test_fraction=0.5)


# --------------------------------------------------------------------------- CLI


def test_cli_writes_the_layout_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--n", "6", "--seed", "1"]) == 0
    assert "images/s" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "captions.csv",
        "images",
        "scenes.jsonl",
        "splits.json",
    ]
    assert len(list((out / "images").iterdir())) == 6
    assert len((out / "captions.csv").read_text().splitlines()) == 1 + 6 * 5
    assert main(["--out", str(out), "--n", "6"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["--out", str(out), "--n", "4", "--overwrite"]) == 0
    assert len(list((out / "images").iterdir())) == 4
    with pytest.raises(UsageError):
        generate_dataset(out, n=2)


def test_scenes_need_neither_torch_nor_a_training_extra():
    code = (
        "import sys, capbatch.training.scenes, capbatch.training.scenes_grammar; "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_style_v1_still_draws_the_shipped_samples_byte_for_byte():
    """The shipped model and samples/ came from style v1: its bytes must never drift."""
    import io

    samples = Path(__file__).resolve().parents[2] / "samples"
    options = SceneDatasetOptions(n=10_000, seed=0)
    buckets = assign_buckets(10_000, 0, 0.05, 0.05, 0.05)
    holdout = choose_holdout(0)
    for name in ("scene_000451.jpg", "scene_009584.jpg"):
        index = int(name[6:12])
        image, record = render_scene(index, buckets[index], holdout, options)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=95, subsampling=0)
        assert buffer.getvalue() == (samples / name).read_bytes()
        truth = load_scene_facts(samples)[name]
        assert SceneFacts.from_dict(record["facts"]) == truth
