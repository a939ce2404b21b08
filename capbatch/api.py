"""capbatch.caption(request): the one entry point of a caption run, for the CLI and
for Python callers alike.

    from capbatch import CaptionRequest, RunOptions, caption
    summary = caption(CaptionRequest(job=RunOptions(inputs=("photos/",), out=Path("c.csv"))))

In order: the request is opened on its engine (its checks; the output opened
once), the inputs and every path the run writes are checked (capbatch.preflight),
all before the model loads; then the engine runs, and the run's side outputs
(--stats-json, --report) are written from its summary.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from .engines import open_engine
from .job import RunHooks, RunSummary, stop_on_signals
from .preflight import DryRun, dry_run, preflight
from .request import CaptionRequest


@dataclass(frozen=True)
class DryRunResult:
    """What a --dry-run found: the inputs, what is done, and the model that loaded."""

    plan: DryRun
    fmt: str
    model_id: str
    providers: tuple[str, ...]
    encoder: str


@dataclass(frozen=True)
class RunResult:
    """A finished (or interrupted) run: its summary and the report, if one was written."""

    summary: RunSummary
    report: Path | None = None
    report_rows: int = 0


def caption(request: CaptionRequest, hooks: RunHooks | None = None) -> RunResult | DryRunResult:
    """Run `request`; a DryRunResult when request.dry_run (nothing written)."""
    hooks = hooks or RunHooks()
    run = open_engine(request)
    preflight(request)
    notice = model_notice(request.captioner.model)
    if notice:
        hooks.note(notice)
    if request.dry_run:
        return _dry_run(request, run, hooks)
    guard = stop_on_signals(hooks.stop) if hooks.handle_signals else nullcontext()
    with guard:
        summary = run.run(hooks)
    return finish(request, summary)


def model_notice(model: str | Path | None) -> str | None:
    """The model card's one-line notice (the built-in model: what it knows)."""
    from .bundle import resolve_bundle_dir
    from .manifest import read_manifest

    return read_manifest(resolve_bundle_dir(model)).model_card.get("notice")


def _dry_run(request: CaptionRequest, run, hooks: RunHooks) -> DryRunResult:
    from .captioner import Captioner

    plan = dry_run(request.job, run.done())
    captioner = Captioner.from_args(request.captioner, warn=hooks.warn)
    return DryRunResult(
        plan, run.fmt, captioner.model_id, tuple(captioner.providers), captioner.encoder_kind
    )


def finish(request: CaptionRequest, summary: RunSummary) -> RunResult:
    """The side outputs of a run: --stats-json always, --report when a row is there."""
    if request.stats_json is not None:
        from .stats import stats_record, write_stats

        write_stats(request.stats_json, stats_record(summary, summary.exit_code, time.time()))
    if request.report is None or not summary.processed + summary.skipped:
        return RunResult(summary)
    from .report import write_report

    # The rows as written: for --format txt the journal is where they are.
    written = write_report(summary.out, request.report, attention_dir=request.job.attention_dir)
    return RunResult(summary, request.report, written.summary.rows)
