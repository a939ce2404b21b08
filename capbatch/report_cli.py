"""`capbatch report`: a thin Typer layer over capbatch.report.write_report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .cli import app
from .errors import UsageError

REPORT_EXAMPLES = """\
Examples:

  capbatch report captions.csv --out report.html

  capbatch report captions.parquet --out report.html --attention-dir maps/

  capbatch report huge-run.jsonl --out report.html --link-images   (thumbnails link the originals)
"""


def report(
    run_output: Annotated[
        Path,
        typer.Argument(
            help="Output of `capbatch caption`: a CSV, JSONL or Parquet file, or a Ray shards folder.",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")] = Path(
        "report.html"
    ),
    attention_dir: Annotated[
        Path | None,
        typer.Option(
            "--attention-dir",
            help="Attention maps written by `caption --attention-dir`: click a card to see them.",
        ),
    ] = None,
    link_images: Annotated[
        bool,
        typer.Option(
            "--link-images",
            help="Reference the original image files instead of embedding thumbnails "
            "(a small page for huge runs; it then needs the images where they are).",
        ),
    ] = False,
    thumb_size: Annotated[
        int, typer.Option("--thumb-size", min=32, max=1024, help="Thumbnail side in pixels.")
    ] = 256,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, help="Thumbnail threads (default: one per core)."),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace an existing --out file that is not a capbatch report "
            "(an earlier report is replaced without it).",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary line.")] = False,
) -> None:
    """Write a self-contained HTML gallery of a caption run: thumbnails, captions,
    scores, errors and flags, with filters, sorting and attention maps."""
    from .report import write_report
    from .write_targets import RunInputs, check_file_target, is_report_file

    if attention_dir is not None and not attention_dir.is_dir():
        raise UsageError(f"--attention-dir {attention_dir} is not a folder")
    if out.resolve() == run_output.resolve():
        raise UsageError("--out would overwrite the run output it reports on")
    inputs = RunInputs.of([run_output, attention_dir])
    check_file_target(
        "--out", out, inputs=inputs, overwrite=overwrite, ours=is_report_file, what="the HTML file"
    )
    result = write_report(
        run_output,
        out,
        attention_dir=attention_dir,
        link_images=link_images,
        thumb_size=thumb_size,
        workers=workers,
    )
    if not quiet:
        summary = result.summary
        typer.echo(
            f"report of {summary.rows} rows ({summary.ok} captioned, {summary.errors} errors, "
            f"{result.thumbnails} with images) in {result.elapsed_s:.1f} s -> {out}",
            err=True,
        )
    if result.summary.ok and not result.thumbnails:
        # The usual cause: relative image paths, and a report made from another folder.
        typer.echo(
            "capbatch report: no image of the run was found; run the report from the folder "
            "the caption run ran in (relative paths are tried there and beside the output)",
            err=True,
        )


# A call, not a decorator: capbatch/cli.py says why.
app.command("report", epilog=REPORT_EXAMPLES, no_args_is_help=True)(report)
