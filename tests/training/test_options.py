"""Training options are declared once (training/config.py): fit's flags are generated
from TrainOptions and its nested ModelConfig, so a new field is one edit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import typer
from capbatch.training.config import ModelConfig, TrainOptions, option
from capbatch.training.options_cli import command_from
from typer.testing import CliRunner

from capbatch.errors import UsageError


def _app(cls):
    """A one-command app that captures the options object the command builds."""
    seen = []
    app = typer.Typer(add_completion=False)
    app.command("fit")(command_from(cls, seen.append, "test"))

    @app.callback()
    def _root() -> None:
        pass

    return app, seen


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _flags(app) -> set[str]:
    command = typer.main.get_command(app).commands["fit"]
    return {flag for param in command.params for flag in param.opts}


def test_every_cli_field_has_a_flag_and_lands_in_its_place(tmp_path):
    app, seen = _app(TrainOptions)
    flags = _flags(app)
    for cls in (TrainOptions, ModelConfig):
        for f in dataclasses.fields(cls):
            if f.metadata.get("cli", True) and f.name != "model":
                assert _flag(f.name) in flags, f.name
    hidden = ("vocab_size", "pad_id", "mean", "preprocess", "size", "pretrained", "extra")
    assert not any(_flag(name) in flags for name in hidden)

    args = ["fit", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--embed-dim", "64"]
    more = ["--feature-taps", "1,2", "--colour-grid", "4", "--lr-schedule", "cosine", "--no-amp"]
    result = CliRunner().invoke(app, [*args, *more])
    assert result.exit_code == 0, result.output
    (options,) = seen
    assert options.model == ModelConfig(embed_dim=64, feature_taps=(1, 2), colour_grid=4)
    assert options.lr_schedule == "cosine" and options.amp is False
    assert options.data == Path(tmp_path) and options.epochs == TrainOptions.epochs


def test_a_new_field_needs_one_edit(tmp_path):
    """Add a field (with its default, help and choices) to ModelConfig: fit gets the flag,
    its choices and its default, and the value reaches the config; nothing else changes."""
    wider = dataclasses.make_dataclass(
        "WiderConfig",
        [("glimpses", int, option(1, "Attention glimpses per step.", choices=(1, 2, 4)))],
        bases=(ModelConfig,),
        frozen=True,
    )
    options_cls = dataclasses.make_dataclass(
        "WiderOptions",
        [("model", wider, option(default_factory=wider))],
        bases=(TrainOptions,),
        frozen=True,
    )
    app, seen = _app(options_cls)
    assert "--glimpses" in _flags(app)
    help_text = CliRunner().invoke(app, ["fit", "--help"], env={"COLUMNS": "200"}).output
    assert "Attention glimpses per step." in help_text and "1|2|4" in help_text
    base = ["fit", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    assert CliRunner().invoke(app, [*base, "--glimpses", "2"]).exit_code == 0
    assert CliRunner().invoke(app, base).exit_code == 0
    assert [o.model.glimpses for o in seen] == [2, 1]
    assert CliRunner().invoke(app, [*base, "--glimpses", "3"]).exit_code == 2  # not a choice


def test_choices_are_checked_by_the_dataclass_too():
    with pytest.raises(ValueError, match="colour_grid must be one of 0, 1, 2, 4, 8"):
        ModelConfig(colour_grid=3)
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        TrainOptions(data=Path("d"), out=Path("o"), lr_schedule="linear")


def test_bad_values_are_one_line_exit_2(tmp_path, capsys):
    from capbatch.training.cli import main

    base = ["fit", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main([*base, "--feature-taps", "1,x"]) == 2
    err = capsys.readouterr().err
    assert "--feature-taps must be comma-separated integers" in err and err.count("\n") == 1
    assert main([*base, "--dropout", "1.5"]) == 2
    assert "dropout must be in [0, 1)" in capsys.readouterr().err


def test_eval_options_are_declared_once_too(tmp_path):
    from capbatch.training.config import EvalOptions

    app, seen = _app(EvalOptions)
    assert {"--ckpt", "--data", "--beam", "--device", "--group-by"} <= _flags(app)
    assert "--checkpoint" not in _flags(app) and "--batch-size" not in _flags(app)
    args = ["fit", "--ckpt", str(tmp_path), "--data", str(tmp_path), "--beam", "3"]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert seen == [EvalOptions(checkpoint=tmp_path, data=tmp_path, beam=3)]
    assert seen[0].device == "auto"
    bad = CliRunner().invoke(app, [*args[:5], "--beam", "0"])
    assert isinstance(bad.exception, UsageError) and "beam must be >= 1" in str(bad.exception)
