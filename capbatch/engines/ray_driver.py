"""`capbatch caption --engine ray`: the caption job on Ray Data, for archives bigger
than one machine.

    inputs -> shards (planned on the driver) -> read + decode tasks (one per shard)
           -> captioning actors (one Captioner per actor, map_batches)
           -> the driver writes one output file per shard, records it as done,
              and merges the shards into --out at the end

Rows, the inference guard and the per-key resume rule are the job's
(capbatch.job), so keys, order and error rows are the local engine's.
docs/scale-out.md has the layout and the rules.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..bundle import bundle_facts
from ..captioner import CaptionerArgs
from ..job import Engine, RunHooks, RunOptions, check_engine_options
from ..output import Output, open_output
from ..output_lock import OutputLock
from ..rows import OK, Row
from .ray_options import (
    RayOptions,
    RaySummary,
    check_resources,
    data_context,
    import_ray,
    ray_session,
)
from .ray_plan import (
    OutputLayout,
    ShardRows,
    plan_record,
    plan_shards,
    plan_work,
    prepare_output,
)
from .ray_stages import caption_stage, shard_dataset


@dataclass
class _OpenShard:
    output: Output
    kept: dict[str, str]  # rows an earlier run left in the file
    keys: set[str] = field(default_factory=set)  # keys written by this run
    ok: int = 0
    errors: int = 0


class ShardFiles:
    """The driver's side: rows arrive in order, per shard; a shard file is closed and
    recorded as done when the shard's end marker arrives and every row is there."""

    def __init__(
        self, layout: OutputLayout, summary: RaySummary, kept: Mapping[int, dict] | None = None
    ) -> None:
        self.layout, self.summary = layout, summary
        self.kept = dict(kept or {})  # shard -> rows kept from an earlier run
        self.open: dict[int, _OpenShard] = {}
        self.finished: set[int] = set()

    def _state(self, shard: int) -> _OpenShard:
        if shard not in self.open:
            kept = self.kept.get(shard, {})
            output = self.layout.shard_output(shard)
            output.begin(append=bool(kept))
            self.open[shard] = _OpenShard(output, kept)
        return self.open[shard]

    def add(self, records: Sequence[dict]) -> None:
        by_shard: dict[int, list[Row]] = {}
        for record in records:
            shard = int(record["shard"])
            if record["end"]:
                self._flush(by_shard)
                by_shard = {}
                self._finish(shard, int(record["count"]))
                continue
            state = self._state(shard)
            if record["key"] in state.keys:  # a retried task's repeat
                continue
            state.keys.add(record["key"])
            by_shard.setdefault(shard, []).append(Row.from_record(record))
        self._flush(by_shard)

    def _flush(self, by_shard: dict[int, list[Row]]) -> None:
        for shard, rows in by_shard.items():
            state = self._state(shard)
            written = state.output.write(rows)
            ok = sum(row.status == OK for row in written)
            state.ok += ok
            state.errors += len(written) - ok
            self.summary.count(written)

    def _finish(self, shard: int, expected: int) -> None:
        state = self._state(shard)
        del self.open[shard]
        state.output.close()
        if len(state.keys) != expected:  # blocks of this shard were lost after their retries
            self._fail(shard, state)
            return
        kept_errors = sum(status != OK for status in state.kept.values())
        rows = len(state.kept) + state.ok + state.errors
        self.layout.record_done(
            {"shard": shard, "rows": rows, "errors": kept_errors + state.errors}
        )
        self.finished.add(shard)
        self.summary.shards_done += 1

    def _fail(self, shard: int, state: _OpenShard) -> None:
        # Its file stays (the rows that came are rows; --resume adds the rest), but
        # they are not in --out, so the summary does not count them.
        self.summary.ok -= state.ok
        self.summary.errors -= state.errors
        self.summary.failed_shards.append(shard)
        self.finished.add(shard)

    def close(self, expected: Sequence[int], *, interrupted: bool) -> None:
        """Close what is open; without an interrupt, every expected shard that did not
        finish (including one whose rows never came) is failed. An interrupted
        shard's rows stay in its file for --resume."""
        for shard in list(self.open):
            state = self.open.pop(shard)
            state.output.close()
            if not interrupted:
                self._fail(shard, state)
        if not interrupted:
            for shard in expected:
                if shard not in self.finished and shard not in self.summary.failed_shards:
                    self.summary.failed_shards.append(shard)


