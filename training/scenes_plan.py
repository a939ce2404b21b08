"""What each scene holds: the held-out compositions, the split of each index, the facts planned;
and the readers of a written dataset's splits.json and scenes.jsonl.

Planning is separate from drawing: the training generator (scenes_draw.py,
scenes_v2.py) and the independent renderer (scenes_sdf.py) draw the same
planned facts, so a split's facts do not depend on who draws them.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .scenes_grammar import COLOURS, SHAPES, SIZES, SceneFacts

SPLITS = ("train", "val", "test", "test_novel")
RENDERER_SPLIT = "test_renderer"  # drawn by scenes_sdf, never trained on
KIND_WEIGHTS = {"single": 0.2, "pair": 0.55, "count": 0.25}  # relations are the hard part
COUNT_WEIGHTS = {2: 0.6, 3: 0.4}

# --------------------------------------------------------------------------- holdout and splits


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


# --------------------------------------------------------------------------- content


@dataclass(frozen=True)
class ScenePlan:
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


def plan_scene(rng: np.random.Generator, bucket: str, holdout: Holdout) -> ScenePlan:
    seen = holdout.seen_objects()
    kind = _weighted(rng, KIND_WEIGHTS)
    axis = _pick(rng, ("horizontal", "vertical"))
    if bucket == "test_novel":
        if holdout.relations and (not holdout.objects or rng.random() < 0.5):
            a, b, axis = _pick(rng, sorted(holdout.relations))
            if rng.random() < 0.5:
                a, b = b, a
            return ScenePlan("pair", ((*a, _size(rng)), (*b, _size(rng))), axis)
        first = _pick(rng, sorted(holdout.objects))
    else:
        first = _pick(rng, seen)
    if kind == "single":
        return ScenePlan(kind, ((*first, _size(rng)),), None)
    if kind == "count":
        size = _size(rng)
        return ScenePlan(kind, ((*first, size),) * _weighted(rng, COUNT_WEIGHTS), None)
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
    return ScenePlan(kind, ((*first, _size(rng)), (*second, _size(rng))), axis)


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
    """split name (train, val, test, test_novel, and test_renderer if drawn) -> image names."""
    data = json.loads((Path(data_dir) / "splits.json").read_text(encoding="utf-8"))
    names = SPLITS + ((RENDERER_SPLIT,) if RENDERER_SPLIT in data else ())
    return {name: list(data[name]) for name in names}


def load_holdout(data_dir: str | Path) -> Holdout:
    data = json.loads((Path(data_dir) / "splits.json").read_text(encoding="utf-8"))
    return Holdout.from_dict(data["holdout"])
