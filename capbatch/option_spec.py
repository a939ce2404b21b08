"""A caption option, declared once: a dataclass field whose metadata says how the
command line spells it.

    beam_size: int = option(1, "1 = greedy; K > 1 = beam search.", panel=MODEL, min=1)

`capbatch caption`'s options are generated from these fields
(capbatch.cli_options), the Python API fills the same dataclasses, and what a
resume must match (RESUME_MUST_MATCH) and which engine an option belongs to are
read from the same metadata. Standard library only: the runtime's dataclasses
import it without loading Typer.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, field
from typing import Any

# Help panels of `capbatch caption --help`, in the order they are shown.
INPUTS = "Inputs"
MODEL = "Model and decoding"
OUTPUT = "Output"
RUN = "Run control"
ENGINES = "Engines"


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    panel: str = RUN,
    flags: tuple[str, ...] = (),
    min: int | None = None,
    choices: type | None = None,
    cli_type: Any = None,
    engine: tuple[str, str] | None = None,
    resume_must_match: bool = False,
    required: bool = False,
    argument: bool = False,
    cli: bool = True,
    default_factory: Any = MISSING,
) -> Any:
    """A dataclass field that is also a `capbatch caption` option.

    flags: how the command line spells it (default `--field-name`); choices: a str
    Enum whose values the field takes (the field holds the value, the CLI shows the
    choices); cli_type: the type the CLI parses when it differs from the field's;
    engine: (engine name, why) for an option only that engine takes; required: the
    CLI requires it although the API has a default; argument: a positional
    argument; cli=False: set by code, not the command line.
    """
    metadata = {
        "help": help, "panel": panel, "flags": flags, "min": min, "choices": choices,
        "cli_type": cli_type, "engine": engine, "resume_must_match": resume_must_match,
        "required": required, "argument": argument, "cli": cli,
    }  # fmt: skip
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def flag_of(spec: Field) -> str:
    """The option's first spelling on the command line ("--threads")."""
    flags = spec.metadata.get("flags") or ()
    return flags[0].split("/")[0] if flags else "--" + spec.name.replace("_", "-")


def default_of(spec: Field) -> Any:
    if spec.default is not MISSING:
        return spec.default
    if spec.default_factory is not MISSING:
        return spec.default_factory()
    return MISSING
