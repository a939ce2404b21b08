"""`capbatch caption`: a thin Typer layer over the checks before the model
(capbatch.preflight), the caption job (capbatch.job) and its engines
(capbatch.engines)."""

from __future__ import annotations

import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from . import caption_run
from .cli import app
from .errors import UsageError
from .job import Engine
from .output import FORMATS
from .providers import Device, EncoderRuntime, Precision

CAPTION_EXAMPLES = """\
Examples:

  capbatch caption photos/ --out captions.csv

  capbatch caption shards/train-{000..009}.tar --out train.parquet --batch-size 64

  find /data -name '*.jpg' | capbatch caption --from-list - --out captions.jsonl

  capbatch caption photos/ --out captions.csv --resume --retry-errors

  capbatch caption photos/ --format txt --out photos.journal.jsonl   (sidecar .txt files)

  capbatch caption photos/ --out - --format csv | head   (rows on stdout)

  capbatch caption photos/ --out c.csv --dry-run   (check everything, write nothing)

Exit codes: 0 every image captioned, 1 some images failed (error rows written),
2 fatal (bad option, model or output), 3 interrupted (finished rows flushed).
"""


# The --format choices are the output package's formats (declared there, once).
OutputFormat = Enum("OutputFormat", {name: name for name in FORMATS}, type=str)


