"""`capbatch info`: versions, execution providers, and the model's manifest and
model card (what the model knows)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import __version__
from .cli import app


def info(
    model: Annotated[
        Path | None, typer.Option("--model", help="Model bundle directory (default: built-in).")
    ] = None,
) -> None:
    """Print versions, available execution providers and the model's manifest."""
    import platform

    import numpy
    import PIL

    from .bundle import import_onnxruntime, resolve_bundle_dir
    from .errors import BundleError
    from .manifest import verify_bundle

    ort = import_onnxruntime()
    typer.echo(f"capbatch     {__version__}")
    typer.echo(f"python       {platform.python_version()}")
    typer.echo(f"onnxruntime  {ort.__version__}")
    typer.echo(f"numpy        {numpy.__version__}")
    typer.echo(f"pillow       {PIL.__version__}")
    typer.echo(f"providers    {', '.join(ort.get_available_providers())}")
    try:
        bundle_dir = resolve_bundle_dir(model)
    except BundleError as exc:
        if model is not None:
            raise
        typer.echo(f"model        {exc}")
        return
    manifest = verify_bundle(bundle_dir)
    typer.echo(f"model        {manifest.get('model_id', 'unknown')} ({bundle_dir})")
    typer.echo("verified     sha256 of every file ok")
    typer.echo(f"variant      {manifest.get('variant', 'fp32')}")
    typer.echo(f"format       {manifest.get('format')} v{manifest.get('format_version')}")
    typer.echo(f"preprocess   {_inline(manifest.get('preprocess', {}))}")
    typer.echo(f"max_len      {manifest.get('max_len')}")
    typer.echo(f"vocab        {_inline(manifest.get('vocab', {}))}")
    typer.echo(f"config       {_inline(manifest.get('config', {}))}")
    typer.echo(f"metrics      {_inline(manifest.get('metrics', {})) or '-'}")
    if manifest.get("validation"):
        typer.echo(f"validation   {_inline(manifest['validation'])}")
    if manifest.get("tools"):
        typer.echo(f"tools        {_inline(manifest['tools'])}")
    typer.echo(f"domain check {_domain_line(bundle_dir)}")
    _echo_model_card(manifest.get("model_card") or {})


# A call, not a decorator: capbatch/cli.py says why.
app.command("info")(info)


def _echo_model_card(card: dict) -> None:
    """The card the bundle carries (what the model knows), one field per line."""
    if not card:
        typer.echo("model card   - (none in this bundle: ask whoever trained it what it knows)")
        return
    typer.echo("model card")
    for key, value in card.items():
        typer.echo(f"  {key.replace('_', ' '):<14} {value}")


def _domain_line(bundle_dir: Path) -> str:
    """Whether rows get domain_distance/in_domain, and how the threshold was set."""
    from .domain import DomainCheck

    check = DomainCheck.from_bundle(bundle_dir)
    if check is None:
        return (
            "none: this bundle has no domain statistics, so the rows' domain_distance "
            "and in_domain columns will be empty (add them: capbatch export --domain-images, "
            "or python -m capbatch.export.domain_stats)"
        )
    facts = check.describe()
    return (
        f"{facts['method']}, {facts['pooling']} pooling, rank {facts['rank']}; "
        f"fitted on {facts['fit_images']} images; threshold {facts['threshold']:.2f} "
        f"(quantile {facts['quantile']} of {facts['calibration_images']} calibration images)"
    )


def _inline(mapping: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in mapping.items())
