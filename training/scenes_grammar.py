"""The generated scenes' vocabulary, facts, caption grammar and its parser.

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


# --------------------------------------------------------------------------- parser


class _Tokens:
    """A cursor over caption words; every `take` either consumes or leaves it unchanged."""

    def __init__(self, words: list[str]) -> None:
        self.words = words
        self.at = 0

    def peek(self, offset: int = 0) -> str | None:
        index = self.at + offset
        return self.words[index] if index < len(self.words) else None

    def take(self, *expected: str) -> bool:
        if tuple(self.words[self.at : self.at + len(expected)]) == expected:
            self.at += len(expected)
            return True
        return False

    def take_from(self, choices) -> str | None:
        word = self.peek()
        if word is not None and word in choices:
            self.at += 1
            return word
        return None

    @property
    def done(self) -> bool:
        return self.at == len(self.words)


def _words(text: str) -> list[str]:
    cleaned = text.lower().replace(",", " ").replace(".", " ")
    return cleaned.split()


def _parse_determiner(tokens: _Tokens) -> bool:
    # "a", "an", "one", "a single"; the article's a/an agreement is not a fact, so both pass.
    if tokens.take("a", "single") or tokens.take("an", "single"):
        return True
    return tokens.take_from(("a", "an", "one")) is not None


def _parse_singular(tokens: _Tokens) -> ObjectFact | None:
    if not _parse_determiner(tokens):
        return None
    size = tokens.take_from(SIZES)
    colour = tokens.take_from(COLOURS)
    shape = tokens.take_from(SHAPES)
    if colour is None or shape is None:
        return None
    return ObjectFact(colour, shape, size)


def _parse_predicate(tokens: _Tokens) -> str | None:
    tokens.take("is")
    for side in ("left", "right"):
        if tokens.take("to", "the", side, "of") or tokens.take(side, "of"):
            return f"{side} of"
    return tokens.take_from(("above", "below"))


def _parse_plural(tokens: _Tokens) -> SceneFacts | None:
    number = tokens.take_from(_NUMBERS)
    if number is None:
        return None
    size = tokens.take_from(SIZES)
    colour = tokens.take_from(COLOURS)
    plural = tokens.take_from(_SINGULARS)
    if colour is None or plural is None or not tokens.done:
        return None
    shape = _SINGULARS[plural]
    return SceneFacts(tuple(ObjectFact(colour, shape, size) for _ in range(_NUMBERS[number])))


def _parse_singular_scene(tokens: _Tokens) -> SceneFacts | None:
    first = _parse_singular(tokens)
    if first is None:
        return None
    if tokens.done:
        return SceneFacts((first,))
    predicate = _parse_predicate(tokens)
    if predicate is None:
        return None
    second = _parse_singular(tokens)
    if second is None or not tokens.done or first.kind == second.kind:
        return None
    return SceneFacts((first, second), make_relation(first.kind, predicate, second.kind))


def parse_caption(text: str) -> SceneFacts | None:
    """A caption in the scene grammar -> the facts it states; None if it is not in the grammar.

    Accepted: [there is|there are|the image shows] followed by one object ("a large
    red circle", "a single red circle", "one red circle"), a count ("two red
    circles", "three small blue stars"), or two different objects joined by a
    predicate ("a red circle (is) (to the) left of a blue square", "... above ...").
    "there is" needs a singular phrase and "there are" a plural one.
    """
    tokens = _Tokens(_words(text))
    number = None  # None: either; "singular" / "plural" after "there is" / "there are"
    if tokens.take("there", "is"):
        number = "singular"
    elif tokens.take("there", "are"):
        number = "plural"
    else:
        tokens.take("the", "image", "shows")
    start = tokens.at
    if number != "singular":
        facts = _parse_plural(tokens)
        if facts is not None:
            return facts
        tokens.at = start
    if number != "plural":
        return _parse_singular_scene(tokens)
    return None


# --------------------------------------------------------------------------- accuracy


def _sizes_consistent(stated: Sequence[ObjectFact], truth: Sequence[ObjectFact]) -> bool:
    """Each stated size belongs to a distinct true object of the same colour and shape."""
    remaining = list(truth)
    # Sized objects first: an unsized one must not use up the only object that fits a sized one.
    for o in sorted(stated, key=lambda o: o.size is None):
        match = next(
            (
                i
                for i, t in enumerate(remaining)
                if t.kind == o.kind and (o.size is None or t.size == o.size)
            ),
            None,
        )
        if match is None:
            return False
        remaining.pop(match)
    return True


def explain_mismatch(caption: str, truth: SceneFacts) -> str | None:
    """None when the caption states exactly the true facts, else the first kind of error.

    Errors, in the order checked: "unparsable", "count", "colour", "shape",
    "object" (right colours and shapes, wrongly paired), "relation", "size".
    """
    stated = parse_caption(caption)
    if stated is None:
        return "unparsable"
    if stated.count != truth.count:
        return "count"
    if stated.kinds != truth.kinds:
        if sorted(c for c, _ in stated.kinds) != sorted(c for c, _ in truth.kinds):
            return "colour"
        if sorted(s for _, s in stated.kinds) != sorted(s for _, s in truth.kinds):
            return "shape"
        return "object"
    if stated.relation != truth.relation:
        return "relation"
    if not _sizes_consistent(stated.objects, truth.objects):
        return "size"
    return None


def facts_match(caption: str, truth: SceneFacts) -> bool:
    """The caption states exactly the true facts.

    Same multiset of (colour, shape) objects (hence the same count), the same
    relation up to its mirrored phrasing ("A left of B" == "B right of A"), and
    every size it states is true. Sizes may be left out.
    """
    return explain_mismatch(caption, truth) is None


def semantic_accuracy(captions: Sequence[str], facts: Sequence[SceneFacts]) -> float:
    """Fraction of captions that state exactly their scene's facts."""
    if len(captions) != len(facts):
        raise ValueError(f"{len(captions)} captions for {len(facts)} scenes")
    if not captions:
        raise ValueError("semantic accuracy of no captions is undefined")
    return sum(facts_match(c, f) for c, f in zip(captions, facts)) / len(captions)


def mismatch_counts(captions: Sequence[str], facts: Sequence[SceneFacts]) -> dict[str, int]:
    """How many captions fail for each reason (see explain_mismatch); "ok" counts matches."""
    if len(captions) != len(facts):
        raise ValueError(f"{len(captions)} captions for {len(facts)} scenes")
    counts: dict[str, int] = {}
    for caption, truth in zip(captions, facts):
        reason = explain_mismatch(caption, truth) or "ok"
        counts[reason] = counts.get(reason, 0) + 1
    return counts
