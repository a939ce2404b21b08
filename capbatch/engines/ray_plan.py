"""The Ray engine's plan and output layout: inputs -> shards, where each shard's rows
go, what is done, and what a resumed run still has to do (per key).

A shard is one tar/zip archive (a webdataset shard) or a run of up to
`shard_size` other inputs. Shards are how the work is split and recorded; what
a resumed run skips is decided per key, by the job's rule (job.resume_output)
applied to each shard's file.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..job import RunOptions, existing_output_error, resume_output
from ..output import Output, format_for, open_output, parts_dir_for, read_rows
from ..output.durable import append_line, make_folder, write_file
from ..resume_facts import resume_facts
from ..rows import Row
from ..sources import archive_kind, expand_braces, read_list

PLAN_FILE = "plan.json"
DONE_FILE = "done.jsonl"
PLAN_VERSION = 2  # 2: every RESUME_MUST_MATCH option (1 left out the encoder)


@dataclass(frozen=True)
class Shard:
    index: int
    inputs: tuple[str, ...]  # passed to iter_sources on a worker, as the user gave them


def plan_shards(options: RunOptions, shard_size: int) -> list[Shard]:
    """Inputs (and list-file entries) -> shards, in input order.

    Brace patterns are expanded here with the sources' rule (only when no file
    has the literal name), so every webdataset shard becomes a Ray shard.
    """
    raw: list[str] = [os.fspath(item) for item in options.inputs]
    if options.from_list is not None:
        raw.extend(read_list(options.from_list))
    expanded: list[str] = []
    for item in raw:
        literal = os.path.lexists(item) or "{" not in item
        expanded.extend([item] if literal else expand_braces(item))
    shards: list[Shard] = []
    run: list[str] = []

    def close_run() -> None:
        if run:
            shards.append(Shard(len(shards), tuple(run)))
            run.clear()

    for item in expanded:
        if archive_kind(item):  # by name only: the plan must not change when files do
            close_run()
            shards.append(Shard(len(shards), (item,)))
        else:
            run.append(item)
            if len(run) == shard_size:
                close_run()
    close_run()
    return shards


@dataclass(frozen=True)
class OutputLayout:
    """Where a Ray run writes: per-shard files and records in `shards_dir`, and the
    merged file `merged` (None: shards only, when --out is a folder)."""

    shards_dir: Path
    merged: Path | None
    fmt: str  # of the merged file: csv | jsonl | parquet
    shard_fmt: str  # jsonl | parquet

    @classmethod
    def for_output(cls, out: Path, fmt: str | None) -> OutputLayout:
        out = Path(out)
        # docs/scale-out.md: an existing folder, or a name without extension whatever
        # --format says, keeps the shards only.
        if out.is_dir() or not out.suffix:
            shard_fmt = fmt or "parquet"
            if shard_fmt not in ("jsonl", "parquet"):
                raise UsageError("a shards-only --out folder holds jsonl or parquet shards")
            return cls(out, None, shard_fmt, shard_fmt)
        merged_fmt = format_for(out, fmt)  # txt is refused by job.check_engine_options
        shard_fmt = "parquet" if merged_fmt == "parquet" else "jsonl"
        return cls(out.with_name(out.name + ".shards"), out, merged_fmt, shard_fmt)

    @property
    def lock_target(self) -> Path:
        return self.merged or self.shards_dir

    def shard_file(self, index: int) -> Path:
        return self.shards_dir / f"shard-{index:05d}.{self.shard_fmt}"

    def shard_output(self, index: int) -> Output:
        return open_output(self.shard_file(index), self.shard_fmt)

    def shard_files(self) -> list[Path]:
        if not self.shards_dir.is_dir():
            return []
        return sorted(self.shards_dir.glob(f"shard-*.{self.shard_fmt}"))

    def read_done(self) -> dict[int, dict]:
        """shard index -> its newest done record ({"shard", "rows", "errors"}); a torn
        tail is ignored."""
        done: dict[int, dict] = {}
        path = self.shards_dir / DONE_FILE
        if not path.is_file():
            return done
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            try:
                record = json.loads(line)
                done[int(record["shard"])] = record
            except (ValueError, KeyError, TypeError):
                continue
        return done

    def record_done(self, record: dict) -> None:
        append_line(self.shards_dir / DONE_FILE, json.dumps(record))

    def clear(self) -> None:
        """Remove what a Ray run wrote (only capbatch's own files in a shards folder)."""
        if self.shards_dir.is_dir():
            for path in self.shards_dir.iterdir():
                ours = path.name in (PLAN_FILE, DONE_FILE) or path.name.startswith("shard-")
                if ours:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        if self.merged is not None:
            self.merged.unlink(missing_ok=True)
            shutil.rmtree(parts_dir_for(self.merged), ignore_errors=True)

    def read_rows(self, index: int) -> Iterator[Row]:
        return read_rows(self.shard_file(index), self.shard_fmt)


@dataclass(frozen=True)
class ShardRows:
    """A Ray output as --dry-run reads it: the rows its shard files hold (what
    --resume keeps), not the merged file, which a crashed run never wrote."""

    layout: OutputLayout

    @property
    def fmt(self) -> str:
        return self.layout.fmt

    def done(self) -> dict[str, str]:
        rows: dict[str, str] = {}
        for path in self.layout.shard_files():
            rows.update(open_output(path, self.layout.shard_fmt).done())
        return rows


def plan_record(shards: Sequence[Shard], options: RunOptions, args, model_id: str) -> dict:
    """What must not change between a run and its resume (shards are matched by index):
    the model, every option marked RESUME_MUST_MATCH where it is declared (the
    encoder runtime and precision among them), and the shards."""
    return {
        "version": PLAN_VERSION,
        "model_id": model_id,
        **resume_facts(args, options),
        "shards": [list(shard.inputs) for shard in shards],
    }


def prepare_output(layout: OutputLayout, options: RunOptions, plan: dict) -> dict[int, dict]:
    """Apply --overwrite, refuse what cannot be resumed, write the plan; returns the
    done records of an earlier run."""
    if options.overwrite:
        layout.clear()
    done = layout.read_done()
    plan_path = layout.shards_dir / PLAN_FILE
    has_rows = bool(done) or bool(layout.shard_files())
    started = has_rows or (layout.merged is not None and layout.merged.exists())
    if started and not options.resuming:
        raise existing_output_error(layout.lock_target)
    if started and not plan_path.is_file():
        raise UsageError(
            f"{layout.lock_target} was not written by --engine ray (no {plan_path}); "
            "resume it with the local engine or pass --overwrite"
        )
    if has_rows and json.loads(plan_path.read_text(encoding="utf-8")) != plan:
        raise UsageError(
            f"the inputs or model options differ from the run that wrote {layout.lock_target} "
            "(--engine ray resumes the same inputs); pass --overwrite to start over"
        )
    make_folder(layout.shards_dir, "the shards folder")
    write_file(plan_path, json.dumps(plan, indent=1))
    return done


@dataclass(frozen=True)
class ShardWork:
    shard: Shard
    kept: dict[str, str]  # rows already in its file (key -> status): keys to skip


@dataclass
class Work:
    """What a (resumed) run does: the shards to read, and what it skips."""

    pending: list[ShardWork] = field(default_factory=list)
    skipped_shards: int = 0  # every key already done: not even read
    skipped_rows: int = 0


def plan_work(
    layout: OutputLayout,
    shards: Sequence[Shard],
    options,
    done,
    producer: tuple[str, str] | None = None,
) -> Work:
    """Per key, as the local engine: a shard whose keys are all done is skipped whole;
    any other shard with a file (cut short, or with errors to retry) keeps its rows
    by the job's rule and is read again for the keys it lacks."""
    work = Work()
    for shard in shards:
        record = done.get(shard.index)
        if record is not None and not (options.retry_errors and record.get("errors")):
            work.skipped_shards += 1
            work.skipped_rows += int(record["rows"])
            continue
        kept: dict[str, str] = {}
        if layout.shard_file(shard.index).exists():
            kept = resume_output(layout.shard_output(shard.index), options, producer)
        work.pending.append(ShardWork(shard, kept))
        work.skipped_rows += len(kept)
    return work
