"""`capbatch caption --engine ray`: the same caption job on Ray Data, for archives
bigger than one machine.

    inputs -> shards (planned on the driver) -> read + decode tasks (one per shard)
           -> captioning actors (one Captioner per actor, map_batches)
           -> the driver writes one output file per shard, records it as done,
              and merges the shards into --out at the end

A shard is one tar/zip archive (a webdataset shard) or a run of up to
`shard_size` other inputs (files, folders, list-file entries); it is read by
capbatch.sources on a worker, so keys, order and error rows are the local
engine's. Each shard ends with a marker row carrying its item count: a shard is
done when all its rows have arrived, then recorded in `done.jsonl` and skipped
by a resumed run. docs/scale-out.md has the layout and the rules.

Ray is an optional extra: it is imported only when a job runs, and without it
`import_ray()` raises a one-line MissingDependencyError.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .captioner import OK, Captioner, error_result
from .decode import DecodedImage, decode_image
from .errors import BundleError, ExitCode, InputDecodeError, MissingDependencyError, UsageError
from .pipeline import RunOptions, RunSummary, rows_for
from .preprocess import PreprocessSpec
from .providers import Device, cpu_thread_count, parse_device
from .sources import (
    SourceItem,
    archive_kind,
    escape_undecodable,
    expand_braces,
    iter_sources,
    read_list,
)
from .writers import (
    ROW_FIELDS,
    OutputLock,
    Row,
    format_for,
    open_writer,
    parquet_schema,
    parts_dir_for,
)

INSTALL_HINT = "--engine ray needs Ray: pip install 'capbatch[ray]'"
PLAN_FILE = "plan.json"
DONE_FILE = "done.jsonl"
PLAN_VERSION = 1
# Columns the stages carry besides the row: which shard, and the shard's end marker.
_SHARD_COLUMNS = ("shard", "end", "count")


def import_ray():
    """The `ray` module with Ray Data, or a one-line MissingDependencyError."""
    try:
        import ray
        import ray.data  # noqa: F401 - the engine needs Ray Data, not only Ray core
    except ImportError:
        raise MissingDependencyError(INSTALL_HINT) from None
    return ray


# -- options -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelOptions:
    """What each actor loads: the Captioner's arguments (plain values, sent to the actors)."""

    model: str | None = None  # bundle directory; None = the built-in model
    device: str = "auto"
    beam_size: int = 1
    max_len: int | None = None
    batch_size: int = 32

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch size must be an integer >= 1, got {self.batch_size!r}")
        if not isinstance(self.beam_size, int) or self.beam_size < 1:
            raise ValueError(f"beam size must be an integer >= 1, got {self.beam_size!r}")
        if self.max_len is not None and (not isinstance(self.max_len, int) or self.max_len < 1):
            raise ValueError(f"max_len must be an integer >= 1, got {self.max_len!r}")
        try:
            parse_device(self.device)
        except UsageError as exc:
            raise ValueError(str(exc)) from None

    def load(self) -> Captioner:
        return Captioner(
            self.model,
            device=self.device,
            beam_size=self.beam_size,
            max_len=self.max_len,
            batch_size=self.batch_size,
        )


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray job runs."""

    address: str | None = None  # None: start a local Ray instance (loopback use only)
    actors: int = 1  # captioning actors (each loads the bundle once)
    shard_size: int = 256  # non-archive inputs per shard; each archive is its own shard
    shard_retries: int = 2  # task retries of a shard's read + decode before it counts as failed
    num_cpus: int | None = None  # local instance only; None: max(cores, actors + 1)
    gpus_per_actor: float | None = None  # None: 1 with device "cuda", else 0

    def __post_init__(self) -> None:
        if not isinstance(self.actors, int) or self.actors < 1:
            raise ValueError(f"actors must be an integer >= 1, got {self.actors!r}")
        if not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise ValueError(f"shard_size must be an integer >= 1, got {self.shard_size!r}")
        if not isinstance(self.shard_retries, int) or self.shard_retries < 0:
            raise ValueError(f"shard_retries must be an integer >= 0, got {self.shard_retries!r}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"num_cpus must be >= 1, got {self.num_cpus!r}")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise ValueError(f"gpus_per_actor must be >= 0, got {self.gpus_per_actor!r}")

    def actor_gpus(self, device: str) -> float:
        if self.gpus_per_actor is not None:
            return self.gpus_per_actor
        return 1.0 if parse_device(device) is Device.cuda else 0.0

    def local_cpus(self) -> int:
        # Every actor holds a CPU slot for its lifetime; one more keeps the read and
        # decode tasks schedulable (with actors == cores they would wait forever).
        return self.num_cpus or max(cpu_thread_count(), self.actors + 1)


@dataclass
class RaySummary(RunSummary):
    """RunSummary plus shard counts; failed shards make the exit code 1."""

    shards: int = 0
    shards_done: int = 0
    shards_skipped: int = 0  # done by an earlier run (resume)
    failed_shards: list[int] = field(default_factory=list)

    @property
    def exit_code(self) -> ExitCode:
        if self.interrupted:
            return ExitCode.INTERRUPTED
        return ExitCode.SOME_FAILED if self.errors or self.failed_shards else ExitCode.OK


# -- shards ------------------------------------------------------------------------------


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
        if out.is_dir() or (not out.suffix and fmt is None):
            shard_fmt = fmt or "parquet"
            if shard_fmt not in ("jsonl", "parquet"):
                raise UsageError("a shards-only --out folder holds jsonl or parquet shards")
            return cls(out, None, shard_fmt, shard_fmt)
        merged_fmt = format_for(out, fmt)
        if merged_fmt == "txt":
            raise UsageError("--engine ray writes csv, jsonl or parquet, not sidecars")
        shard_fmt = "parquet" if merged_fmt == "parquet" else "jsonl"
        return cls(out.with_name(out.name + ".shards"), out, merged_fmt, shard_fmt)

    @property
    def lock_target(self) -> Path:
        return self.merged or self.shards_dir

    def shard_file(self, index: int) -> Path:
        return self.shards_dir / f"shard-{index:05d}.{self.shard_fmt}"

    def read_done(self) -> dict[int, dict]:
        """shard index -> its done record ({"shard", "rows", "errors"}); torn tail ignored."""
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
        with open(self.shards_dir / DONE_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

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
        path = self.shard_file(index)
        if self.shard_fmt == "parquet":
            import pyarrow.parquet as pq

            for record in pq.read_table(path).to_pylist():
                yield Row(**record)
            return
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.endswith("\n"):
                    yield Row(**json.loads(line))


# -- the Ray stages (run on workers) ----------------------------------------------------


def read_shard(
    shard: dict, *, recursive: bool, glob: str | None, cwd: str, spec: dict
) -> Iterator[dict]:
    """flat_map: one shard -> its items decoded (key + pixels or the reason), then an end
    marker with the count. Reading and decoding share the task: no raw bytes travel.

    Relative inputs mean what they meant on the driver: its working directory,
    when the worker's machine has it (on a cluster, give absolute shared paths).
    """
    if os.path.isdir(cwd) and os.getcwd() != cwd:
        os.chdir(cwd)
    count = 0
    for item in iter_sources(list(shard["inputs"]), recursive=recursive, glob=glob):
        count += 1
        raw = {
            "shard": shard["shard"],
            "key": item.key,
            # Arrow strings are UTF-8 (else Ray pickles the column): a non-UTF-8 file name
            # travels escaped, as the row's path column writes it anyway.
            "path": None if item.path is None else escape_undecodable(item.path),
            "data": item.data,
            "error": None if item.data is not None else (item.error or "unreadable input"),
        }
        yield decode_item(raw, spec=spec)
    marker = {"shard": shard["shard"], "end": True, "count": count, "key": "", "path": None}
    yield decode_item(marker, spec=spec)


def decode_item(item: dict, *, spec: dict) -> dict:
    """map: key + bytes -> key + the encoder's input pixels (or the reason it failed)."""
    out = {
        "shard": item.get("shard", 0),
        "end": bool(item.get("end", False)),
        "count": item.get("count", 0),
        "key": item["key"],
        "path": item.get("path"),
        "error": item.get("error"),
        "pixels": b"",
        "width": -1,  # -1: unknown (ints stay ints through Arrow and numpy)
        "height": -1,
    }
    if out["end"] or out["error"] is not None:
        return out
    data = item.get("data")
    if data is None and out["path"]:  # key + path items (caption_dataset): read here
        try:
            data = Path(out["path"]).read_bytes()
        except OSError as exc:
            out["error"] = f"cannot read file: {exc.strerror or exc}"
            return out
    try:
        decoded = decode_image(bytes(data or b""), PreprocessSpec(**spec))
    except InputDecodeError as exc:
        out["error"] = str(exc)
        return out
    except Exception as exc:  # a decoder bug on one input must not fail the shard
        out["error"] = f"decode failed: {type(exc).__name__}: {exc}"
        return out
    out.update(pixels=decoded.pixels.tobytes(), width=decoded.width, height=decoded.height)
    return out


