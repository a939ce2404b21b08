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
from .export.domain_source import DEFAULT_MAX_IMAGES, DomainOptions  # torch-free
from .export.specs import DEFAULT_OPSET, MIN_OPSET, VALIDATION_BATCHES  # torch-free

EXPORT_EXAMPLES = f"""\
Examples:

  capbatch export --ckpt runs/scenes/best.pt --out models/scenes

  capbatch export --ckpt best.pt --out models/scenes --int8 --fp16
      (writes models/scenes, models/scenes-fp16 and models/scenes-int8)

  capbatch export --ckpt best.pt --out models/scenes --validate-images val/

  capbatch export --ckpt best.pt --out models/scenes --no-validate --overwrite

  capbatch export --ckpt best.pt --out models/scenes --domain-images train.txt
      (domain statistics from the images train.txt lists; add
      --domain-calibration val/ for the threshold, else a fifth is held out)

Domain statistics (the rows' domain_distance and in_domain columns) are fitted
on --domain-images, or by default on the train and val splits of the dataset
the checkpoint was trained on when it is still there; each variant is fitted
with its own encoder. Without them the bundle has none and the columns stay empty.

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

        from capbatch.export.convert import export_bundles
    except ImportError as exc:
        raise MissingDependencyError(f"{EXTRA_HINT} (missing: {exc.name or exc})") from exc
    return export_bundles


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
    domain_images: Annotated[
        Path | None,
        typer.Option(
            "--domain-images",
            exists=True,
            help="Training images for the domain statistics: a folder or a list file "
            "(default: the checkpoint's dataset, train split).",
        ),
    ] = None,
    domain_calibration: Annotated[
        Path | None,
        typer.Option(
            "--domain-calibration",
            exists=True,
            help="Held-out in-domain images that set the threshold: a folder or a list file "
            "(default: the dataset's val split, or a fifth of --domain-images).",
        ),
    ] = None,
    domain_max_images: Annotated[
        int,
        typer.Option("--domain-max-images", help="A seeded subset of each image set above this."),
    ] = DEFAULT_MAX_IMAGES,
    domain_stats: Annotated[
        bool,
        typer.Option("--domain-stats/--no-domain-stats", help="Fit domain statistics."),
    ] = True,
) -> None:
    """Export a training checkpoint to an ONNX model bundle."""
    domain = DomainOptions(domain_images, domain_calibration, domain_max_images, domain_stats)
    export_bundles = _import_exporter()
    result = export_bundles(
        ckpt, out, opset=opset, fp16=fp16, int8=int8, validate=validate,
        validate_images=validate_images, top_k=top_k, force=force, overwrite=overwrite,
        name=name, domain=domain,
    )  # fmt: skip
    for path in result.bundles:
        for line in summary_lines(path):
            typer.echo(line)
    if result.domain_note:
        typer.echo(result.domain_note)


# A call, not a decorator: capbatch/cli.py says why.
app.command("export", epilog=EXPORT_EXAMPLES, no_args_is_help=True)(export)


# --------------------------------------------------------------------------- summary


def summary_lines(bundle: Path) -> list[str]:
    """What export checked and wrote, read back from the bundle it wrote."""
    from .domain import DomainCheck
    from .manifest import MANIFEST_FILE, verify_bundle

    manifest = verify_bundle(bundle)
    variant = manifest.get("variant", "fp32")
    sizes = {name: (bundle / name).stat().st_size for name in manifest["files"]}
    graphs = [graph["file"] for graph in manifest["graphs"].values()]
    total = sum(sizes.values()) + (bundle / MANIFEST_FILE).stat().st_size
    lines = [
        f"wrote {bundle} ({variant}): {_mib(total)} ({total:,} bytes) in all; "
        + ", ".join(f"{g} {_mib(sizes[g])}" for g in graphs)
    ]
    lines += _validation_lines(manifest.get("validation"), variant)
    check = DomainCheck.from_bundle(bundle)
    if check is not None:
        facts = check.describe()
        lines.append(
            f"  domain statistics: fitted on {facts['fit_images']} images, threshold "
            f"{facts['threshold']:.2f} (quantile {facts['quantile']} of "
            f"{facts['calibration_images']} calibration images), {_mib(sizes[_stats_file(manifest)])}"
        )
    return lines


def _validation_lines(validation: dict | None, variant: str) -> list[str]:
    if not validation:
        return ["  validation: skipped (--no-validate)"]
    lines = []
    if "max_abs_diff" in validation:
        batches = ", ".join(map(str, validation["batches"]))
        lines.append(f"  ONNX Runtime vs PyTorch at batches {batches}: max abs diff <= tolerance")
        tolerance = validation["tolerance"]
        for output, diff in validation["max_abs_diff"].items():
            verdict = "ok" if diff <= tolerance[output] else "OVER"
            lines.append(f"    {output:<10} {diff:.2e} <= {tolerance[output]:.2e} {verdict}")
    agreement = f"{validation['caption_agreement']:.0%} of {validation['images']} images"
    if variant == "fp32":
        ties = len(validation.get("near_ties") or [])
        lines.append(f"  greedy captions identical to PyTorch on {agreement} ({ties} near ties)")
    else:
        forced = " (written with --force)" if validation.get("forced") else ""
        lines.append(
            f"  greedy captions identical to fp32 on {agreement} "
            f"(minimum {validation['min_agreement']:.0%}){forced}"
        )
    return lines


def _stats_file(manifest: dict) -> str:
    return manifest["domain"]["file"]


def _mib(size: int) -> str:
    return f"{size / 2**20:.2f} MiB"
