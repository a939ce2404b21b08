"""Typer options generated from option dataclasses (training/config.py).

A field declared with `config.option(default, help, choices=...)` becomes
`--field-name` with that default, help and choice list; a field whose type is
itself a dataclass (TrainOptions.model: ModelConfig) contributes its own
fields, flattened, so `fit --embed-dim 64` fills options.model.embed_dim.
Nothing else lists the options: adding a field to ModelConfig or TrainOptions
adds the flag (tests/training/test_options.py proves it with a new field).
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any

import typer

from capbatch import cli_options
from capbatch.errors import UsageError


def _is_cli(f: dataclasses.Field) -> bool:
    return f.metadata.get("cli", True)


def _option_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """(field, resolved type) of every CLI field, nested dataclasses flattened."""
    hints = typing.get_type_hints(cls)
    found: list[tuple[dataclasses.Field, Any]] = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if not _is_cli(f):
            continue
        found.extend(_option_fields(kind) if dataclasses.is_dataclass(kind) else [(f, kind)])
    names = [f.name for f, _ in found]
    duplicated = {n for n in names if names.count(n) > 1}
    if duplicated:
        raise TypeError(f"{cls.__name__}: option names declared twice: {sorted(duplicated)}")
    return found


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return inspect.Parameter.empty  # a required option


def _is_int_tuple(kind: Any) -> bool:
    return typing.get_origin(kind) is tuple and typing.get_args(kind) == (int, ...)


def _parameter(f: dataclasses.Field, kind: Any) -> inspect.Parameter:
    default = _default(f)
    help_text = f.metadata.get("help") or None
    choices = f.metadata.get("choices")
    if choices is not None:
        # Typer shows an Enum's values as the choice list; values are strings on the
        # command line and converted back to the field's type by build().
        kind = Enum(f"{f.name}_choices", {str(c): str(c) for c in choices}, type=str)
        default = kind(str(default)) if default is not inspect.Parameter.empty else default
    elif _is_int_tuple(kind):
        kind, default = str, ",".join(str(v) for v in default)
    flag = f.metadata.get("flag")  # a flag named otherwise than the field (eval's --ckpt)
    option_info = typer.Option(flag, help=help_text) if flag else typer.Option(help=help_text)
    return inspect.Parameter(
        f.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[kind, option_info],
    )


def option_parameters(cls: type) -> list[inspect.Parameter]:
    """The Typer parameters of every CLI field of cls (required ones first)."""
    params = [_parameter(f, kind) for f, kind in _option_fields(cls)]
    return sorted(params, key=lambda p: p.default is not inspect.Parameter.empty)


def _value(f: dataclasses.Field, kind: Any, given: Any) -> Any:
    if isinstance(given, Enum):
        given = given.value
    choices = f.metadata.get("choices")
    if choices is not None:
        return next(c for c in choices if str(c) == given)
    if _is_int_tuple(kind):
        return _int_tuple(f.name, given)
    return given


def _int_tuple(name: str, text: str) -> tuple[int, ...]:
    if not text.strip():
        return ()
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError as exc:
        flag = "--" + name.replace("_", "-")
        raise UsageError(f"{flag} must be comma-separated integers, got {text!r}") from exc


def build(cls: type, values: dict[str, Any]) -> Any:
    """An instance of cls from parsed option values (nested dataclasses built too);
    its ValueError (a bad combination) becomes a UsageError: one line, exit 2."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if _is_cli(f) and dataclasses.is_dataclass(kind):
            kwargs[f.name] = build(kind, values)
        elif _is_cli(f) and f.name in values:
            kwargs[f.name] = _value(f, kind, values[f.name])
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def command_from(cls: type, run: Callable[[Any], None], doc: str) -> Callable[..., None]:
    """A Typer command whose options are cls's fields; it calls run(cls instance)."""
    return cli_options.command_from(
        cls, run, doc, parameters=option_parameters, builder=build
    )
