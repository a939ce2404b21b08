"""`capbatch caption`: a thin Typer layer over the checks before the model
(capbatch.preflight), the caption job (capbatch.job) and its engines
(capbatch.engines)."""

from __future__ import annotations

import threading
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from .cli import app
from .errors import ExitCode, UsageError
from .job import Engine
from .output import FORMATS
from .providers import Device

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


def _echo(message: str) -> None:
    typer.echo(message, err=True)


class _Progress:
    """rich progress on stderr: count, images/s, errors, ETA once the total is known."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._progress = None
        self._task = None
        self._total: int | None = None
        self._lock = threading.Lock()  # set_total comes from the counting thread

    def __enter__(self) -> _Progress:
        return self

    def start(self) -> None:
        """Shown only once the run really starts (output locked and opened)."""
        with self._lock:
            if not self.quiet and self._progress is None:
                self._start()

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("captioning"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.1f} img/s"),
            TextColumn("[red]{task.fields[errors]} errors"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task("caption", total=self._total, rate=0.0, errors=0)

    def set_total(self, total: int | None) -> None:
        with self._lock:
            self._total = total or None
            if self._progress is not None and total:
                self._progress.update(self._task, total=total)

    def update(self, summary) -> None:
        if self._progress is not None:
            self._progress.update(
                self._task,
                completed=summary.processed + summary.skipped,
                rate=summary.images_per_s,
                errors=summary.errors,
            )

    def __exit__(self, *exc_info) -> None:
        if self._progress is not None:
            self._progress.stop()


def _summary_lines(summary) -> list[str]:
    from .stats import reason_lines

    parts = [f"{summary.ok} captioned", f"{summary.errors} failed"]
    if summary.skipped:
        parts.append(f"{summary.skipped} already done")
    where = "stdout" if str(summary.out) == "-" else summary.out
    line = (
        f"{', '.join(parts)} in {summary.elapsed_s:.1f} s "
        f"({summary.images_per_s:.1f} images/s) -> {where}"
    )
    if summary.interrupted:
        line = f"interrupted: {line}; rerun with --resume to continue"
    lines = [line]
    unlike = summary.flag_count("in_domain", False)
    if unlike is not None:
        lines.append(
            f"{unlike} of {summary.flag_rows['in_domain']} images look unlike "
            "the model's training data (in_domain=false)"
        )
    truncated = summary.flag_count("truncated")
    if truncated:
        lines.append(
            f"{truncated} caption(s) stopped at the length limit without an end (truncated=true)"
        )
    repeated = summary.flag_count("repeated")
    if repeated:
        lines.append(f"{repeated} caption(s) repeat a word or phrase back to back (repeated=true)")
    if summary.reasons:
        lines.append("failed, by reason:")
        lines.extend(reason_lines(summary.reasons))
    return lines


@app.command("caption", epilog=CAPTION_EXAMPLES, no_args_is_help=True)
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
    preflight(options, engine)
    _check_report_target(report, options)
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
    )
    _model_notice(args.model)
    if dry_run:
        _dry_run(options, args)
        return
    if engine is Engine.ray:
        summary = _caption_on_ray(options, args, quiet, address=ray_address, actors=actors)
    else:
        summary = _caption_locally(options, args, quiet)
    _finish(summary, quiet, stats_json, report, options)


def _check_report_target(report: Path | None, options) -> None:
    if report is None:
        return
    if str(options.out) == "-":
        raise UsageError("--report needs the rows in a file: not with --out -")
    if report.resolve() == options.out.resolve():
        raise UsageError(f"--report {report} would overwrite the output itself")
    if report.is_dir():
        raise UsageError(f"--report {report} is a directory; name the HTML file to write")


def _finish(summary, quiet: bool, stats_json: Path | None, report: Path | None, options) -> None:
    """Stats file, report, summary lines, exit code."""
    import time

    if stats_json is not None:
        from .stats import stats_record, write_stats

        write_stats(stats_json, stats_record(summary, summary.exit_code, time.time()))
    if report is not None and summary.processed + summary.skipped:
        from .report import write_report

        # The rows as written: for --format txt the journal is where they are.
        written = write_report(summary.out, report, attention_dir=options.attention_dir)
        if not quiet:
            _echo(f"report of {written.summary.rows} rows -> {report}")
    if not quiet:
        if getattr(summary, "failed_shards", None):
            shown = ", ".join(str(i) for i in summary.failed_shards[:10])
            _echo(
                f"capbatch: {len(summary.failed_shards)} shard(s) failed after retries "
                f"({shown}); rerun with --resume to retry them"
            )
        for line in _summary_lines(summary):
            _echo(line)
    if summary.exit_code != ExitCode.OK:
        raise typer.Exit(int(summary.exit_code))


def _model_notice(model: str | None) -> None:
    """The model card's one-line notice (the built-in model: what it knows), on stderr
    whatever --quiet says: a nightly job's log is where it must show."""
    from .bundle import resolve_bundle_dir
    from .manifest import read_manifest

    notice = read_manifest(resolve_bundle_dir(model)).model_card.get("notice")
    if notice:
        _echo(f"capbatch: note: {notice}")


