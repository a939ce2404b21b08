"""What a resumed run must share with the run that wrote its output.

Options are marked where they are declared (`option(..., resume_must_match=True)`,
capbatch.option_spec) rather than listed here, so an option added later that
changes the captions or the inputs is matched by every engine's resume check as
soon as it is marked.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from enum import Enum


def resume_facts(*options: object) -> dict:
    """{field name: plain value} of every marked field of the given dataclasses."""
    facts: dict = {}
    for source in options:
        if not is_dataclass(source):
            raise TypeError(f"resume_facts takes dataclass instances, not {type(source).__name__}")
        for spec in fields(source):
            if spec.metadata.get("resume_must_match"):
                facts[spec.name] = plain(getattr(source, spec.name))
    return facts


def plain(value: object) -> object:
    """Enums as their values, paths as text: what JSON holds and compares."""
    if isinstance(value, Enum):
        return value.value
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
