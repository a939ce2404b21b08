"""What `capbatch caption` shows around the library's run (capbatch.api): progress
on stderr, the model's notice, the dry run's plan, summary lines, exit code."""

from __future__ import annotations

import threading
import warnings

import typer

from .errors import ExitCode
from .job import RunHooks


def echo(message: str) -> None:
    typer.echo(message, err=True)


class Progress:
    """rich progress on stderr: count, images/s, errors, ETA once the total is known."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._progress = None
        self._task = None
        self._total: int | None = None
        self._lock = threading.Lock()  # set_total comes from the counting thread

    def __enter__(self) -> Progress:
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


def summary_lines(summary) -> list[str]:
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


def run_cli(request) -> None:
    """`capbatch caption`: the library's caption() with progress and lines on stderr,
    the dry run's plan on stdout, and the exit code."""
    from .api import DryRunResult, caption

    # Pillow warns about corrupt EXIF/TIFF tags and large images from the decode
    # threads. Decoding already enforces its own pixel limit and turns real failures
    # into error rows, so the warnings only tear through the progress display.
    warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
    quiet = request.quiet or request.dry_run
    with Progress(quiet) as progress:
        hooks = RunHooks(
            on_start=progress.start,
            on_progress=progress.update,
            on_total=None if quiet else progress.set_total,
            say=(lambda line: None) if quiet else echo,
            warn=lambda message: echo(f"capbatch: warning: {message}"),
            # On stderr whatever --quiet says: a nightly job's log is where it must show.
            note=lambda notice: echo(f"capbatch: note: {notice}"),
            handle_signals=True,
        )
        result = caption(request, hooks)
    if isinstance(result, DryRunResult):
        print_dry_run(request, result)
        return
    end_of_run(result, request.quiet)


def end_of_run(result, quiet: bool) -> None:
    """The lines after a run (report, failed shards, summary) unless quiet; the exit code."""
    summary = result.summary
    if not quiet:
        if result.report is not None:
            echo(f"report of {result.report_rows} rows -> {result.report}")
        if getattr(summary, "failed_shards", None):
            shown = ", ".join(str(i) for i in summary.failed_shards[:10])
            echo(
                f"capbatch: {len(summary.failed_shards)} shard(s) failed after retries "
                f"({shown}); rerun with --resume to retry them"
            )
        for line in summary_lines(summary):
            echo(line)
    if summary.exit_code != ExitCode.OK:
        raise typer.Exit(int(summary.exit_code))


def print_dry_run(request, result) -> None:
    """--dry-run: what the run would do, on stdout."""
    plan, out = result.plan, request.job.out
    todo = plan.inputs - plan.already_done
    typer.echo(
        f"dry run: {plan.inputs} input(s) found, {plan.already_done} already done, "
        f"{todo} to caption -> {'stdout' if str(out) == '-' else out} "
        f"({result.fmt}); nothing written"
    )
    for key in plan.first_keys:
        typer.echo(f"  {key}")
    if plan.inputs > len(plan.first_keys):
        typer.echo(f"  ... and {plan.inputs - len(plan.first_keys)} more")
    typer.echo(
        f"model {result.model_id} ok on {', '.join(result.providers)}, encoder {result.encoder}"
    )
