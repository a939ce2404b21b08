"""Reading a caption back into scene facts: the parser that inverts the caption
grammar (training/scenes_grammar.py), and the semantic accuracy built on it.

Pure Python (no numpy, no torch), like the grammar.
"""

from __future__ import annotations

from collections.abc import Sequence

from .scenes_grammar import (
    _NUMBERS,
    _SINGULARS,
    COLOURS,
    SHAPES,
    SIZES,
    ObjectFact,
    SceneFacts,
    make_relation,
)

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
