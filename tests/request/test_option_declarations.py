"""How an option is declared (capbatch/option_spec.py) and what the command line makes
of it (capbatch/cli_options.py): the exact Typer parameter of each kind of field, and
the parsed values turned back into the request. The generation runs at import time
for `capbatch caption`, so these tests call it themselves (mutation runs see it)."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import typer

from capbatch.cli_options import build, command_from, option_fields, option_parameters
from capbatch.job import Engine, RunOptions
from capbatch.option_spec import ENGINES, INPUTS, MODEL, OUTPUT, RUN, default_of, flag_of, option
from capbatch.output import OutputFormat
from capbatch.providers import Device
from capbatch.request import CaptionRequest
from capbatch.resume_facts import plain, resume_facts


def test_option_stores_every_declaration_in_the_fields_metadata():
    declared = option(
        3, "Help.", panel=MODEL, flags=("--x", "-x"), min=1, choices=Device, cli_type=int,
        engine=("ray", "why"), resume_must_match=True, required=True, argument=False,
    )  # fmt: skip
    assert declared.default == 3
    assert dict(declared.metadata) == {
        "help": "Help.", "panel": MODEL, "flags": ("--x", "-x"), "min": 1, "choices": Device,
        "cli_type": int, "engine": ("ray", "why"), "resume_must_match": True,
        "required": True, "argument": False, "cli": True,
    }  # fmt: skip


def test_option_defaults_say_a_plain_command_line_option():
    declared = option()
    assert dict(declared.metadata) == {
        "help": "", "panel": RUN, "flags": (), "min": None, "choices": None, "cli_type": None,
        "engine": None, "resume_must_match": False, "required": False, "argument": False,
        "cli": True,
    }  # fmt: skip
    assert declared.default is dataclasses.MISSING
    made = option(default_factory=list, cli=False)
    assert made.default_factory is list and made.metadata["cli"] is False
    assert default_of(made) == [] and default_of(option(7)) == 7
    assert default_of(option()) is dataclasses.MISSING


def test_flag_of_is_the_first_spelling_or_the_field_name():
    assert flag_of(option(flags=("--out", "-o"))) == "--out"
    assert flag_of(option(flags=("--recursive/--no-recursive",))) == "--recursive"
    spec = dataclasses.field(default=0, metadata={})
    spec.name = "intra_op_threads"
    assert flag_of(spec) == "--intra-op-threads"


def parameters() -> dict[str, inspect.Parameter]:
    return {p.name: p for p in option_parameters(CaptionRequest)}


def info_of(parameter: inspect.Parameter):
    return parameter.annotation.__metadata__[0]


def spellings(info) -> tuple[str, ...]:
    # Under Annotated, Typer reads the first positional (its `default`) as a spelling.
    given = (info.default, *info.param_decls)
    return tuple(d for d in given if isinstance(d, str) and d.startswith("-"))


def test_the_inputs_are_the_one_argument_and_come_first():
    params = option_parameters(CaptionRequest)
    assert params[0].name == "inputs" and params[0].default is None
    info = info_of(params[0])
    assert isinstance(info, typer.models.ArgumentInfo)
    assert info.help == "Image files, folders, tar/tar.gz/zip archives or webdataset shards."
    assert info.show_default is False
    assert params[0].annotation.__origin__ == list[str] | None
    assert all(isinstance(info_of(p), typer.models.OptionInfo) for p in params[1:])


@pytest.mark.parametrize(
    ("name", "flags", "panel", "default", "minimum"),
    [
        ("out", ("--out", "-o"), OUTPUT, ..., None),
        ("fmt", ("--format",), OUTPUT, None, None),
        ("recursive", ("--recursive/--no-recursive",), INPUTS, True, None),
        ("resume", ("--resume",), RUN, False, None),  # a bool named: a plain flag
        ("allow_empty", ("--allow-empty",), INPUTS, False, None),
        ("glob", (), INPUTS, None, None),
        ("batch_size", (), RUN, 32, 1),
        ("beam_size", (), MODEL, 1, 1),
        ("device", (), MODEL, Device.auto, None),
        ("intra_op_threads", ("--threads",), RUN, None, 1),
        ("address", ("--ray-address",), ENGINES, None, None),
        ("actors", (), ENGINES, 1, 1),
        ("engine", (), ENGINES, Engine.local, None),
        ("quiet", ("--quiet", "-q"), RUN, False, None),
    ],
)
def test_each_kind_of_field_becomes_its_option(name, flags, panel, default, minimum):
    parameter = parameters()[name]
    info = info_of(parameter)
    assert (spellings(info), info.rich_help_panel) == (flags, panel)
    assert parameter.default == default and type(parameter.default) is type(default)
    assert info.min == minimum
    assert info.help


def test_choices_are_the_enum_and_optional_when_the_default_is_none():
    params = parameters()
    assert params["fmt"].annotation.__origin__ == OutputFormat | None
    assert params["device"].annotation.__origin__ is Device
    assert params["model"].annotation.__origin__ == Path | None  # its cli_type


def test_every_option_field_of_the_request_has_help_and_no_name_twice():
    found = option_fields(CaptionRequest)
    assert all(spec.metadata["help"] for spec, _ in found)
    assert "return_attention" not in {spec.name for spec, _ in found}  # cli=False


@dataclasses.dataclass(frozen=True)
class Twice:
    job: RunOptions
    out: str = option("x", "Again.")


def test_a_name_declared_twice_is_refused():
    with pytest.raises(TypeError, match=r"^Twice: option names declared twice: \['out'\]$"):
        option_fields(Twice)


def test_build_maps_parsed_values_back():
    request = build(
        CaptionRequest,
        {"inputs": ["a", "b"], "out": Path("o.csv"), "fmt": OutputFormat.jsonl,
         "device": Device.cpu, "recursive": False, "engine": Engine.local},
    )  # fmt: skip
    assert request.job.inputs == ("a", "b") and request.job.fmt == "jsonl"
    assert request.job.recursive is False and request.captioner.device == "cpu"
    without_inputs = build(CaptionRequest, {"inputs": None, "from_list": "l.txt"})
    assert without_inputs.job.inputs == ()  # the field's default


def test_the_generated_command_carries_its_doc_and_annotations():
    command = command_from(CaptionRequest, lambda request: None, "The doc.")
    assert command.__doc__ == "The doc."
    assert set(command.__annotations__) == {p.name for p in option_parameters(CaptionRequest)}


def test_plain_values_for_the_resume_plan():
    assert plain(Device.cpu) == "cpu" and plain(Path("a/b")) == "a/b"
    assert [plain(v) for v in (None, True, 3, 1.5, "x")] == [None, True, 3, 1.5, "x"]
    with pytest.raises(TypeError, match="^resume_facts takes dataclass instances, not dict$"):
        resume_facts({"beam_size": 1})


def test_an_unknown_engine_is_one_usage_line():
    from capbatch.errors import UsageError

    with pytest.raises(UsageError, match=r"^unknown engine 'spark'; choose local or ray$"):
        CaptionRequest(job=RunOptions(inputs=("x",)), engine="spark")
