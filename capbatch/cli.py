"""The `capbatch` command: a thin Typer layer over the library.

Commands live in their own modules and register here; this module maps
library errors to one line on stderr and an exit code. A command module
registers its function with a call after the definition
(`app.command("caption", ...)(caption)`), not with a decorator: mutation testing
(mutmut, docs/testing.md) skips decorated functions, and a command's body is
where its options are wired.
"""

from __future__ import annotations

import sys
import traceback

import typer

from .errors import CapbatchError, ExitCode

# What Typer's main returns for a KeyboardInterrupt; no capbatch command exits 130 itself.
TYPER_INTERRUPTED = 130

app = typer.Typer(
    name="capbatch",
    help="Batch image captioning with an exported Show-Attend-Tell model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """Batch image captioning with an exported Show-Attend-Tell model."""


def _register_commands() -> None:
    # Imported here so each command module can import `app` without a cycle.
    from . import caption_cli, export_cli, info_cli, report_cli  # noqa: F401


def flags_as_flags(command) -> None:
    """Show boolean flags as flags in --help: this Typer prints a "<bool>" type beside
    every flag (even --help), which reads as if "--quiet true" were the spelling.
    Parsing is unchanged: a flag takes no value."""
    for param in command.params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    make_help = command.get_help_option

    def help_option(ctx):
        option = make_help(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = help_option
    for sub in getattr(command, "commands", {}).values():
        flags_as_flags(sub)


def run_app(
    typer_app: typer.Typer, prog: str, argv: list[str] | None, interrupted_hint: str = ""
) -> int:
    """Run a Typer app, turning errors into one line on stderr and an exit code.

    Shared by `capbatch` and `capbatch-train`: CapbatchError -> its message and
    code; bad options -> click's usage message, FATAL; anything unexpected -> one
    line naming it. --debug adds the traceback on stderr and changes no exit code
    (a scheduler reads 1 as "some images failed").
    """
    args = list(argv if argv is not None else sys.argv[1:])
    debug = "--debug" in args
    try:
        # Non-standalone click returns a command's typer.Exit code instead of raising it.
        command = typer.main.get_command(typer_app)
        flags_as_flags(command)
        result = command.main(args=args, prog_name=prog, standalone_mode=False)
    except CapbatchError as exc:
        if debug:
            traceback.print_exc()
        typer.echo(f"{prog}: error: {exc}", err=True)
        return int(exc.exit_code)
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo(f"{prog}: interrupted{interrupted_hint}", err=True)
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:
        # Typer's (vendored) click reports bad options as exceptions with show().
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            return int(ExitCode.FATAL)
        if debug:
            traceback.print_exc()
        typer.echo(
            f"{prog}: internal error: {type(exc).__name__}: {exc} "
            "(rerun with --debug for the traceback)",
            err=True,
        )
        return int(ExitCode.FATAL)
    if result == TYPER_INTERRUPTED:
        # Typer catches a KeyboardInterrupt (a second Ctrl-C/SIGTERM aborting the run)
        # and returns 130 in non-standalone mode; ours is exit 3, with its line.
        typer.echo(f"{prog}: interrupted{interrupted_hint}", err=True)
        return int(ExitCode.INTERRUPTED)
    return result if isinstance(result, int) else int(ExitCode.OK)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `capbatch`."""
    _register_commands()
    return run_app(app, "capbatch", argv)


def run() -> None:
    sys.exit(main())
