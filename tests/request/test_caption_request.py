"""One caption request (capbatch/request.py): every option declared once, the flags of
`capbatch caption` generated from the declarations (capbatch/cli_options.py), the
library entry capbatch.caption() (capbatch/api.py) and the engine seam
(capbatch/engines/__init__.py)."""

# ruff: noqa: F811 (the fixtures bundle and photos are imported by name, then requested)

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import capbatch
from capbatch.captioner import CaptionerArgs
from capbatch.cli import app
from capbatch.cli_options import build, command_from, option_fields
from capbatch.engines import ENGINES
from capbatch.errors import UsageError
from capbatch.job import Engine, RunOptions
from capbatch.option_spec import RUN, flag_of, option
from capbatch.request import CaptionRequest
from tests.cli.test_caption import bundle, photos, read_csv, run_cli  # noqa: F401 (fixtures)


def caption_help() -> str:
    from capbatch.cli import _register_commands

    _register_commands()
    result = CliRunner().invoke(app, ["caption", "--help"], terminal_width=200)
    assert result.exit_code == 0
    return result.output


def test_every_declared_option_is_a_flag_of_capbatch_caption():
    shown = caption_help()
    for spec, _ in option_fields(CaptionRequest):
        if spec.metadata.get("argument"):
            continue
        assert re.search(rf"(^|\s){re.escape(flag_of(spec))}\b", shown, re.M), flag_of(spec)
    assert len(option_fields(CaptionRequest)) == 34  # the inputs and 33 options, as before


@dataclasses.dataclass(frozen=True)
class Extra:
    temperature: float = option(1.0, "Sampling temperature.", panel=RUN)


@dataclasses.dataclass(frozen=True)
class RequestWithExtra:
    job: RunOptions
    extra: Extra = dataclasses.field(default_factory=Extra)


def test_a_new_field_is_a_new_flag_with_its_default_help_and_panel():
    seen = []
    command = command_from(RequestWithExtra, seen.append, "doc")
    params = {p.name: p for p in __import__("inspect").signature(command).parameters.values()}
    assert params["temperature"].default == 1.0
    info = params["temperature"].annotation.__metadata__[0]
    assert (info.help, info.rich_help_panel) == ("Sampling temperature.", RUN)
    command(inputs=["a.jpg"], out=Path("o.csv"), temperature=0.5)
    assert seen[0].extra.temperature == 0.5 and seen[0].job.inputs == ("a.jpg",)


def test_build_turns_a_dataclass_refusal_into_one_usage_line():
    with pytest.raises(UsageError, match="^--resume and --overwrite exclude each other$"):
        build(CaptionRequest, {"inputs": ["x"], "out": Path("o.csv"), "resume": True,
                               "overwrite": True})  # fmt: skip


def test_the_request_refuses_options_of_the_other_engine():
    job = RunOptions(inputs=("x",), workers=2)
    with pytest.raises(UsageError, match=r"^--workers applies to the local engine only"):
        CaptionRequest(job=job, engine=Engine.ray)
    with pytest.raises(UsageError, match=r"^--threads applies to the local engine only"):
        CaptionRequest(
            job=RunOptions(inputs=("x",)), captioner=CaptionerArgs(intra_op_threads=2),
            engine="ray",
        )  # fmt: skip
    with pytest.raises(UsageError, match=r"^--format txt applies to the local engine only"):
        CaptionRequest(job=RunOptions(inputs=("x",), fmt="txt"), engine="ray")


def test_an_attention_dir_asks_the_captioner_for_attention():
    request = CaptionRequest(job=RunOptions(inputs=("x",), attention_dir=Path("maps")))
    assert request.captioner.return_attention is True
    assert CaptionRequest(job=RunOptions(inputs=("x",))).captioner.return_attention is False


def test_every_engine_choice_has_an_engine():
    assert sorted(ENGINES) == sorted(engine.value for engine in Engine)


def test_no_module_outside_engines_asks_which_engine_runs():
    root = Path(capbatch.__file__).parent
    for path in root.rglob("*.py"):
        if "engines" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"is Engine\.(ray|local)|== Engine\.(ray|local)\b(?!\.value)", text), path


def test_the_library_call_writes_what_the_cli_writes(bundle, photos, tmp_path, capsys):
    api_out, cli_out = tmp_path / "api.csv", tmp_path / "cli.csv"
    request = CaptionRequest(
        job=RunOptions(inputs=(str(photos),), out=api_out), captioner=CaptionerArgs(model=bundle)
    )
    result = capbatch.caption(request)
    assert (result.summary.ok, result.summary.errors) == (3, 1)
    assert result.summary.encoder == "onnxruntime-f32"
    run_cli(capsys, "caption", photos, "--out", cli_out, "--model", bundle, "-q")
    assert read_csv(api_out) == read_csv(cli_out)


def test_the_library_dry_run_writes_nothing(bundle, photos, tmp_path):
    request = CaptionRequest(
        job=RunOptions(inputs=(str(photos),), out=tmp_path / "c.csv"),
        captioner=CaptionerArgs(model=bundle), dry_run=True,
    )  # fmt: skip
    result = capbatch.caption(request)
    assert (result.plan.inputs, result.plan.already_done, result.fmt) == (4, 0, "csv")
    assert result.encoder == "onnxruntime-f32"
    assert list(tmp_path.iterdir()) == [photos]


def test_the_models_notice_goes_to_the_note_hook_and_warnings_to_warn(
    bundle, tmp_path, monkeypatch
):
    from capbatch import api
    from capbatch.captioner import Captioner
    from capbatch.job import RunHooks

    samples = Path(capbatch.__file__).parents[1] / "samples"
    notes, warned = [], []
    hooks = RunHooks(note=notes.append, warn=warned.append)
    request = CaptionRequest(
        job=RunOptions(inputs=(str(samples),), out=tmp_path / "c.csv"), dry_run=True
    )
    seen = {}
    real = Captioner.from_args.__func__

    def from_args(cls, args, warn=None):
        seen["warn"] = warn
        return real(cls, args, warn=warn)

    monkeypatch.setattr(Captioner, "from_args", classmethod(from_args))
    api.caption(request, hooks)
    assert len(notes) == 1 and notes[0].startswith("the built-in model knows generated scenes")
    assert seen["warn"] is hooks.warn
    notes.clear()
    own = dataclasses.replace(request, captioner=CaptionerArgs(model=bundle))
    api.caption(own, hooks)
    assert notes == []  # the fake bundle's card has no notice


@pytest.mark.parametrize("handle", [False, True])
def test_signals_are_handled_only_when_the_hooks_ask(bundle, photos, tmp_path, monkeypatch, handle):
    from capbatch import api
    from capbatch.job import RunHooks

    guarded = []
    real = api.stop_on_signals

    def recording(stop):
        guarded.append(stop)
        return real(stop)

    monkeypatch.setattr(api, "stop_on_signals", recording)
    hooks = RunHooks(handle_signals=handle)
    request = CaptionRequest(
        job=RunOptions(inputs=(str(photos),), out=tmp_path / "c.csv"),
        captioner=CaptionerArgs(model=bundle),
    )
    api.caption(request, hooks)
    assert guarded == ([hooks.stop] if handle else [])
