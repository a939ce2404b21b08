"""The generated scenes' vocabulary, facts and caption grammar (its parser:
training/scenes_parse.py).

A scene's *facts* are what a caption must state: the multiset of (colour, shape)
objects (so the count), the spatial relation between two different objects,
and optionally each object's size. Captions are produced from facts by a small
grammar, and `parse_caption` inverts that grammar, so a model's caption can be
checked against the scene it describes ("semantic accuracy").

Pure Python (no numpy, no torch): evaluation code and the runtime's tests can
use it anywhere.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

# --------------------------------------------------------------------------- vocabulary

COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "white", "black")
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "heart")
SIZES = ("small", "large")
PLURALS = {shape: shape + ("es" if shape.endswith("s") else "s") for shape in SHAPES}
_SINGULARS = {plural: shape for shape, plural in PLURALS.items()}
NUMBER_WORDS = {2: "two", 3: "three"}
_NUMBERS = {word: count for count, word in NUMBER_WORDS.items()}

# Predicates as they appear in captions. Each has a mirror ("A left of B" is
# "B right of A"); facts keep only the canonical half (left of, above).
PREDICATES = ("left of", "right of", "above", "below")
MIRROR = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
CANONICAL_PREDICATES = ("left of", "above")
AXIS = {"left of": "horizontal", "right of": "horizontal", "above": "vertical", "below": "vertical"}

Obj = tuple[str, str]  # (colour, shape)


class CaptionGrammarError(ValueError):
    """Facts that the grammar cannot express (e.g. a relation between identical objects)."""


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True, order=True)
class ObjectFact:
    colour: str
    shape: str
    size: str | None = None  # None: not stated (captions may omit size)

    def __post_init__(self) -> None:
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}")
        if self.size is not None and self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}")

    @property
    def kind(self) -> Obj:
        return (self.colour, self.shape)


@dataclass(frozen=True)
class RelationFact:
    """`subject` <predicate> `object`, always stored in canonical form (left of / above)."""

    subject: Obj
    predicate: str
    object: Obj

    def __post_init__(self) -> None:
        if self.predicate not in CANONICAL_PREDICATES:
            raise ValueError(
                f"relation facts are canonical ({CANONICAL_PREDICATES}); use make_relation()"
            )

    @property
    def axis(self) -> str:
        return AXIS[self.predicate]


def make_relation(subject: Obj, predicate: str, obj: Obj) -> RelationFact:
    """Any stated relation -> its canonical fact ("B right of A" -> "A left of B")."""
    if predicate not in PREDICATES:
        raise ValueError(f"unknown predicate {predicate!r}")
    if predicate in CANONICAL_PREDICATES:
        return RelationFact(tuple(subject), predicate, tuple(obj))
    return RelationFact(tuple(obj), MIRROR[predicate], tuple(subject))


@dataclass(frozen=True)
class SceneFacts:
    """What a caption states. `objects` is sorted, so equal multisets compare equal."""

    objects: tuple[ObjectFact, ...]
    relation: RelationFact | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(sorted(self.objects, key=_object_key)))
        if not self.objects:
            raise ValueError("a scene has at least one object")
        if self.relation is not None:
            kinds = [o.kind for o in self.objects]
            if len(kinds) != 2 or sorted(kinds) != sorted(
                [self.relation.subject, self.relation.object]
            ):
                raise ValueError("a relation must name exactly the scene's two objects")

    @property
    def count(self) -> int:
        return len(self.objects)

    @property
    def kinds(self) -> tuple[Obj, ...]:
        return tuple(sorted(o.kind for o in self.objects))

    def to_dict(self) -> dict:
        return {
            "objects": [
                {"colour": o.colour, "shape": o.shape, "size": o.size} for o in self.objects
            ],
            "relation": None
            if self.relation is None
            else {
                "subject": list(self.relation.subject),
                "predicate": self.relation.predicate,
                "object": list(self.relation.object),
            },
        }

    @classmethod
    def from_dict(cls, data: dict) -> SceneFacts:
        objects = tuple(ObjectFact(o["colour"], o["shape"], o.get("size")) for o in data["objects"])
        rel = data.get("relation")
        relation = (
            None
            if rel is None
            else make_relation(tuple(rel["subject"]), rel["predicate"], tuple(rel["object"]))
        )
        return cls(objects, relation)


def _object_key(o: ObjectFact) -> tuple[str, str, str]:
    return (o.colour, o.shape, o.size or "")


# --------------------------------------------------------------------------- caption grammar


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def _noun_phrase(o: ObjectFact, with_size: bool) -> str:
    words = [o.size, o.colour, o.shape] if with_size and o.size else [o.colour, o.shape]
    return f"{_article(words[0])} {' '.join(words)}"


def _plural_phrase(count: int, o: ObjectFact, with_size: bool) -> str:
    size = f"{o.size} " if with_size and o.size else ""
    return f"{NUMBER_WORDS[count]} {size}{o.colour} {PLURALS[o.shape]}"


def _relation_words(predicate: str, long_form: bool) -> str:
    # "to the left of" and "left of" both occur in the captions; above/below have one form.
    if predicate in ("left of", "right of") and long_form:
        return f"to the {predicate}"
    return predicate


def _single_captions(o: ObjectFact) -> list[str]:
    return [
        _noun_phrase(o, with_size=True),
        _noun_phrase(o, with_size=False),
        f"there is {_noun_phrase(o, with_size=False)}",
        f"there is {_noun_phrase(o, with_size=True)}",
        f"the image shows {_noun_phrase(o, with_size=False)}",
        f"a single {o.colour} {o.shape}",
        f"one {o.size} {o.colour} {o.shape}" if o.size else f"one {o.colour} {o.shape}",
    ]


def _count_captions(count: int, o: ObjectFact) -> list[str]:
    return [
        _plural_phrase(count, o, with_size=False),
        f"there are {_plural_phrase(count, o, with_size=False)}",
        _plural_phrase(count, o, with_size=True),
        f"the image shows {_plural_phrase(count, o, with_size=False)}",
        f"there are {_plural_phrase(count, o, with_size=True)}",
        f"the image shows {_plural_phrase(count, o, with_size=True)}",
    ]


def _relation_captions(a: ObjectFact, predicate: str, b: ObjectFact) -> list[str]:
    mirror = MIRROR[predicate]
    forward = _relation_words(predicate, long_form=True)
    backward = _relation_words(mirror, long_form=True)
    return [
        f"{_noun_phrase(a, False)} {forward} {_noun_phrase(b, False)}",
        f"{_noun_phrase(b, False)} is {backward} {_noun_phrase(a, False)}",
        f"there is {_noun_phrase(a, False)} {_relation_words(predicate, False)} "
        f"{_noun_phrase(b, False)}",
        f"{_noun_phrase(a, True)} {forward} {_noun_phrase(b, True)}",
        f"{_noun_phrase(b, True)} {_relation_words(mirror, False)} {_noun_phrase(a, True)}",
        f"the image shows {_noun_phrase(a, False)} {forward} {_noun_phrase(b, False)}",
        f"{_noun_phrase(a, True)} is {forward} {_noun_phrase(b, True)}",
    ]


def caption_templates(
    objects: Sequence[ObjectFact], relation: tuple[int, str, int] | None = None
) -> list[str]:
    """Every caption the grammar has for a scene; the first is its canonical caption.

    `objects` carry their true sizes; `relation` is (subject index, predicate,
    object index) as the scene was laid out (any of the four predicates).
    """
    if relation is not None:
        subject, predicate, obj = relation
        if len(objects) != 2 or {subject, obj} != {0, 1}:
            raise CaptionGrammarError("a relation joins exactly two objects")
        if objects[subject].kind == objects[obj].kind:
            raise CaptionGrammarError("a relation between identical objects is ambiguous")
        return _relation_captions(objects[subject], predicate, objects[obj])
    if len(objects) == 1:
        return _single_captions(objects[0])
    if len({o.kind for o in objects}) != 1 or len({o.size for o in objects}) != 1:
        raise CaptionGrammarError("several objects without a relation must be identical")
    if len(objects) not in NUMBER_WORDS:
        raise CaptionGrammarError(f"no number word for {len(objects)} objects")
    return _count_captions(len(objects), objects[0])


def make_captions(
    objects: Sequence[ObjectFact],
    relation: tuple[int, str, int] | None,
    rng: random.Random,
    k: int = 5,
) -> list[str]:
    """k different captions: the canonical one first, then k-1 others drawn by `rng`."""
    templates = caption_templates(objects, relation)
    if k > len(templates):
        raise CaptionGrammarError(f"asked for {k} captions, the grammar has {len(templates)}")
    return [templates[0], *rng.sample(templates[1:], k - 1)]


def canonical_caption(objects: Sequence[ObjectFact], relation: RelationFact | None) -> str:
    """The one caption whose wording the image fixes.

    The varied captions leave two choices that no pixel decides: the phrasing
    and, for a relation, which object is named first. Here both are fixed: the
    grammar's first template, and a relation stated in its canonical form, so
    the object on the left (or above) always comes first.
    """
    if relation is None:
        return caption_templates(objects)[0]
    kinds = [o.kind for o in objects]
    subject, obj = kinds.index(relation.subject), kinds.index(relation.object)
    return caption_templates(objects, (subject, relation.predicate, obj))[0]


def grammar_vocabulary() -> set[str]:
    """Every word a generated caption can contain."""
    words = set(COLOURS) | set(SHAPES) | set(SIZES) | set(PLURALS.values())
    words |= set(NUMBER_WORDS.values())
    words |= {"a", "an", "one", "single", "there", "is", "are", "the", "image", "shows"}
    words |= {"to", "of", "left", "right", "above", "below"}
    return words
