"""Set-up of a training run: device, DDP, threads, and where the weights start.

`set_up(options)` resolves everything the epoch loop needs before the first
batch: the process group (torchrun), the device, the dataset and its splits,
and one of three starts — resume (OUT/last.pt: weights, optimizer, counters),
init-from (another run's weights and tokenizer, a new optimizer) or fresh (a
new tokenizer and config from the options). Each piece is a function that can
be called alone; `RunSetup.close()` tears the process group down.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from capbatch.errors import UsageError

from .checkpoint import config_from_checkpoint, load_checkpoint
from .config import ModelConfig, TrainOptions
from .data import CaptionDataset, CaptionedImage, read_dataset
from .model import EncoderDecoder, build_model
from .tokenizer import (
    CaptionTokenizer,
    load_pretrained_tokenizer,
    train_word_tokenizer,
    trim_tokenizer,
)

BEST, LAST = "best.pt", "last.pt"
# A vocabulary this large, of which the captions use under a quarter, is worth a warning.
BIG_VOCAB = 5000
# ModelConfig fields that --init-from may change (dropout: the checkpoint's is kept).
CHANGEABLE_ON_INIT = ("fine_tune_stages", "layout_init", "dropout")


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Distributed:
    """DDP when launched by torchrun (WORLD_SIZE > 1); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Distributed(rank, world, local)


def close_distributed(dist_info: Distributed) -> None:
    if dist_info.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def pick_device(requested: str, dist_info: Distributed) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        requested = f"cuda:{dist_info.local_rank}"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {requested}: CUDA is not available here")
    device = torch.device(requested)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and default allocations follow this rank's GPU
    return device


def set_threads(requested: int, dist_info: Distributed) -> int:
    """The decoder's matmuls are small: use every core this process may use, shared
    between local DDP ranks, and no interop pool fighting for the same cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = requested or max(1, (cores or 1) // max(1, dist_info.world))
    torch.set_num_threads(threads)
    return threads


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_tokenizer(options: TrainOptions, train: list[CaptionedImage]) -> CaptionTokenizer:
    captions = [c for image in train for c in image.captions]
    if options.tokenizer:
        pretrained = load_pretrained_tokenizer(options.tokenizer)
        if options.trim_tokenizer:
            return trim_tokenizer(pretrained, captions, options.min_word_freq)
        return pretrained
    return train_word_tokenizer(captions, min_frequency=options.min_word_freq)


def make_config(options: TrainOptions, tokenizer: CaptionTokenizer) -> ModelConfig:
    """The options' architecture with the tokenizer's vocabulary size and special ids."""
    return replace(
        options.model, vocab_size=tokenizer.vocab_size, **tokenizer.specials.config_fields()
    )


def continued_config(
    options: TrainOptions, saved: ModelConfig, tokenizer: CaptionTokenizer
) -> ModelConfig:
    """The checkpoint's config with the options that may change between phases;
    any other architecture option must match it or be left at its default."""
    default = ModelConfig()
    for f in fields(ModelConfig):
        if not f.metadata.get("cli", True) or f.name in CHANGEABLE_ON_INIT:
            continue
        wanted, kept = getattr(options.model, f.name), getattr(saved, f.name)
        if wanted != getattr(default, f.name) and wanted != kept:
            raise UsageError(
                f"--init-from keeps the checkpoint's {f.name} ({kept!r}); got {wanted!r}"
            )
    layout_init = options.model.layout_init
    if saved.layout_init and layout_init != saved.layout_init:
        raise UsageError(f"--init-from: the checkpoint has layout_init {saved.layout_init}")
    return replace(
        saved, fine_tune_stages=options.model.fine_tune_stages, layout_init=layout_init
    )


def load_continued_weights(model: EncoderDecoder, state: dict, path: Path) -> None:
    """Load a checkpoint's weights; only the layout-init layers may be new (zero-initialised)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    new = [k for k in missing if not k.startswith("decoder.layout")]
    if new or unexpected:
        raise UsageError(
            f"--init-from {path}: weights do not fit (missing {new[:3]}, unexpected "
            f"{list(unexpected)[:3]})"
        )