def merge_shards(layout: OutputLayout, shard_indices: Sequence[int], chunk: int = 4096) -> int:
    """Write the merged file from the done shards, in shard order; a key that two
    shards hold (overlapping inputs) keeps its first row, as the local engine does."""
    assert layout.merged is not None
    seen: set[str] = set()
    written = 0
    with open_output(layout.merged, layout.fmt) as merged:
        merged.begin(append=False)
        rows: list[Row] = []
        for index in shard_indices:
            for row in layout.read_rows(index):
                if row.key in seen:
                    continue
                seen.add(row.key)
                rows.append(row)
                if len(rows) == chunk:
                    written += len(merged.write(rows))
                    rows = []
        written += len(merged.write(rows))
    return written


class RayRun:
    """A request on the Ray engine (capbatch.engines.EngineRun): Ray and the output
    layout checked here, before the model; the model path made absolute (actors may
    start in another working directory)."""

    def __init__(self, request) -> None:
        import_ray()  # without Ray: the one-line install hint, nothing else
        options = request.job
        check_engine_options(Engine.ray, options, request.captioner, request.ray)
        self.request = request
        self.layout = OutputLayout.for_output(options.out, options.fmt)
        self.fmt = self.layout.fmt
        if self.layout.shard_fmt == "parquet" or self.fmt == "parquet":
            from ..output.parquet import import_pyarrow

            import_pyarrow()
        if self.layout.merged is not None:
            open_output(self.layout.merged, self.fmt)  # a link, folder or device refused
        model = request.captioner.model
        self.args = replace(
            request.captioner, model=None if model is None else str(Path(model).resolve())
        )

    def done(self) -> dict[str, str]:
        return ShardRows(self.layout).done()

    def run(self, hooks: RunHooks) -> RaySummary:
        where = self.request.ray.address or "a local Ray instance"
        hooks.say(f"engine ray on {where}, {self.request.ray.actors} captioning actor(s)")
        summary = run_on_ray(
            self.request.job, self.args, self.request.ray, stop=hooks.stop,
            on_progress=hooks.on_progress, on_start=hooks.on_start,
        )  # fmt: skip
        summary.encoder = summary.encoder or self.args.encoder_kind  # also when no row was new
        return summary


def run_on_ray(
    options: RunOptions,
    args: CaptionerArgs,
    ray_options: RayOptions | None = None,
    *,
    stop: threading.Event | None = None,
    on_progress: Callable[[RaySummary], None] | None = None,
    on_start: Callable[[], None] | None = None,
) -> RaySummary:
    """Caption every input on Ray into options.out (per-shard files + merged file).

    Joins a running Ray when called inside a Ray program, else the cluster at
    ray_options.address, else starts a local instance (shut down afterwards).
    """
    ray_options = ray_options or RayOptions()
    stop = stop or threading.Event()
    import_ray()  # the one-line install hint before anything else
    check_engine_options(Engine.ray, options, args, ray_options)
    layout = OutputLayout.for_output(options.out, options.fmt)
    facts = bundle_facts(args.model)
    model_id, spec = facts.model_id, facts.preprocess
    shards = plan_shards(options, ray_options.shard_size)
    summary = RaySummary(out=options.out, fmt=layout.fmt, shards=len(shards))
    with OutputLock(layout.lock_target):
        done = prepare_output(layout, options, plan_record(shards, options, args, model_id))
        work = plan_work(layout, shards, options, done, (model_id, args.encoder_kind))
        summary.shards_skipped, summary.skipped = work.skipped_shards, work.skipped_rows
        files = ShardFiles(layout, summary, {w.shard.index: w.kept for w in work.pending})
        if on_start is not None:
            on_start()
        try:
            if work.pending:
                with ray_session(ray_options) as ray, data_context(ray):
                    check_resources(ray.cluster_resources(), args.device, ray_options)
                    records = [
                        {
                            "shard": w.shard.index,
                            "inputs": list(w.shard.inputs),
                            "skip": list(w.kept),
                        }
                        for w in work.pending
                    ]
                    decoded = shard_dataset(ray, records, options, ray_options, spec)
                    captioned = caption_stage(ray, decoded, args, ray_options)
                    for batch in captioned.iter_batches(batch_format="pyarrow", batch_size=None):
                        files.add(batch.to_pylist())
                        if on_progress is not None:
                            on_progress(summary)
                        if stop.is_set():
                            break
        finally:
            summary.interrupted = stop.is_set()
            files.close([w.shard.index for w in work.pending], interrupted=summary.interrupted)
            summary.tick()
        if layout.merged is not None and not summary.interrupted:
            finished = sorted(layout.read_done())
            merge_shards(layout, [i for i in finished if i < len(shards)])
        summary.tick()
    return summary
