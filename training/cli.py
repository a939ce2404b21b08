"""`capbatch-train`: fit, eval (and scenes, when the generator is installed).

A thin Typer layer: options become TrainOptions / EvalOptions, the library
does the work, and library errors become one line on stderr and an exit code.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from capbatch.cli import run_app
from capbatch.errors import UsageError

app = typer.Typer(
    name="capbatch-train",
    help="Train and evaluate the Show-Attend-Tell captioner.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Encoder(str, Enum):
    efficientnet_lite0 = "efficientnet_lite0"
    resnet50 = "resnet50"


class Schedule(str, Enum):
    plateau = "plateau"
    cosine = "cosine"
    constant = "constant"


class Selection(str, Enum):
    auto = "auto"
    bleu4 = "bleu4"
    semantic = "semantic"


def _taps(text: str) -> tuple[int, ...]:
    if not text.strip():
        return ()
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError as exc:
        raise UsageError(f"--feature-taps must be comma-separated integers, got {text!r}") from exc


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """Train and evaluate the Show-Attend-Tell captioner."""


@app.command()
def fit(
    data: Annotated[
        Path, typer.Option(help="Dataset directory (CSV, Flickr8k or Karpathy layout).")
    ],
    out: Annotated[Path, typer.Option(help="Run directory: best.pt, last.pt, metrics.jsonl.")],
    encoder: Annotated[Encoder, typer.Option(help="Backbone.")] = Encoder.efficientnet_lite0,
    encoder_weights: Annotated[
        Path | None, typer.Option(help="Local backbone weights (required for resnet50).")
    ] = None,
    epochs: int = 20,
    batch_size: Annotated[int, typer.Option(help="Captions per batch.")] = 32,
    lr: float = 3e-4,
    encoder_lr: Annotated[float, typer.Option(help="LR of fine-tuned encoder stages.")] = 1e-4,
    weight_decay: float = 0.0,
    grad_clip: Annotated[float, typer.Option(help="Max gradient norm (0 = off).")] = 5.0,
    lr_schedule: Schedule = Schedule.plateau,
    attention_weight: Annotated[
        float, typer.Option(help="Doubly-stochastic attention regularisation weight.")
    ] = 1.0,
    dropout: float = 0.5,
    embed_dim: int = 300,
    attention_dim: int = 256,
    decoder_dim: int = 512,
    max_len: Annotated[int, typer.Option(help="Max generated tokens (<end> included).")] = 30,
    feature_taps: Annotated[
        str, typer.Option(help="Earlier backbone stages appended to features, e.g. 1,2,4.")
    ] = "",
    position_features: Annotated[
        bool, typer.Option(help="Append each region's (x, y) to its features.")
    ] = False,
    colour_grid: Annotated[
        int,
        typer.Option(help="Append each region's k x k average colours (0 = off), e.g. 4."),
    ] = 0,
    fine_tune_stages: Annotated[
        int, typer.Option(help="Unfreeze the last N backbone stages (disables the cache).")
    ] = 0,
    layout_init: Annotated[
        int,
        typer.Option(
            help="Initial LSTM state also from each region projected to N values (0 = off)."
        ),
    ] = 0,
    init_from: Annotated[
        Path | None,
        typer.Option(
            help="Start from this checkpoint's weights, tokenizer and architecture; only "
            "--fine-tune-stages and --layout-init may change it (e.g. fine-tune, then "
            "train the decoder on cached features)."
        ),
    ] = None,
    tokenizer: Annotated[
        Path | None, typer.Option(help="Local HF tokenizer directory (default: train one).")
    ] = None,
    min_word_freq: int = 1,
    patience: Annotated[int, typer.Option(help="Early stopping patience in epochs (0 = off).")] = 5,
    select_on: Annotated[
        Selection,
        typer.Option(
            help="Validation metric for best.pt, LR plateaus and early stopping: semantic "
            "accuracy (generated scenes) or BLEU-4; auto picks semantic when the data has "
            "scenes.jsonl."
        ),
    ] = Selection.auto,
    val_images: Annotated[int, typer.Option(help="Validation images per epoch (0 = all).")] = 500,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Feature cache root (default OUT/features).")
    ] = None,
    seed: int = 0,
    threads: Annotated[int, typer.Option(help="torch CPU threads (0 = all usable cores).")] = 0,
    workers: Annotated[int, typer.Option(help="Image decoding threads.")] = 2,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    amp: Annotated[bool, typer.Option(help="Mixed precision on CUDA.")] = True,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt.")] = False,
    progress: bool = True,
) -> None:
    """Train a captioner; writes OUT/best.pt, OUT/last.pt and OUT/metrics.jsonl."""
    from .train import TrainOptions
    from .train import fit as run_fit

    options = _options(
        TrainOptions,
        data=data,
        out=out,
        encoder=encoder.value,
        encoder_weights=encoder_weights,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        encoder_lr=encoder_lr,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        lr_schedule=lr_schedule.value,
        attention_weight=attention_weight,
        dropout=dropout,
        embed_dim=embed_dim,
        attention_dim=attention_dim,
        decoder_dim=decoder_dim,
        max_len=max_len,
        feature_taps=_taps(feature_taps),
        position_features=position_features,
        colour_grid=colour_grid,
        fine_tune_stages=fine_tune_stages,
        layout_init=layout_init,
        init_from=init_from,
        tokenizer=tokenizer,
        min_word_freq=min_word_freq,
        patience=patience,
        select_on=select_on.value,
        val_images=val_images,
        cache_dir=cache_dir,
        seed=seed,
        threads=threads,
        workers=workers,
        device=device,
        amp=amp,
        resume=resume,
        progress=progress,
    )
    summary = run_fit(options)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary, from rank 0
        typer.echo(json.dumps(summary))


@app.command("eval")
def eval_(
    ckpt: Annotated[Path, typer.Option(help="Checkpoint (best.pt).")],
    data: Annotated[Path, typer.Option(help="Dataset directory.")],
    split: str = "test",
    beam: Annotated[int, typer.Option(help="1 = greedy, K > 1 = beam search.")] = 1,
    out: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Feature cache root (default: next to the checkpoint).")
    ] = None,
    limit: Annotated[int, typer.Option(help="Only the first N images (0 = all).")] = 0,
    meteor: Annotated[bool, typer.Option(help="METEOR (needs Java).")] = True,
    device: str = "cpu",
) -> None:
    """Caption a split and report BLEU-1..4, METEOR, ROUGE-L, CIDEr (+ semantic accuracy)."""
    from .evaluate import EvalOptions, evaluate

    options = _options(
        EvalOptions,
        checkpoint=ckpt,
        data=data,
        split=split,
        beam=beam,
        out=out,
        cache_dir=cache_dir,
        limit=limit,
        meteor=meteor,
        device=device,
    )
    report = evaluate(options)
    summary = {
        split: {k: v for k, v in result.items() if k != "examples"}
        for split, result in report["splits"].items()
    }
    typer.echo(json.dumps(summary, indent=2))


def _options(cls, **kwargs):
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _register_scenes() -> None:
    """`capbatch-train scenes` when the generated-scenes module is present."""
    try:
        from . import scenes
    except ImportError:
        return
    if not hasattr(scenes, "main"):
        return

    @app.command(
        "scenes",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
    )
    def scenes_command(ctx: typer.Context) -> None:
        """Generate a scenes dataset (same options as python -m capbatch.training.scenes)."""
        code = scenes.main(list(ctx.args))
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
