"""What `capbatch caption` does around the job: progress on stderr, the model's
notice, --dry-run, running an engine, and the end of a run (stats file, report,
summary lines, exit code). The Typer declaration lives in caption_cli.py."""

from __future__ import annotations

import threading
from pathlib import Path

import typer

from .errors import ExitCode, UsageError


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


def finish(summary, quiet: bool, stats_json: Path | None, report: Path | None, options) -> None:
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
            echo(f"report of {written.summary.rows} rows -> {report}")
    if not quiet:
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


def model_notice(model: str | None) -> None:
    """The model card's one-line notice (the built-in model: what it knows), on stderr
    whatever --quiet says: a nightly job's log is where it must show."""
    from .bundle import resolve_bundle_dir
    from .manifest import read_manifest

    notice = read_manifest(resolve_bundle_dir(model)).model_card.get("notice")
    if notice:
        echo(f"capbatch: note: {notice}")


def dry_run(options, args, ray: bool = False) -> None:
    """--dry-run: what the run would do, on stdout; the model loaded once to check it."""
    from .captioner import Captioner
    from .output import open_output
    from .preflight import dry_run

    if ray:
        from .engines.ray_plan import OutputLayout, ShardRows

        output = ShardRows(OutputLayout.for_output(options.out, options.fmt))
    else:
        output = open_output(options.out, options.fmt)
    plan = dry_run(options, output)
    captioner = Captioner.from_args(
        args, warn=lambda message: echo(f"capbatch: warning: {message}")
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
    typer.echo(model_line(captioner, "ok "))


def model_line(captioner, state: str = "") -> str:
    """"model M [ok ]on PROVIDERS, encoder RUNTIME-PRECISION": the run header names who
    runs the encoder too (an OpenVINO encoder is not one of onnxruntime's providers)."""
    return (
        f"model {captioner.model_id} {state}on {', '.join(captioner.providers)}, "
        f"encoder {captioner.encoder_kind}"
    )


def caption_locally(options, args, quiet: bool):
    from .captioner import Captioner
    from .engines.local import estimate_total, run_captioning
    from .job import stop_on_signals

    captioner = Captioner.from_args(
        args, warn=lambda message: echo(f"capbatch: warning: {message}")
    )
    if not quiet:
        echo(model_line(captioner))
    stop = threading.Event()
    with stop_on_signals(stop), Progress(quiet) as progress:
        if not quiet:
            counter = threading.Thread(
                target=lambda: progress.set_total(capped(estimate_total(options), options.limit)),
                daemon=True,
            )
            counter.start()
        summary = run_captioning(
            captioner, options, stop=stop, on_progress=progress.update, on_start=progress.start
        )
    summary.model_id = summary.model_id or captioner.model_id  # also when no row was new
    summary.encoder = summary.encoder or captioner.encoder_kind
    return summary


def capped(total: int | None, limit: int | None) -> int | None:
    return total if total is None or limit is None else min(total, limit)


def caption_on_ray(options, args, quiet: bool, *, address, actors):
    from .engines.ray_driver import run_on_ray
    from .engines.ray_options import RayOptions
    from .job import stop_on_signals

    try:
        ray_options = RayOptions(address=address, actors=actors or 1)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not quiet:
        where = address or "a local Ray instance"
        echo(f"engine ray on {where}, {ray_options.actors} captioning actor(s)")
    stop = threading.Event()
    with stop_on_signals(stop), Progress(quiet) as progress:
        summary = run_on_ray(
            options,
            args,
            ray_options,
            stop=stop,
            on_progress=progress.update,
            on_start=progress.start,
        )
    summary.encoder = summary.encoder or args.encoder_kind  # also when no row was new
    return summary
