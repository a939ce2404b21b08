"""Token ids -> caption text, per the bundle manifest's vocab style."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

VOCAB_STYLES = ("word", "wordpiece")
WORDPIECE_PREFIX = "##"


@dataclass(frozen=True)
class Vocab:
    """The bundle's token strings (index = id) and how they join into text."""

    tokens: tuple[str, ...]
    style: str = "word"
    special_ids: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if self.style not in VOCAB_STYLES:
            raise ValueError(f"unknown vocab style {self.style!r}; expected one of {VOCAB_STYLES}")
        if not self.tokens:
            raise ValueError("vocab is empty")

    def __len__(self) -> int:
        return len(self.tokens)

    def words(self, ids: Iterable[int]) -> list[str]:
        """The token strings of ids, special tokens removed (one per attention panel)."""
        return [self.tokens[i] for i in ids if i not in self.special_ids]

    def text(self, ids: Sequence[int]) -> str:
        """ids -> text: `word` joins with spaces; `wordpiece` glues "##" pieces on."""
        words = self.words(ids)
        if self.style == "word":
            return " ".join(words)
        text: list[str] = []
        for piece in words:
            if piece.startswith(WORDPIECE_PREFIX) and text:
                text[-1] += piece[len(WORDPIECE_PREFIX) :]
            elif piece.startswith(WORDPIECE_PREFIX):
                text.append(piece[len(WORDPIECE_PREFIX) :])
            else:
                text.append(piece)
        return " ".join(text)
