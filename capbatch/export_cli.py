"""`capbatch export`: checkpoint -> validated model bundle (needs the export extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .cli import app
from .errors import MissingDependencyError


@app.command(
    "export",
    epilog="Example: capbatch export --ckpt runs/scenes/best.pt --out models/scenes",
)
def export(
    ckpt: Annotated[Path, typer.Option(help="Training checkpoint (best.pt).")],
    out: Annotated[Path, typer.Option(help="Bundle directory to write.")] = Path("bundle"),
) -> None:
    """Export a training checkpoint to an ONNX model bundle."""
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            "export needs PyTorch and ONNX: pip install 'capbatch[export]'"
        ) from exc
    raise NotImplementedError("export lands with issue #4")
