"""`capbatch-train`: fit, eval (and scenes, when the generator is installed).

A thin Typer layer: options become TrainOptions / EvalOptions (fit's options are
generated from TrainOptions' fields, training/options_cli.py), the library
does the work, and library errors become one line on stderr and an exit code.
"""

from __future__ import annotations

import json
import os
import sys

import typer

from capbatch.cli import run_app

from .config import EvalOptions, TrainOptions
from .options_cli import command_from

app = typer.Typer(
    name="capbatch-train",
    help="Train and evaluate the Show-Attend-Tell captioner.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """Train and evaluate the Show-Attend-Tell captioner."""


def _fit(options: TrainOptions) -> None:
    from .train import fit as run_fit

    summary = run_fit(options)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary, from rank 0
        typer.echo(json.dumps(summary))


# Every option of `fit` is a field of TrainOptions or its ModelConfig (training/config.py).
app.command("fit")(
    command_from(
        TrainOptions,
        _fit,
        "Train a captioner; writes OUT/best.pt, OUT/last.pt and OUT/metrics.jsonl.",
    )
)


def _eval(options: EvalOptions) -> None:
    from .evaluate import evaluate

    report = evaluate(options)
    summary = {
        split: {k: v for k, v in result.items() if k != "examples"}
        for split, result in report["splits"].items()
    }
    typer.echo(json.dumps(summary, indent=2))


app.command("eval")(
    command_from(
        EvalOptions,
        _eval,
        "Caption a split and report BLEU-1..4, METEOR, ROUGE-L, CIDEr (+ semantic accuracy).",
    )
)


def _register_scenes() -> None:
    """`capbatch-train scenes` when the generated-scenes module is present."""
    try:
        from . import scenes_cli
    except ImportError:
        return

    @app.command(
        "scenes",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
    )
    def scenes_command(ctx: typer.Context) -> None:
        """Generate a scenes dataset (same options as python -m capbatch.training.scenes)."""
        code = scenes_cli.main(list(ctx.args))
        if code:
            raise typer.Exit(code)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning CapbatchError into one line + exit code."""
    # Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. On a
    # 2-core machine shared with other work, spinning threads made 2-thread training
    # ~4x slower than 1 thread (measured); sleeping ones cost little when idle.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _register_scenes()
    return run_app(app, "capbatch-train", argv, interrupted_hint=" (resume with --resume)")


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
