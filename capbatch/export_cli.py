"""`capbatch export`: checkpoint -> validated model bundle (needs the export extra).

Importable without torch: the exporter is imported inside the command, and a
missing torch/onnx becomes one line naming the extra to install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .cli import app
from .errors import MissingDependencyError
from .export.specs import DEFAULT_OPSET, MIN_OPSET, VALIDATION_BATCHES  # torch-free

EXPORT_EXAMPLES = f"""\
Examples:

  capbatch export --ckpt runs/scenes/best.pt --out models/scenes

  capbatch export --ckpt best.pt --out models/scenes --int8 --fp16
      (writes models/scenes, models/scenes-fp16 and models/scenes-int8)

  capbatch export --ckpt best.pt --out models/scenes --validate-images val/

  capbatch export --ckpt best.pt --out models/scenes --no-validate --overwrite

Validation (default on) compares ONNX Runtime with PyTorch at batch sizes
{", ".join(map(str, VALIDATION_BATCHES))} and requires identical greedy captions. Exit code 2 on any error.
"""

EXTRA_HINT = (
    "export needs PyTorch, ONNX and ONNX Runtime: pip install 'capbatch[export,cpu]' "
    "(or 'capbatch[export,gpu]')"
)


def _import_exporter():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import torch  # noqa: F401

        from capbatch.export.convert import export_bundle, variant_dir
    except ImportError as exc:
        raise MissingDependencyError(f"{EXTRA_HINT} (missing: {exc.name or exc})") from exc
    return export_bundle, variant_dir


@app.command("export", epilog=EXPORT_EXAMPLES, no_args_is_help=True)
def export(
    ckpt: Annotated[Path, typer.Option("--ckpt", help="Training checkpoint (best.pt).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory to write.")],
    fp16: Annotated[
        bool, typer.Option("--fp16", help="Also write OUT-fp16 (float16, for GPUs).")
    ] = False,
    int8: Annotated[
        bool, typer.Option("--int8", help="Also write OUT-int8 (dynamic int8, for CPUs).")
    ] = False,
    opset: Annotated[
        int, typer.Option("--opset", min=MIN_OPSET, help="ONNX opset.")
    ] = DEFAULT_OPSET,
    validate: Annotated[
        bool, typer.Option("--validate/--no-validate", help="Check ORT against PyTorch.")
    ] = True,
    validate_images: Annotated[
        Path | None,
        typer.Option(
            "--validate-images",
            exists=True,
            file_okay=False,
            help="Folder of images for caption checks (default: generated scenes).",
        ),
    ] = None,
    top_k: Annotated[
        int, typer.Option("--top-k", min=0, help="Also emit the top-k log-probs/ids per step.")
    ] = 0,
    force: Annotated[
        bool, typer.Option("--force", help="Write variants below the agreement threshold.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing bundle directories.")
    ] = False,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Model id prefix in the manifest (default: capbatch)."),
    ] = None,
) -> None:
    """Export a training checkpoint to an ONNX model bundle."""
    export_bundle, variant_dir = _import_exporter()
    bundle = export_bundle(
        ckpt,
        out,
        opset=opset,
        fp16=fp16,
        int8=int8,
        validate=validate,
        validate_images=validate_images,
        top_k=top_k,
        force=force,
        overwrite=overwrite,
        name=name,
    )
    written = [bundle] + [
        variant_dir(bundle, v) for v, on in (("fp16", fp16), ("int8", int8)) if on
    ]
    for path in written:
        typer.echo(f"wrote {path}")