def _output_schema(pa):
    leading = [("shard", pa.int64()), ("end", pa.bool_()), ("count", pa.int64())]
    return parquet_schema(pa, leading)


class CaptionActor:
    """map_batches class: loads the bundle once per actor, captions decoded items."""

    def __init__(self, model: ModelOptions) -> None:
        self.captioner = model.load()
        self.size = self.captioner.preprocess.size

    def __call__(self, batch):
        import pyarrow as pa

        records = batch.to_pylist()
        chunk: list[tuple[SourceItem, DecodedImage | str]] = []
        for record in records:
            if record["end"]:
                continue
            item = SourceItem(record["key"], record["path"], None, None)
            if record["error"] is not None:
                chunk.append((item, record["error"]))
                continue
            pixels = np.frombuffer(record["pixels"], np.uint8)
            pixels = pixels.reshape(self.size, self.size, 3)  # (S, S, 3) uint8
            chunk.append((item, DecodedImage(pixels, record["width"], record["height"])))
        images = [decoded for _, decoded in chunk if not isinstance(decoded, str)]
        try:
            results = self.captioner.caption_decoded(images)
        except Exception as exc:  # onnxruntime failure on this batch: its rows say why
            reason = f"inference failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            results = [error_result(reason, d.width, d.height) for d in images]
        rows = iter(rows_for(chunk, results, self.captioner.model_id))
        out = []
        for record in records:
            base = {"shard": record["shard"], "end": record["end"], "count": record["count"]}
            if record["end"]:
                out.append({**base, **dict.fromkeys(ROW_FIELDS), "key": ""})
            else:
                out.append({**base, **next(rows).to_record()})
        return pa.Table.from_pylist(out, schema=_output_schema(pa))


