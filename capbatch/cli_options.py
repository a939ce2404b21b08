"""Typer parameters generated from option dataclasses (capbatch.option_spec).

A field declared with `option(default, help, panel=..., flags=..., min=...)`
becomes that command-line option, in that help panel; a field whose type is
itself a dataclass (CaptionRequest.job: RunOptions) contributes its own fields,
flattened. `build(cls, values)` turns the parsed values back into the nested
dataclasses. Nothing else lists the options: a new field is a new flag.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any

import typer

from .errors import UsageError
from .option_spec import default_of


def option_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """(field, resolved type) of every command-line field, nested dataclasses flattened."""
    hints = typing.get_type_hints(cls)
    found: list[tuple[dataclasses.Field, Any]] = []
    for spec in dataclasses.fields(cls):
        kind = hints[spec.name]
        if dataclasses.is_dataclass(kind):
            found.extend(option_fields(kind))
        elif spec.metadata.get("cli"):
            found.append((spec, kind))
    names = [spec.name for spec, _ in found]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise TypeError(f"{cls.__name__}: option names declared twice: {twice}")
    return found


def _parameter(spec: dataclasses.Field, kind: Any) -> inspect.Parameter:
    meta = spec.metadata
    default = default_of(spec)
    kind = meta.get("cli_type") or kind
    choices = meta.get("choices")
    if choices is not None:
        kind = choices | None if default is None else choices
        default = default if default is None else choices(default)
    if meta.get("argument"):
        info = typer.Argument(help=meta["help"], show_default=False)
        default = None
    else:
        if meta.get("required"):
            default = ...
        flags = meta.get("flags") or ()
        if kind is bool and not flags:
            # Named, a bool is a plain flag (--resume); unnamed, Typer would add --no-resume.
            flags = ("--" + spec.name.replace("_", "-"),)
        info = typer.Option(
            *flags, help=meta["help"], rich_help_panel=meta["panel"], min=meta["min"]
        )
    return inspect.Parameter(
        spec.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, info]
    )


def option_parameters(cls: type) -> list[inspect.Parameter]:
    """The Typer parameters of every command-line field of cls, arguments first."""
    made = [(spec.metadata["argument"], _parameter(spec, kind)) for spec, kind in option_fields(cls)]
    return [p for argument, p in made if argument] + [p for argument, p in made if not argument]


def _value(given: Any) -> Any:
    if isinstance(given, Enum):
        return given.value
    if isinstance(given, list):
        return tuple(given)
    return given


def build(cls: type, values: dict[str, Any]) -> Any:
    """An instance of cls from parsed values (nested dataclasses built too); a value
    left out (or None for an argument) keeps the field's default. ValueError from a
    dataclass's own checks becomes a UsageError: one line, exit 2."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):
        kind = hints[spec.name]
        if dataclasses.is_dataclass(kind):
            kwargs[spec.name] = build(kind, values)
        elif spec.metadata.get("cli") and spec.name in values:
            value = _value(values[spec.name])
            if value is None and spec.metadata.get("argument"):
                continue
            kwargs[spec.name] = value
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def command_from(
    cls: type,
    run: Callable[[Any], None],
    doc: str,
    *,
    parameters: Callable[[type], list[inspect.Parameter]] | None = None,
    builder: Callable[[type, dict[str, Any]], Any] | None = None,
) -> Callable[..., None]:
    """A Typer command whose options are cls's fields; it calls run(cls instance).
    `parameters` and `builder` replace option_parameters and build (capbatch-train
    declares its options with its own metadata: training/options_cli.py)."""
    parameters = parameters or option_parameters
    builder = builder or build

    def command(**values: Any) -> None:
        run(builder(cls, values))

    params = parameters(cls)
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = doc
    return command
