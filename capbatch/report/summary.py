"""The run header: one streaming pass over the rows, counting (memory bounded by
the number of distinct error reasons, itself capped)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..stats import reason_group
from .rows import ReportRow

MAX_REASON_GROUPS = 200
LISTED_ERRORS = 100
# The run summary's grouping, so the page and the run's own summary agree: reasons
# that differ only in their numbers are one group ("image is #x# pixels").
reason_pattern = reason_group


@dataclass
class ReasonGroup:
    pattern: str
    count: int = 0
    example: str = ""  # the first full reason seen, numbers and all


@dataclass
class RunSummary:
    rows: int = 0
    ok: int = 0
    errors: int = 0
    models: Counter = field(default_factory=Counter)
    groups: dict[str, int] = field(default_factory=dict)  # pattern -> index into reasons
    reasons: list[ReasonGroup] = field(default_factory=list)
    listed_errors: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    in_domain: int = 0
    out_of_domain: int = 0
    domain_known: int = 0  # rows that carry in_domain at all
    truncated: int = 0
    truncation_known: int = 0
    repeated: int = 0
    repetition_known: int = 0
    scored: int = 0
    score_min: float | None = None
    score_max: float | None = None
    score_total: float = 0.0

    @property
    def has_domain(self) -> bool:
        return self.domain_known > 0

    @property
    def has_truncation(self) -> bool:
        return self.truncation_known > 0

    @property
    def has_repetition(self) -> bool:
        return self.repetition_known > 0

    @property
    def score_mean(self) -> float | None:
        return self.score_total / self.scored if self.scored else None

    def percent(self, count: int) -> str:
        return f"{100.0 * count / self.rows:.1f} %" if self.rows else "-"

    def group_of(self, reason: str) -> int:
        """The reason's group index, made on first sight (past the cap: one "other" group)."""
        pattern = reason_pattern(reason)
        index = self.groups.get(pattern)
        if index is None:
            if len(self.reasons) >= MAX_REASON_GROUPS:
                pattern = "(other reasons)"
                index = self.groups.get(pattern)
            if index is None:
                index = len(self.reasons)
                self.groups[pattern] = index
                self.reasons.append(ReasonGroup(pattern, example=reason))
        return index

    def add(self, row: ReportRow) -> None:
        self.rows += 1
        if row.model_id:
            self.models[row.model_id] += 1
        if row.ok:
            self.ok += 1
        else:
            self.errors += 1
            self.reasons[self.group_of(row.error or "")].count += 1
            if len(self.listed_errors) < LISTED_ERRORS:
                self.listed_errors.append((row.key, row.error or ""))
        if row.score is not None:
            self.scored += 1
            self.score_total += row.score
            self.score_min = row.score if self.score_min is None else min(self.score_min, row.score)
            self.score_max = row.score if self.score_max is None else max(self.score_max, row.score)
        if row.in_domain is not None:
            self.domain_known += 1
            self.in_domain += row.in_domain
            self.out_of_domain += not row.in_domain
        if row.truncated is not None:
            self.truncation_known += 1
            self.truncated += row.truncated
        if row.repeated is not None:
            self.repetition_known += 1
            self.repeated += row.repeated

    def top_reasons(self) -> list[ReasonGroup]:
        return sorted(self.reasons, key=lambda group: -group.count)
