"""capbatch.cli.run_app in one process, on a small Typer app: every way a command
can end becomes one line on stderr and the documented exit code (docs/cli.md:
0 ok, 1 some failed, 2 fatal, 3 interrupted). Written from the survivors of the
cli.py mutation run (docs/testing.md); the subprocess tests cover the real
commands, which mutation runs cannot see."""

from __future__ import annotations

import sys

import pytest
import typer

from capbatch import cli
from capbatch.errors import ExitCode, UsageError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
HINT = " (finished rows are kept)"


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug")) -> None:
    """A small app."""


@app.command()
def greet(
    name: str = typer.Argument(..., help="Who to greet."),
    loud: bool = typer.Option(False, "--loud", help="Shout it."),
) -> int:
    """Greet someone."""
    typer.echo(name.upper() if loud else name)
    return 0


@app.command()
def stop(code: int = typer.Option(None, "--code")) -> None:
    """End with typer.Exit."""
    raise typer.Exit(code)


@app.command()
def interrupt() -> None:
    raise KeyboardInterrupt


@app.command()
def abort() -> None:
    raise typer.Abort()


@app.command()
def crash() -> None:
    raise ValueError("boom")


@app.command()
def refuse() -> None:
    raise UsageError("no such thing")


@app.command()
def odd() -> None:
    error = RuntimeError("half a click error")
    error.exit_code = 9  # an exit code but no show(): not a usage error
    raise error


@app.command()
def word() -> str:
    return "done"  # not an exit code


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.run_app(app, "prog", list(argv), HINT)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_command_that_finishes_exits_0_and_a_non_int_result_is_ok(capsys):
    assert _run(capsys, "greet", "ada", "--loud") == (0, "ADA\n", "")
    assert _run(capsys, "word") == (0, "", "")


def test_typer_exit_gives_its_code_and_none_is_0(capsys):
    assert _run(capsys, "stop", "--code", "4")[0] == 4
    assert _run(capsys, "stop")[0] == 0


def test_an_interrupt_is_one_line_with_the_hint_and_exit_3(capsys):
    assert _run(capsys, "interrupt") == (
        ExitCode.INTERRUPTED,
        "",
        "prog: interrupted (finished rows are kept)\n",
    )


def test_an_abort_is_an_interrupt_too(capsys):
    # KeyboardInterrupt inside a command comes back from Typer as 130; an Abort
    # (click's own Ctrl-C) is raised: both end as exit 3 with the same line.
    assert _run(capsys, "abort") == (
        ExitCode.INTERRUPTED,
        "",
        "prog: interrupted (finished rows are kept)\n",
    )


def test_an_unexpected_error_is_one_line_naming_it(capsys):
    code, out, err = _run(capsys, "crash")
    assert (code, out) == (ExitCode.FATAL, "")
    assert err == "prog: internal error: ValueError: boom (rerun with --debug for the traceback)\n"
    code, _, err = _run(capsys, "odd")
    assert code == ExitCode.FATAL
    assert err.startswith("prog: internal error: RuntimeError: half a click error ")


def test_with_debug_the_traceback_comes_too_and_the_code_stays(capsys):
    code, _, err = _run(capsys, "--debug", "crash")
    assert code == ExitCode.FATAL
    assert err.startswith("Traceback (most recent call last):")
    assert err.endswith(
        "prog: internal error: ValueError: boom (rerun with --debug for the traceback)\n"
    )


def test_a_capbatch_error_is_its_message_and_code(capsys):
    assert _run(capsys, "refuse") == (ExitCode.FATAL, "", "prog: error: no such thing\n")


def test_a_bad_option_is_clicks_usage_message_named_after_the_program(capsys):
    code, _, err = _run(capsys, "greet", "ada", "--shout")
    assert code == ExitCode.FATAL
    assert "Usage: prog greet [OPTIONS] {name}" in err
    assert "No such option: --shout" in err


def test_flags_show_no_value_in_help_and_arguments_keep_their_names(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")  # no wrapping in the help's boxes
    code, out, _ = _run(capsys, "greet", "--help")
    assert code == 0
    assert "Usage: prog greet [OPTIONS] {name}" in out
    loud = next(line for line in out.splitlines() if "--loud" in line)
    # "--loud   Shout it.": no "<bool>" or other value shown after a flag
    assert loud.split("--loud", 1)[1].strip(" \u2502").split() == ["Shout", "it."]
    assert "<str>" in next(line for line in out.splitlines() if " name " in line)
    help_line = next(line for line in out.splitlines() if "--help" in line)
    assert help_line.split("--help", 1)[1].strip(" \u2502") == "Show this message and exit."


def test_argv_defaults_to_the_command_line(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prog", "greet", "grace"])
    assert cli.run_app(app, "prog", None) == 0
    assert capsys.readouterr().out == "grace\n"


def test_the_console_script_exits_with_mains_code(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["capbatch", "no-such-command"])
    with pytest.raises(SystemExit) as exited:
        cli.run()
    assert exited.value.code == ExitCode.FATAL
    assert "No such command" in capsys.readouterr().err