def vocab_warnings(config: ModelConfig, captions: list[list[int]]) -> list[str]:
    """A pretrained tokenizer far larger than the captions need: say what it costs.
    Its embedding and output layers grow with the vocabulary (V x (embed + decoder
    + 1) floats), and every decoding step scores all V tokens."""
    used = {i for ids in captions for i in ids}
    used |= {config.pad_id, config.start_id, config.end_id, config.unk_id}
    vocab = config.vocab_size
    if vocab < BIG_VOCAB or len(used) * 4 > vocab:
        return []
    per_token_mb = (config.embed_dim + config.decoder_dim + 1) * 4 / 1e6  # float32
    return [
        f"the tokenizer has {vocab:,} tokens and the training captions use {len(used):,}: "
        f"the decoder's embedding and output layers take {vocab * per_token_mb:.0f} MB "
        f"({len(used) * per_token_mb:.1f} MB would do) and every step scores all "
        f"{vocab:,}; --trim-tokenizer keeps only the tokens the captions use"
    ]


@dataclass(frozen=True)
class Start:
    """Where the weights come from: a resumed run, another run's checkpoint, or nothing."""

    resume: dict | None = None  # OUT/last.pt: weights, optimizer, scheduler, counters
    init_from: dict | None = None  # weights and tokenizer only

    @property
    def checkpoint(self) -> dict | None:
        return self.resume or self.init_from


def resolve_start(options: TrainOptions, out: Path) -> Start:
    if options.resume:
        if not (out / LAST).is_file():
            raise UsageError(f"--resume: no {out / LAST} to resume from")
        return Start(resume=load_checkpoint(out / LAST))
    if options.init_from:
        return Start(init_from=load_checkpoint(options.init_from))
    return Start()


def build_start_model(
    options: TrainOptions, start: Start, train: list[CaptionedImage]
) -> tuple[CaptionTokenizer, EncoderDecoder]:
    """The tokenizer and model of a run, weights loaded per its start."""
    saved = start.checkpoint
    tokenizer = CaptionTokenizer.from_checkpoint(saved) if saved else make_tokenizer(options, train)
    if start.resume:  # a resumed run keeps the architecture it was started with
        config = config_from_checkpoint(start.resume)
    elif start.init_from:
        config = continued_config(options, config_from_checkpoint(start.init_from), tokenizer)
    else:
        config = make_config(options, tokenizer)
    model = build_model(
        config, options.encoder_weights, pretrained=options.pretrained and not start.init_from
    )
    if start.resume:
        model.load_state_dict(start.resume["model"], strict=True)
    elif start.init_from:
        load_continued_weights(model, start.init_from["model"], options.init_from)
    return tokenizer, model


@dataclass
class RunSetup:
    options: TrainOptions
    dist: Distributed
    device: torch.device
    threads: int
    out: Path
    dataset: CaptionDataset
    train_images: list[CaptionedImage]
    val_images: list[CaptionedImage]
    start: Start
    tokenizer: CaptionTokenizer
    model: EncoderDecoder

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def close(self) -> None:
        close_distributed(self.dist)


def read_splits(
    options: TrainOptions, dataset: CaptionDataset
) -> tuple[list[CaptionedImage], list[CaptionedImage]]:
    train = dataset.split(options.train_split)
    val = dataset.split(options.val_split) if options.val_split in dataset.splits else []
    return train, val[: options.val_images] if options.val_images else val


def set_up(options: TrainOptions, dist_info: Distributed, out: Path) -> RunSetup:
    """Device, threads, seed, dataset and the model at its start (resume / init / fresh)."""
    device = pick_device(options.device, dist_info)
    threads = set_threads(options.threads, dist_info)
    seed_everything(options.seed)
    dataset = read_dataset(options.data, group_by=options.group_by)
    train, val = read_splits(options, dataset)
    start = resolve_start(options, out)
    tokenizer, model = build_start_model(options, start, train)
    model.to(device)
    return RunSetup(
        options, dist_info, device, threads, out, dataset, train, val, start, tokenizer, model
    )