def caption(
    inputs: Annotated[
        list[str] | None,
        typer.Argument(
            help="Image files, folders, tar/tar.gz/zip archives or webdataset shards.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Output file (.csv, .jsonl, .parquet; journal for txt)."),
    ] = ...,
    fmt: Annotated[
        OutputFormat | None,
        typer.Option("--format", help="Output format (default: from --out's extension)."),
    ] = None,
    model: Annotated[
        Path | None, typer.Option("--model", help="Model bundle directory (default: built-in).")
    ] = None,
    device: Annotated[
        Device, typer.Option("--device", help="auto: CUDA when available, else CPU.")
    ] = Device.auto,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch.")] = 32,
    beam_size: Annotated[
        int, typer.Option("--beam-size", min=1, help="1 = greedy; K > 1 = beam search.")
    ] = 1,
    max_len: Annotated[
        int | None,
        typer.Option("--max-len", min=1, help="Most tokens per caption (default: the model's)."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, help="Decode threads (default: one per core)."),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help="ONNX Runtime threads per CPU session (default: one per core; on small "
            "machines 1 leaves the cores to decoding, see docs/benchmarks.md).",
        ),
    ] = None,
    glob: Annotated[
        str | None, typer.Option("--glob", help="Only files matching this pattern in folders.")
    ] = None,
    no_recursive: Annotated[
        bool, typer.Option("--no-recursive", help="Do not descend into sub-folders.")
    ] = False,
    from_list: Annotated[
        str | None, typer.Option("--from-list", help="Read input paths from FILE ('-': stdin).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an existing output: skip keys done.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output and start over.")
    ] = False,
    retry_errors: Annotated[
        bool,
        typer.Option("--retry-errors", help="Resume, and caption again the keys that failed."),
    ] = False,
    overwrite_sidecars: Annotated[
        bool,
        typer.Option("--overwrite-sidecars", help="--format txt: replace existing .txt files."),
    ] = False,
    attention_dir: Annotated[
        Path | None,
        typer.Option("--attention-dir", help="Write per-image attention heatmap PNGs here."),
    ] = None,
    caption_extension: Annotated[
        str, typer.Option("--caption-extension", help="--format txt: sidecar file ending.")
    ] = ".txt",
    sidecar_prefix: Annotated[
        str, typer.Option("--sidecar-prefix", help="--format txt: text before each caption.")
    ] = "",
    sidecar_suffix: Annotated[
        str, typer.Option("--sidecar-suffix", help="--format txt: text after each caption.")
    ] = "",
    sidecar_dir: Annotated[
        Path | None,
        typer.Option("--sidecar-dir", help="--format txt: folder for archive members' sidecars."),
    ] = None,
    csv_raw: Annotated[
        bool,
        typer.Option("--csv-raw", help="CSV: keep cells starting with = + - @ as they are."),
    ] = False,
    encoder_runtime: Annotated[
        EncoderRuntime,
        typer.Option(
            "--encoder-runtime",
            help="Who runs the encoder: onnxruntime, or openvino (CPU, the openvino extra; "
            "refused unless the bundle records its caption agreement).",
        ),
    ] = EncoderRuntime.onnxruntime,
    precision: Annotated[
        Precision,
        typer.Option("--precision", help="Encoder precision: f32, or bf16 (openvino only)."),
    ] = Precision.f32,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary.")] = False,
    limit: Annotated[
        int | None,
        typer.Option("--limit", min=1, help="Only the first N inputs (in input order)."),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Resolve the inputs, check the options and the model; write nothing.",
        ),
    ] = False,
    stats_json: Annotated[
        Path | None,
        typer.Option(
            "--stats-json", help="Write the run's counts, error reasons and timing here (JSON)."
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Also write an HTML report of the run here at the end (docs/report.md).",
        ),
    ] = None,
    allow_empty: Annotated[
        bool,
        typer.Option(
            "--allow-empty", help="No images found is not an error (an empty output, exit 0)."
        ),
    ] = False,
    engine: Annotated[
        Engine,
        typer.Option("--engine", help="local: this process; ray: Ray Data (docs/scale-out.md)."),
    ] = Engine.local,
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", help="--engine ray: cluster to join (default: local Ray)."),
    ] = None,
    actors: Annotated[
        int | None,
        typer.Option("--actors", min=1, help="--engine ray: captioning actors (default 1)."),
    ] = None,
) -> None:
    """Caption images from files, folders and archives into CSV, JSONL, Parquet or sidecars."""
    from .captioner import CaptionerArgs
    from .job import RunOptions, check_engine_options
    from .output import OutputSettings
    from .preflight import preflight

    # Pillow warns about corrupt EXIF/TIFF tags and large images from the decode
    # threads. Decoding already enforces its own pixel limit and turns real failures
    # into error rows, so the warnings only tear through the progress display.
    warnings.filterwarnings("ignore", module=r"PIL(\.|$)")

    try:
        options = RunOptions(
            inputs=tuple(inputs or ()),
            out=out,
            fmt=fmt.value if fmt is not None else None,
            recursive=not no_recursive,
            glob=glob,
            from_list=from_list,
            workers=workers,
            resume=resume,
            overwrite=overwrite,
            retry_errors=retry_errors,
            overwrite_sidecars=overwrite_sidecars,
            attention_dir=attention_dir,
            limit=limit,
            allow_empty=allow_empty,
            output_settings=OutputSettings(
                csv_raw=csv_raw,
                caption_extension=caption_extension,
                sidecar_prefix=sidecar_prefix,
                sidecar_suffix=sidecar_suffix,
                sidecar_dir=sidecar_dir,
            ),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    cli_flags = {"--threads": threads, "--ray-address": ray_address, "--actors": actors}
    given = [flag for flag, value in cli_flags.items() if value is not None]
    check_engine_options(engine.value, options.engine_flags() + given)
    # Everything about options, output and inputs, before the model loads.
    preflight(options, engine, stats_json=stats_json, report=report, dry_run=dry_run)
    if engine is Engine.ray:
        from .engines.ray_options import import_ray

        import_ray()  # without Ray: the one-line install hint, nothing else
        # Absolute: Ray actors may start in another working directory.
        model = None if model is None else model.resolve()
    args = CaptionerArgs(
        model=None if model is None else str(model),
        device=device.value,
        beam_size=beam_size,
        max_len=max_len,
        batch_size=batch_size,
        return_attention=attention_dir is not None,
        intra_op_threads=threads,
        encoder_runtime=encoder_runtime.value,
        precision=precision.value,
    )
    caption_run.model_notice(args.model)
    if dry_run:
        caption_run.dry_run(options, args, ray=engine is Engine.ray)
        return
    if engine is Engine.ray:
        summary = caption_run.caption_on_ray(
            options, args, quiet, address=ray_address, actors=actors
        )
    else:
        summary = caption_run.caption_locally(options, args, quiet)
    caption_run.finish(summary, quiet, stats_json, report, options)


# A call, not a decorator: capbatch/cli.py says why.
app.command("caption", epilog=CAPTION_EXAMPLES, no_args_is_help=True)(caption)
