"""Feature cache: run the frozen encoder once per image, train the decoder from disk.

The encoder is frozen by default, so its output for an image never changes
during training. Computing it once (float16, memory-mapped) instead of every
epoch is what makes CPU training practical: an epoch then costs only the small
decoder.

Layout of one cache (a directory per encoder fingerprint under the cache root):

    <root>/<fingerprint[:16]>/index.json      {"version", "fingerprint", "names", "digests",
                                               "shape", "dtype"}
    <root>/<fingerprint[:16]>/features.f16    raw float16, shape (N, L, D), row i = names[i]
                                              whose file had sha256 digests[i]

Partial fine-tuning (the last N stages trained) caches instead what the frozen
stages hand on, flat per image: shape (N, F) (ImageEncoder.prefix), and the
fingerprint then covers only the frozen stages' weights.

The fingerprint hashes the encoder-relevant config (backbone, taps, positions,
normalisation, preprocessing) and every encoder tensor, so a different
encoder or weights file can never be served stale features. A row is keyed on
the image's name AND the digest of its bytes, so an image replaced under the
same name gets new features (the old row stays, unused). A build that is
interrupted resumes from its `.partial` files; adding images to a cache copies
the rows it already has instead of recomputing them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from capbatch.output.durable import create_exclusive, make_folder, write_file
from capbatch.preprocess import PreprocessSpec, preprocess_image

from .data import DatasetError
from .model import ImageEncoder

INDEX_FILE = "index.json"
DATA_FILE = "features.f16"
PARTIAL = ".partial"
INDEX_VERSION = 2  # 2: rows keyed on (name, content digest)


def content_digest(path: Path) -> str:
    """sha256 of a file's bytes (hex, 32 chars): what a cached row was computed from."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:32]


def encoder_fingerprint(encoder: ImageEncoder, upto: int | None = None) -> str:
    """sha256 of what determines the cached output: config fields and weights
    (of stages [0, upto) only when the cache holds a frozen prefix)."""
    config = encoder.config
    whole = upto is None or upto == len(encoder.stages)
    relevant = {
        "encoder": config.encoder,
        "feature_taps": list(config.feature_taps),
        "position_features": config.position_features,
        "colour_grid": config.colour_grid,
        "mean": list(config.mean),
        "std": list(config.std),
        "preprocess": config.preprocess.to_dict(),
    }
    if not whole:
        relevant["prefix_stages"] = upto
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        if not whole and name.startswith("stages.") and int(name.split(".")[1]) >= upto:
            continue  # trained stages: not part of what the prefix cache holds
        digest.update(name.encode())
        raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        digest.update(raw.numpy().tobytes())
    return digest.hexdigest()


def load_image(path: Path, spec: PreprocessSpec) -> np.ndarray:
    """One image file -> the encoder's uint8 (S, S, 3) input, via the shared preprocess."""
    try:
        with Image.open(path) as image:
            image.load()
            return preprocess_image(image, spec)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from exc


def load_images(paths: Sequence[Path], spec: PreprocessSpec, pool: ThreadPoolExecutor | None):
    """Decode + resize a batch; Pillow releases the GIL while decoding, so threads help."""
    arrays = (
        pool.map(lambda p: load_image(p, spec), paths)
        if pool
        else (load_image(p, spec) for p in paths)
    )
    return np.stack(list(arrays))  # (B, S, S, 3) uint8


@dataclass(frozen=True)
class FeatureCache:
    directory: Path
    fingerprint: str
    names: tuple[str, ...]
    digests: tuple[str, ...]  # content digest of row i's image when it was computed
    features: np.ndarray  # (N, L, D) float16 memmap, read-only
    # name -> row for the images this cache was opened for (their current contents).
    current: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def row_of(self) -> dict[str, int]:
        if self.current:
            return self.current
        return {name: row for row, name in enumerate(self.names)}  # the latest row of a name

    def for_images(self, keys: Sequence[tuple[str, str]]) -> FeatureCache:
        """The same cache, answering `rows` with the rows of these (name, digest) keys."""
        row_of_key = {key: row for row, key in enumerate(zip(self.names, self.digests))}
        return replace(self, current={key[0]: row_of_key[key] for key in keys})

    def rows(self, names: Sequence[str]) -> np.ndarray:
        row_of = self.row_of
        missing = [n for n in names if n not in row_of]
        if missing:
            raise KeyError(
                f"feature cache {self.directory} lacks {missing[:3]} ({len(missing)} images)"
            )
        return np.array([row_of[n] for n in names], dtype=np.int64)

    def batch(self, rows: np.ndarray) -> torch.Tensor:
        """float32 features (B, L, D) for cache rows ((B, F) for a prefix cache)."""
        return torch.from_numpy(np.asarray(self.features[rows], dtype=np.float32))

    @classmethod
    def open(cls, directory: Path, fingerprint: str | None = None) -> FeatureCache | None:
        """The complete cache in `directory`, or None if absent, of an older layout
        or for another encoder."""
        index_path = directory / INDEX_FILE
        if not index_path.is_file() or not (directory / DATA_FILE).is_file():
            return None
        try:
            index = json.loads(index_path.read_text())
        except json.JSONDecodeError:
            return None
        if index.get("version") != INDEX_VERSION:
            return None
        if fingerprint is not None and index.get("fingerprint") != fingerprint:
            return None
        shape = tuple(index["shape"])
        if (directory / DATA_FILE).stat().st_size != int(np.prod(shape)) * 2:
            return None
        features = np.memmap(directory / DATA_FILE, dtype=np.float16, mode="r", shape=shape)
        names, digests = tuple(index["names"]), tuple(index["digests"])
        return cls(directory, index["fingerprint"], names, digests, features)