def caption_dataset(
    items,
    model: ModelOptions,
    *,
    actors: int = 1,
    gpus_per_actor: float | None = None,
    spec: PreprocessSpec | None = None,
):
    """For use inside a Ray program: a Dataset of items -> a Dataset of capbatch rows.

    `items` has a `key` (string) column and a `data` (image file bytes) or a `path`
    column (read on the workers), or both. Decoding runs as tasks; captioning in `actors` actors, each loading the
    bundle once. The result has the columns of ROW_FIELDS, the local engine's rows;
    keep input order with DataContext.execution_options.preserve_order = True.
    """
    ray = import_ray()
    spec = spec or _bundle_facts(model)[1]
    ray_options = RayOptions(actors=actors, gpus_per_actor=gpus_per_actor)
    decoded = items.map(decode_item, fn_kwargs={"spec": spec.to_dict()})
    captioned = _caption_stage(ray, decoded, model, ray_options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "use expr": its syntax varies by version
        rows = captioned.filter(lambda row: not row["end"])
    return rows.select_columns(list(ROW_FIELDS))


def _caption_stage(ray, decoded, model: ModelOptions, ray_options: RayOptions):
    return decoded.map_batches(
        CaptionActor,
        fn_constructor_kwargs={"model": model},
        compute=ray.data.ActorPoolStrategy(size=ray_options.actors),
        batch_size=model.batch_size,
        batch_format="pyarrow",
        num_cpus=1,
        num_gpus=ray_options.actor_gpus(model.device),
    )


# -- the driver --------------------------------------------------------------------------


def _bundle_facts(model: ModelOptions) -> tuple[str, PreprocessSpec]:
    """model_id and preprocessing from the verified manifest, without opening sessions
    (the driver of a GPU cluster may have no GPU)."""
    from .bundle import resolve_bundle_dir
    from .manifest import verify_bundle

    bundle_dir = resolve_bundle_dir(model.model)
    manifest = verify_bundle(bundle_dir)
    try:
        return str(manifest["model_id"]), PreprocessSpec(**manifest["preprocess"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"manifest of {bundle_dir} is incomplete: {exc!r}") from exc


@contextmanager
def ray_session(ray_options: RayOptions):
    """Join the running Ray (inside a Ray program), the cluster at `address`, or start a
    local instance: usage stats, dashboard and token auth off; shut down afterwards."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if ray_options.address is not None:
        ray.init(address=ray_options.address, logging_level=logging.WARNING)
    else:
        # Set before init: the local instance's processes inherit them.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(
            num_cpus=ray_options.local_cpus(),
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    try:
        yield ray
    finally:
        ray.shutdown()


@contextmanager
def _data_context(ray):
    """Ordered output and tolerated failed blocks (a failed shard is reported by its
    missing rows), restored afterwards: the caller's Ray program keeps its settings."""
    context = ray.data.DataContext.get_current()
    saved = (
        context.execution_options.preserve_order,
        context.max_errored_blocks,
        context.enable_progress_bars,
    )
    context.execution_options.preserve_order = True
    context.max_errored_blocks = -1
    context.enable_progress_bars = False
    data_logger = logging.getLogger("ray.data")
    level = data_logger.level
    # Its per-run INFO lines and the "progress bars disabled" warning would break our
    # progress bar; errors still show.
    data_logger.setLevel(logging.ERROR)
    try:
        yield context
    finally:
        data_logger.setLevel(level)
        (
            context.execution_options.preserve_order,
            context.max_errored_blocks,
            context.enable_progress_bars,
        ) = saved


def check_resources(resources: dict, model: ModelOptions, ray_options: RayOptions) -> None:
    """Refuse a job the cluster can never schedule: Ray Data would wait for it forever."""
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    if cpus < ray_options.actors + 1:
        raise UsageError(
            f"--actors {ray_options.actors} needs {ray_options.actors + 1} CPUs in Ray "
            f"(one per actor, one for reading); the cluster has {cpus:g}"
        )
    wanted = ray_options.actors * ray_options.actor_gpus(model.device)
    if wanted > gpus:
        raise UsageError(
            f"--device {model.device} with {ray_options.actors} actor(s) needs {wanted:g} GPUs "
            f"in Ray; the cluster has {gpus:g}"
        )


def _plan_record(shards: Sequence[Shard], options: RunOptions, model: ModelOptions, model_id):
    return {
        "version": PLAN_VERSION,
        "model_id": model_id,
        "beam_size": model.beam_size,
        "max_len": model.max_len,
        "recursive": options.recursive,
        "glob": options.glob,
        "shards": [list(shard.inputs) for shard in shards],
    }


def _prepare_output(layout: OutputLayout, options: RunOptions, plan: dict) -> dict[int, dict]:
    """Apply --overwrite/--resume/--retry-errors; returns the done records to keep."""
    if options.overwrite:
        layout.clear()
    done = layout.read_done()
    plan_path = layout.shards_dir / PLAN_FILE
    started = bool(done) or (layout.merged is not None and layout.merged.exists())
    resuming = options.resume or options.retry_errors
    if started and not resuming:
        raise UsageError(
            f"{layout.lock_target} already exists; pass --resume to continue it "
            "(--retry-errors to also redo shards with failed images) or --overwrite to start over"
        )
    if started and not plan_path.is_file():
        raise UsageError(
            f"{layout.lock_target} was not written by --engine ray (no {plan_path}); "
            "resume it with the local engine or pass --overwrite"
        )
    if plan_path.is_file():
        previous = json.loads(plan_path.read_text(encoding="utf-8"))
        if done and previous != plan:
            raise UsageError(
                f"the inputs or model options differ from the run that wrote {layout.lock_target} "
                "(shards are matched by position); pass --overwrite to start over"
            )
    layout.shards_dir.mkdir(parents=True, exist_ok=True)
    plan_path.write_text(json.dumps(plan, indent=1), encoding="utf-8")
    if options.retry_errors:
        done = {index: record for index, record in done.items() if record.get("errors") == 0}
    return done


class _ShardFiles:
    """The driver's side: rows arrive in order, per shard; a shard file is closed and
    recorded when the shard's end marker arrives and every row is there."""

    def __init__(self, layout: OutputLayout, summary: RaySummary) -> None:
        self.layout, self.summary = layout, summary
        self.open: dict[int, tuple[Any, set[str], list[int]]] = {}  # writer, keys, [ok, errors]
        self.finished: set[int] = set()

    def _state(self, shard: int):
        if shard not in self.open:
            writer = open_writer(self.layout.shard_file(shard), self.layout.shard_fmt, append=False)
            self.open[shard] = (writer, set(), [0, 0])
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
            _, keys, _ = self._state(shard)
            if record["key"] in keys:  # a retried task's repeat
                continue
            keys.add(record["key"])
            by_shard.setdefault(shard, []).append(Row(**{k: record[k] for k in ROW_FIELDS}))
        self._flush(by_shard)

    def _flush(self, by_shard: dict[int, list[Row]]) -> None:
        for shard, rows in by_shard.items():
            writer, _, counts = self._state(shard)
            writer.write(rows)
            ok = sum(row.status == OK for row in rows)
            counts[0] += ok
            counts[1] += len(rows) - ok
            self.summary.ok += ok
            self.summary.errors += len(rows) - ok

    def _finish(self, shard: int, expected: int) -> None:
        writer, keys, (ok, errors) = self._state(shard)
        del self.open[shard]
        writer.close()
        if len(keys) != expected:  # blocks of this shard were lost after their retries
            self._fail(shard, ok, errors)
            return
        self.layout.record_done({"shard": shard, "rows": ok + errors, "errors": errors})
        self.finished.add(shard)
        self.summary.shards_done += 1

    def _fail(self, shard: int, ok: int, errors: int) -> None:
        self.layout.shard_file(shard).unlink(missing_ok=True)
        self.summary.ok -= ok
        self.summary.errors -= errors
        self.summary.failed_shards.append(shard)
        self.finished.add(shard)

    def close(self, expected: Sequence[int], *, interrupted: bool) -> None:
        """Close what is open; without an interrupt, every expected shard that did not
        finish (including one whose rows never came) is failed."""
        for shard in list(self.open):
            writer, _, (ok, errors) = self.open.pop(shard)
            writer.close()
            if interrupted:  # not failed: the rerun redoes it
                self.layout.shard_file(shard).unlink(missing_ok=True)
                self.summary.ok -= ok
                self.summary.errors -= errors
            else:
                self._fail(shard, ok, errors)
        if not interrupted:
            for shard in expected:
                if shard not in self.finished and shard not in self.summary.failed_shards:
                    self.summary.failed_shards.append(shard)


def merge_shards(layout: OutputLayout, shard_indices: Sequence[int], chunk: int = 4096) -> int:
    """Write the merged file from the done shards, in shard order; a key that two
    shards hold (overlapping inputs) keeps its first row, as the local engine does."""
    assert layout.merged is not None
    seen: set[str] = set()
    writer = open_writer(layout.merged, layout.fmt, append=False)
    written = 0
    try:
        rows: list[Row] = []
        for index in shard_indices:
            for row in layout.read_rows(index):
                if row.key in seen:
                    continue
                seen.add(row.key)
                rows.append(row)
                if len(rows) == chunk:
                    writer.write(rows)
                    written, rows = written + len(rows), []
        if rows:
            writer.write(rows)
            written += len(rows)
    finally:
        writer.close()
    return written


def run_on_ray(
    options: RunOptions,
    model: ModelOptions,
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
    if options.attention_dir is not None:
        raise UsageError("--attention-dir is not supported with --engine ray")
    if options.workers is not None:
        raise UsageError("--workers is for the local engine; Ray runs decode tasks itself")
    layout = OutputLayout.for_output(options.out, options.fmt)
    model_id, spec = _bundle_facts(model)
    shards = plan_shards(options, ray_options.shard_size)
    summary = RaySummary(out=options.out, fmt=layout.fmt, shards=len(shards))
    with OutputLock(layout.lock_target):
        done = _prepare_output(layout, options, _plan_record(shards, options, model, model_id))
        pending = [shard for shard in shards if shard.index not in done]
        summary.shards_skipped = len(shards) - len(pending)
        summary.skipped = sum(int(done[s.index]["rows"]) for s in shards if s.index in done)
        files = _ShardFiles(layout, summary)
        if on_start is not None:
            on_start()
        try:
            if pending:
                with ray_session(ray_options) as ray, _data_context(ray):
                    check_resources(ray.cluster_resources(), model, ray_options)
                    decoded = _shard_dataset(ray, pending, options, ray_options, spec)
                    captioned = _caption_stage(ray, decoded, model, ray_options)
                    for batch in captioned.iter_batches(batch_format="pyarrow", batch_size=None):
                        files.add(batch.to_pylist())
                        summary.elapsed_s = time.monotonic() - summary.started
                        if on_progress is not None:
                            on_progress(summary)
                        if stop.is_set():
                            break
        finally:
            summary.interrupted = stop.is_set()
            files.close([shard.index for shard in pending], interrupted=summary.interrupted)
            summary.elapsed_s = time.monotonic() - summary.started
        if layout.merged is not None and not summary.interrupted:
            finished = sorted(layout.read_done())
            merge_shards(layout, [i for i in finished if i < len(shards)])
        summary.elapsed_s = time.monotonic() - summary.started
    return summary


def _shard_dataset(ray, shards: Sequence[Shard], options, ray_options: RayOptions, spec):
    records = [{"shard": shard.index, "inputs": list(shard.inputs)} for shard in shards]
    # One block per shard, so every shard is its own read task (and retry unit).
    listed = ray.data.from_items(records, override_num_blocks=len(records))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return listed.flat_map(
            read_shard,
            fn_kwargs={
                "recursive": options.recursive,
                "glob": options.glob,
                "cwd": os.getcwd(),
                "spec": spec.to_dict(),
            },
            # Bounded retries of a shard's task, on worker death and on exceptions alike
            # (Ray Data's default retries a dying task forever). Ray 2.60 warns that these
            # arguments are deprecated in favour of named ones it does not offer yet.
            max_retries=ray_options.shard_retries,
            retry_exceptions=True,
        )
