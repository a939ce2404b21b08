"""The Ray engine's stages, run on workers: read + decode tasks (one per shard) and
the captioning actors; `caption_dataset` for use inside a Ray program.

Records travel between stages as plain dicts / Arrow rows: the row's fields
(capbatch.rows) plus the shard bookkeeping of _SHARD_COLUMNS. Each shard ends
with a marker record carrying how many items it emitted, so the driver can tell
a complete shard from one whose blocks were lost.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..batch_rows import Decoded, KeyedItem, caption_batch, decode_or_reason
from ..bundle import bundle_facts
from ..captioner import Captioner, CaptionerArgs
from ..image_decode import DecodedImage
from ..preprocess import PreprocessSpec
from ..rows import ROW_FIELDS, parquet_schema
from ..sources import escape_undecodable, iter_sources
from .ray_options import RayOptions, import_ray

# Columns the stages carry besides the row: which shard, and the shard's end marker.
_SHARD_COLUMNS = ("shard", "end", "count")


def read_shard(
    shard: dict, *, recursive: bool, glob: str | None, cwd: str, spec: dict
) -> Iterator[dict]:
    """flat_map: one shard -> its items decoded (key + pixels or the reason), then an end
    marker with the count. Reading and decoding share the task: no raw bytes travel.
    Keys in shard["skip"] (done by an earlier run) are passed over, as the local
    engine passes over them.

    Relative inputs mean what they meant on the driver: its working directory,
    when the worker's machine has it (on a cluster, give absolute shared paths).
    """
    if os.path.isdir(cwd) and os.getcwd() != cwd:
        os.chdir(cwd)
    skip = frozenset(shard.get("skip") or ())
    count = 0
    for item in iter_sources(list(shard["inputs"]), recursive=recursive, glob=glob):
        if item.key in skip:
            continue
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
    decoded = decode_or_reason(bytes(data or b""), PreprocessSpec(**spec))
    if isinstance(decoded, str):
        out["error"] = decoded
    else:
        out.update(pixels=decoded.pixels.tobytes(), width=decoded.width, height=decoded.height)
    return out


class CaptionActor:
    """map_batches class: loads the bundle once per actor, captions decoded items
    with the job's caption_batch (the local engine's rows and inference guard)."""

    def __init__(self, args: CaptionerArgs) -> None:
        self.captioner = Captioner.from_args(args)
        self.size = self.captioner.preprocess.size

    def _decoded(self, record: dict) -> Decoded:
        if record["error"] is not None:
            return record["error"]
        pixels = np.frombuffer(record["pixels"], np.uint8)
        pixels = pixels.reshape(self.size, self.size, 3)  # (S, S, 3) uint8
        return DecodedImage(pixels, record["width"], record["height"])

    def __call__(self, batch):
        import pyarrow as pa

        records = batch.to_pylist()
        items = [
            (KeyedItem(record["key"], record["path"]), self._decoded(record))
            for record in records
            if not record["end"]
        ]
        rows = iter(caption_batch(self.captioner, items).rows)
        out = []
        for record in records:
            base = {name: record[name] for name in _SHARD_COLUMNS}
            if record["end"]:
                out.append({**base, **dict.fromkeys(ROW_FIELDS), "key": ""})
            else:
                out.append({**base, **next(rows).to_record()})
        return pa.Table.from_pylist(out, schema=_stage_schema(pa))


def _stage_schema(pa):
    leading = (("shard", pa.int64()), ("end", pa.bool_()), ("count", pa.int64()))
    return parquet_schema(pa, leading)


def caption_stage(ray, decoded, args: CaptionerArgs, ray_options: RayOptions):
    return decoded.map_batches(
        CaptionActor,
        fn_constructor_kwargs={"args": args},
        compute=ray.data.ActorPoolStrategy(size=ray_options.actors),
        batch_size=args.batch_size,
        batch_format="pyarrow",
        num_cpus=1,
        num_gpus=ray_options.actor_gpus(args.device),
    )


def shard_dataset(ray, shards: Sequence[dict], options, ray_options: RayOptions, spec):
    """shards: {"shard": index, "inputs": [...], "skip": [keys]} -> decoded items."""
    # One block per shard, so every shard is its own read task (and retry unit).
    listed = ray.data.from_items(list(shards), override_num_blocks=len(shards))
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


def caption_dataset(
    items,
    args: CaptionerArgs,
    *,
    actors: int = 1,
    gpus_per_actor: float | None = None,
    spec: PreprocessSpec | None = None,
):
    """For use inside a Ray program: a Dataset of items -> a Dataset of capbatch rows.

    `items` has a `key` (string) column and a `data` (image file bytes) or a `path`
    column (read on the workers), or both. Decoding runs as tasks; captioning in
    `actors` actors, each loading the bundle once. The result has the columns of
    ROW_FIELDS, the local engine's rows; keep input order with
    DataContext.execution_options.preserve_order = True.
    """
    ray = import_ray()
    spec = spec or bundle_facts(args.model).preprocess
    ray_options = RayOptions(actors=actors, gpus_per_actor=gpus_per_actor)
    decoded = items.map(decode_item, fn_kwargs={"spec": spec.to_dict()})
    captioned = caption_stage(ray, decoded, args, ray_options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "use expr": its syntax varies by version
        rows = captioned.filter(lambda row: not row["end"])
    return rows.select_columns(list(ROW_FIELDS))