def build_feature_cache(
    encoder: ImageEncoder,
    images: Sequence[tuple[str, Path]],
    cache_root: Path | str,
    batch_size: int = 32,
    workers: int = 2,
    device: str | torch.device = "cpu",
    progress: bool = False,
    upto: int | None = None,
) -> FeatureCache:
    """Features for every (name, path) as its file is now, computing only rows
    not cached yet (new images, and images whose bytes changed).

    upto: cache only what the first `upto` stages hand on (ImageEncoder.prefix;
    partial fine-tuning trains the rest); None: the whole encoder's features."""
    upto = len(encoder.stages) if upto is None else upto
    fingerprint = encoder_fingerprint(encoder, upto)
    directory = Path(cache_root) / fingerprint[:16]
    make_folder(directory, "the feature cache folder")
    existing = FeatureCache.open(directory, fingerprint)
    paths = dict(images)
    with ThreadPoolExecutor(max(1, workers)) as pool:  # hashlib releases the GIL
        digests = list(pool.map(content_digest, paths.values()))
    keys = list(zip(paths, digests))
    have = set(zip(existing.names, existing.digests)) if existing else set()
    todo = [key for key in keys if key not in have]
    if existing and not todo:
        return existing.for_images(keys)
    kept = list(zip(existing.names, existing.digests)) if existing else []
    names = [n for n, _ in kept + todo]
    config = encoder.config
    shape = (len(names), *encoder.prefix_shape(upto))

    partial_index = directory / (INDEX_FILE + PARTIAL)
    partial_data = directory / (DATA_FILE + PARTIAL)
    index = {
        "version": INDEX_VERSION, "fingerprint": fingerprint, "names": names,
        "digests": [d for _, d in kept + todo], "shape": list(shape), "dtype": "float16",
    }  # fmt: skip
    filled = 0
    if partial_index.is_file() and partial_data.is_file():
        previous = json.loads(partial_index.read_text())
        if {k: previous.get(k) for k in index} == index:
            filled = int(previous.get("filled", 0))  # resume an interrupted build
    if partial_data.is_symlink():
        filled = 0
    out = _open_features(partial_data, shape, resume=bool(filled))
    if existing and filled < len(existing.names):  # rows already computed: copied
        out[: len(existing.names)] = existing.features
        filled = len(existing.names)
        _write_index(partial_index, {**index, "filled": filled})

    encoder = encoder.eval().to(device)
    bar = _progress(len(names) - filled, "features", progress)
    with ThreadPoolExecutor(max(1, workers)) as pool, torch.inference_mode():
        for start in range(filled, len(names), batch_size):
            chunk = names[start : start + batch_size]
            pixels = torch.from_numpy(
                load_images([paths[n] for n in chunk], config.preprocess, pool)
            )
            features = encoder.prefix(pixels.to(device), upto)  # (B, L, D) when whole
            out[start : start + len(chunk)] = features.float().cpu().numpy().astype(np.float16)
            out.flush()
            _write_index(partial_index, {**index, "filled": start + len(chunk)})
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    del out
    os.replace(partial_data, directory / DATA_FILE)
    _write_index(directory / INDEX_FILE, index)
    partial_index.unlink(missing_ok=True)
    cache = FeatureCache.open(directory, fingerprint)
    if cache is None:
        raise RuntimeError(f"feature cache {directory} did not verify after writing")
    return cache.for_images(keys)


def _write_index(path: Path, index: dict) -> None:
    write_file(path, json.dumps(index))


def _open_features(path: Path, shape: tuple[int, ...], resume: bool) -> np.memmap:
    """The partial features file as a memmap. A new one is created exclusively (a link
    planted at its name is removed, never written through); one resumed must be the
    regular file an earlier build left."""
    if resume and not path.is_symlink():
        return np.memmap(path, dtype=np.float16, mode="r+", shape=shape)
    path.unlink(missing_ok=True)
    fd = create_exclusive(path)
    try:
        os.ftruncate(fd, int(np.prod(shape)) * np.dtype(np.float16).itemsize)
    finally:
        os.close(fd)
    return np.memmap(path, dtype=np.float16, mode="r+", shape=shape)


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)
