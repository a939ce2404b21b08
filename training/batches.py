"""Batches of a training run: captions as ids, image-major batches, encoder inputs.

`make_batches(setup)` turns the run's splits into a CaptionTable (every
training caption as ids), a FeatureSource for the training and validation
images (the cached output of the frozen encoder stages, or pixels when every
stage is fine-tuned) and the feature cache itself. Batches are built
image-major: an image's captions sit next to each other, so its attention
projection and initial state are computed once per batch, not once per caption
(the largest per-step cost on CPU after the LSTM).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .data import CaptionedImage
from .features import FeatureCache, build_feature_cache, load_images
from .model import EncoderDecoder
from .setup import RunSetup
from .tokenizer import CaptionTokenizer


@dataclass(frozen=True)
class CaptionTable:
    """Every training caption as ids, image-major, with its image's row."""

    image_names: tuple[str, ...]  # row -> image name
    image_of: np.ndarray  # (C,) image row of caption c
    captions: list[list[int]]  # C lists of ids, [start] ... [end]
    pad_id: int


def caption_table(
    images: list[CaptionedImage], tokenizer: CaptionTokenizer, max_len: int, per_image: int = 0
) -> CaptionTable:
    """per_image: the first N captions of each image (0 = all)."""
    image_of, captions = [], []
    for row, image in enumerate(images):
        for text in image.captions[: per_image or None]:
            image_of.append(row)
            captions.append(tokenizer.caption_ids(text, max_len))
    return CaptionTable(
        tuple(im.name for im in images),
        np.array(image_of, dtype=np.int64),
        captions,
        tokenizer.specials.pad,
    )


def epoch_batches(table: CaptionTable, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Caption indices per batch: images shuffled, each image's captions together."""
    rng = np.random.default_rng([seed, epoch])
    image_order = rng.permutation(len(table.image_names))
    by_image: list[list[int]] = [[] for _ in table.image_names]
    for caption, image in enumerate(table.image_of.tolist()):
        by_image[image].append(caption)
    order = np.array([c for image in image_order for c in by_image[image]], dtype=np.int64)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collate(table: CaptionTable, batch: np.ndarray):
    """-> distinct image rows (N,), image_index (B,) into them, captions (B, T) padded."""
    rows, image_index = np.unique(table.image_of[batch], return_inverse=True)
    longest = max(len(table.captions[c]) for c in batch)
    captions = torch.full((len(batch), longest), table.pad_id, dtype=torch.long)  # (B, T)
    for i, c in enumerate(batch.tolist()):
        ids = table.captions[c]
        captions[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return rows, torch.from_numpy(image_index.reshape(-1)), captions


class FeatureSource:
    """Encoder inputs for image rows: what the frozen stages hand on (cached; the
    whole encoder's features when every stage is frozen), or uint8 pixels when
    every stage is fine-tuned. The trained stages run inside TrainStep, so DDP
    syncs their grads."""

    def __init__(
        self,
        model: EncoderDecoder,
        images: list[CaptionedImage],
        cache: FeatureCache | None,
        workers: int,
    ):
        self.model, self.images, self.cache = model, images, cache
        self.cache_rows = cache.rows([im.name for im in images]) if cache else None
        self.pool = ThreadPoolExecutor(max(1, workers)) if cache is None else None

    @property
    def from_images(self) -> bool:
        return self.cache is None

    def inputs(self, rows: np.ndarray, device: torch.device) -> torch.Tensor:
        if self.cache is not None:
            return self.cache.batch(self.cache_rows[rows]).to(device)  # (N, L, D)
        paths = [self.images[r].path for r in rows]
        pixels = load_images(paths, self.model.config.preprocess, self.pool)
        return torch.from_numpy(pixels).to(device)  # (N, S, S, 3) uint8

    def features(self, rows: np.ndarray, device: torch.device) -> torch.Tensor:
        return encoder_features(self.model, self.inputs(rows, device), self.from_images)


def encoder_features(model: EncoderDecoder, inputs: torch.Tensor, from_images: bool):
    """Pixels or a cached prefix -> region features (N, L, D)."""
    encoder = model.encoder
    if from_images:
        return encoder(inputs)
    return encoder.from_prefix(inputs, encoder.trainable_from)


class TrainStep(nn.Module):
    """What DDP wraps: encoder inputs + captions -> logits (B, T-1, V), alphas (B, T-1, L)."""

    def __init__(self, model: EncoderDecoder, from_images: bool):
        super().__init__()
        self.model = model
        self.from_images = from_images

    def forward(self, inputs: torch.Tensor, captions: torch.Tensor, image_index: torch.Tensor):
        features = encoder_features(self.model, inputs, self.from_images)  # (N, L, D)
        return self.model.decoder(features, captions, image_index)


def open_feature_cache(setup: RunSetup) -> FeatureCache | None:
    """What the frozen encoder stages give for every image of the dataset (None
    when every stage is fine-tuned: the encoder then runs on pixels every step).
    Rank 0 computes, the other ranks wait and then open what it wrote."""
    upto = setup.model.encoder.trainable_from
    if upto == 0:
        return None
    options = setup.options
    root = options.cache_dir or setup.out / "features"
    everything = {im.name: im.path for split in setup.dataset.splits.values() for im in split}
    items = list(everything.items())
    encoder = setup.model.encoder
    cache = None
    if setup.dist.main:
        cache = build_feature_cache(
            encoder, items, root, workers=options.workers, device=setup.device,
            progress=options.progress, upto=upto,
        )  # fmt: skip
    barrier(setup)
    return cache if setup.dist.main else build_feature_cache(encoder, items, root, upto=upto)


def barrier(setup: RunSetup) -> None:
    if setup.dist.world > 1:
        import torch.distributed as dist

        dist.barrier()


@dataclass
class Batches:
    table: CaptionTable  # training captions
    source: FeatureSource  # training images' encoder inputs
    val_source: FeatureSource  # validation images' encoder inputs
    cache: FeatureCache | None


def make_batches(setup: RunSetup) -> Batches:
    cache = open_feature_cache(setup)
    workers = setup.options.workers
    table = caption_table(
        setup.train_images, setup.tokenizer, setup.config.max_len,
        setup.options.captions_per_image,
    )  # fmt: skip
    return Batches(
        table,
        FeatureSource(setup.model, setup.train_images, cache, workers),
        FeatureSource(setup.model, setup.val_images, cache, workers),
        cache,
    )
