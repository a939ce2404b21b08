"""Everything `capbatch caption` can check before the model loads.

A mistyped input path, an input with no images, or a path the run could not or
should not write is reported in one line (exit 2) within a second, before the
seconds of model loading and before any output file is created, so the
corrected rerun needs no --overwrite. (Each engine checks its own options, the
output's format and extra, and an output that would be clobbered, when the
request is opened on it: capbatch.engines.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UsageError
from .job import RunOptions, job_sources, keys_to_keep, no_inputs_error
from .output import is_stdout
from .sources import expand_braces, iter_sources
from .write_targets import (
    RunInputs,
    check_distinct,
    check_file_target,
    check_folder_target,
    check_folder_writable,
    is_report_file,
    is_stats_file,
)

if TYPE_CHECKING:
    from .request import CaptionRequest

# What a user who typed "--quiet true" left behind as an input path.
_BOOLEAN_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "1", "0"})


def preflight(request: CaptionRequest) -> None:
    """UsageError for the first problem with the inputs or the paths the run writes
    (the engine checked its own options and the output's format: capbatch.engines)."""
    options = request.job
    check_inputs_exist(options)
    check_targets(
        options, stats_json=request.stats_json, report=request.report, probe=not request.dry_run
    )
    check_not_empty(options)


def check_targets(
    options: RunOptions,
    *,
    stats_json: Path | None = None,
    report: Path | None = None,
    probe: bool = True,
) -> None:
    """Every path the run will write (capbatch.write_targets): the output's folder,
    --stats-json, --report, --attention-dir and --sidecar-dir, each other's and the
    inputs'. `probe` creates and removes a file in each folder (not for --dry-run)."""
    if report is not None and is_stdout(options.out):
        raise UsageError("--report needs the rows in a file: not with --out -")
    inputs = RunInputs.of([*options.inputs, options.from_list])
    out = None if is_stdout(options.out) else Path(options.out)
    sidecar_dir = options.output_settings.sidecar_dir
    check_distinct(
        {"--out": out, "--stats-json": stats_json, "--report": report,
         "--attention-dir": options.attention_dir, "--sidecar-dir": sidecar_dir}
    )  # fmt: skip
    if out is not None:
        if inputs.holds(out) and os.path.lexists(out):
            raise UsageError(f"--out {out} is an input of this run; name another file")
        check_folder_writable(out.absolute().parent, f"--out {out}", probe=probe)
    side_files = (
        ("--stats-json", stats_json, is_stats_file, "the JSON file"),
        ("--report", report, is_report_file, "the HTML file"),
    )
    for flag, path, ours, what in side_files:
        if path is not None:
            check_file_target(
                flag, path, inputs=inputs, overwrite=options.overwrite, ours=ours, what=what,
                probe=probe,
            )  # fmt: skip
    if options.attention_dir is not None:
        check_folder_target("--attention-dir", options.attention_dir, inputs=inputs, probe=probe)
    if sidecar_dir is not None:
        check_folder_target("--sidecar-dir", sidecar_dir, probe=probe)


def _missing(raw: str) -> list[str]:
    if os.path.lexists(raw):
        return []
    if "{" in raw:  # a webdataset range: every expanded name must be there
        return [path for path in expand_braces(raw) if not os.path.lexists(path)]
    return [raw]


def check_inputs_exist(options: RunOptions) -> None:
    """A command-line input that does not exist is a typo, not an error row."""
    for raw in options.inputs:
        missing = _missing(str(raw))
        if not missing:
            continue
        named = missing[0] if missing[0] == raw else f"{missing[0]} (from {raw})"
        hint = ""
        if str(raw).lower() in _BOOLEAN_WORDS:
            hint = "; boolean options are flags: write --quiet, not --quiet true"
        raise UsageError(f"input {named} does not exist{hint}")


def check_not_empty(options: RunOptions) -> None:
    """No images at all is an error unless --allow-empty. Peeks at the first item
    only; a list read from stdin cannot be peeked (job_sources checks it as it goes)."""
    if options.allow_empty or options.from_list == "-":
        return
    peek = iter_sources(
        list(options.inputs), recursive=options.recursive, glob=options.glob,
        from_list=options.from_list,
    )  # fmt: skip
    if next(peek, None) is None:
        raise no_inputs_error(options)


@dataclass(frozen=True)
class DryRun:
    inputs: int  # after --limit
    already_done: int  # would be skipped (--resume)
    first_keys: tuple[str, ...]


def dry_run(options: RunOptions, done: Mapping[str, str], shown: int = 5) -> DryRun:
    """Resolve every input as the run would (reading each once), touching no output
    (`done`: the rows already there, as the engine reads them)."""
    skip = keys_to_keep(done, options)  # none with --overwrite: it never resumes
    count = done = 0
    first: list[str] = []
    items: Iterator = job_sources(options)
    for item in items:
        count += 1
        done += item.key in skip
        if len(first) < shown:
            first.append(item.key)
    return DryRun(count, done, tuple(first))