def _dry_run(options, args) -> None:
    """--dry-run: what the run would do, on stdout; the model loaded once to check it."""
    from .captioner import Captioner
    from .output import open_output
    from .preflight import dry_run

    output = open_output(options.out, options.fmt)
    plan = dry_run(options, output)
    captioner = Captioner.from_args(
        args, warn=lambda message: _echo(f"capbatch: warning: {message}")
    )
    todo = plan.inputs - plan.already_done
    typer.echo(
        f"dry run: {plan.inputs} input(s) found, {plan.already_done} already done, "
        f"{todo} to caption -> {'stdout' if str(options.out) == '-' else options.out} "
        f"({output.fmt}); nothing written"
    )
    for key in plan.first_keys:
        typer.echo(f"  {key}")
    if plan.inputs > len(plan.first_keys):
        typer.echo(f"  ... and {plan.inputs - len(plan.first_keys)} more")
    typer.echo(f"model {captioner.model_id} ok on {', '.join(captioner.providers)}")


def _caption_locally(options, args, quiet: bool):
    from .captioner import Captioner
    from .engines.local import estimate_total, run_captioning
    from .job import stop_on_signals

    captioner = Captioner.from_args(
        args, warn=lambda message: _echo(f"capbatch: warning: {message}")
    )
    if not quiet:
        _echo(f"model {captioner.model_id} on {', '.join(captioner.providers)}")
    stop = threading.Event()
    with stop_on_signals(stop), _Progress(quiet) as progress:
        if not quiet:
            counter = threading.Thread(
                target=lambda: progress.set_total(_capped(estimate_total(options), options.limit)),
                daemon=True,
            )
            counter.start()
        summary = run_captioning(
            captioner, options, stop=stop, on_progress=progress.update, on_start=progress.start
        )
    summary.model_id = summary.model_id or captioner.model_id  # also when no row was new
    return summary


def _capped(total: int | None, limit: int | None) -> int | None:
    return total if total is None or limit is None else min(total, limit)


def _caption_on_ray(options, args, quiet: bool, *, address, actors):
    from .engines.ray_driver import run_on_ray
    from .engines.ray_options import RayOptions
    from .job import stop_on_signals

    try:
        ray_options = RayOptions(address=address, actors=actors or 1)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not quiet:
        where = address or "a local Ray instance"
        _echo(f"engine ray on {where}, {ray_options.actors} captioning actor(s)")
    stop = threading.Event()
    with stop_on_signals(stop), _Progress(quiet) as progress:
        return run_on_ray(
            options,
            args,
            ray_options,
            stop=stop,
            on_progress=progress.update,
            on_start=progress.start,
        )
