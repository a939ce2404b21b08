"""The training loop: `capbatch-train fit --data DIR --out runs/NAME`.

One epoch = every training caption once. With the frozen encoder (default)
the decoder trains from the feature cache; with --fine-tune-stages N the
encoder runs on images every step. Batches are built image-major: an image's
captions sit next to each other, so its attention projection and initial
state are computed once per batch, not once per caption (the largest per-step
cost on CPU after the LSTM).

Per epoch: train, greedy-decode the validation images, score them (semantic
accuracy on generated scenes, BLEU-4 otherwise: --select-on), write last.pt
(and best.pt when the score improved), append a line to metrics.jsonl, stop
early after `patience` epochs without improvement. Shuffling and dropout
are seeded from (seed, epoch), so a resumed run continues the same sequence.
Several processes (torchrun, WORLD_SIZE > 1) train with DDP; rank 0 validates
and writes, and its BLEU-4 is broadcast so every rank takes the same decisions.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from capbatch.errors import UsageError

from .checkpoint import config_from_checkpoint, load_checkpoint, save_checkpoint
from .config import ModelConfig
from .data import CaptionDataset, CaptionedImage, read_dataset
from .evaluate import bleu_scores, caption_features, scene_facts, semantic_accuracy_of
from .features import FeatureCache, build_feature_cache, load_images
from .model import EncoderDecoder, build_model, caption_loss
from .tokenizer import CaptionTokenizer, load_pretrained_tokenizer, train_word_tokenizer

LR_SCHEDULES = ("plateau", "cosine", "constant")
# What validation measures to pick best.pt, halve the LR and stop early:
# "semantic" = fraction of captions whose parsed facts equal the scene's
# (generated scenes only); BLEU-4 barely tracks it on short formulaic captions.
SELECTION_METRICS = ("auto", "bleu4", "semantic")
METRICS_FILE = "metrics.jsonl"
BEST, LAST = "best.pt", "last.pt"


@dataclass(frozen=True)
class TrainOptions:
    data: Path
    out: Path
    encoder: str = "efficientnet_lite0"
    encoder_weights: Path | None = None
    pretrained: bool = True  # False: random encoder weights (tests only)
    epochs: int = 20
    batch_size: int = 32  # captions per batch
    lr: float = 3e-4
    encoder_lr: float = 1e-4  # for fine-tuned encoder stages
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    lr_schedule: str = "plateau"  # halve on a validation plateau | cosine per step | constant
    attention_weight: float = 1.0  # doubly-stochastic regularisation (lambda)
    dropout: float = 0.5
    embed_dim: int = 300
    attention_dim: int = 256
    decoder_dim: int = 512
    max_len: int = 30
    feature_taps: tuple[int, ...] = ()
    position_features: bool = False
    colour_grid: int = 0
    fine_tune_stages: int = 0
    layout_init: int = 0
    # Start from this checkpoint's weights, tokenizer and architecture (a new
    # optimizer and epoch count); only fine_tune_stages and layout_init may differ.
    init_from: Path | None = None
    tokenizer: Path | None = None  # local HF tokenizer dir; default: train a word tokenizer
    min_word_freq: int = 1
    patience: int = 5  # early stopping: epochs without a better val metric (0 = never stop)
    select_on: str = "auto"  # auto: semantic when the data has scenes.jsonl, else bleu4
    val_images: int = 500  # validation images decoded per epoch (0 = all)
    cache_dir: Path | None = None  # default: OUT/features
    seed: int = 0
    threads: int = 0  # torch CPU threads (0 = the cores this process may use)
    workers: int = 2  # image decoding threads
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    resume: bool = False
    progress: bool = True
    train_split: str = "train"
    val_split: str = "val"
    extra: dict = field(default_factory=dict)  # recorded in checkpoints, e.g. a run note

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError("epochs must be >= 1")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.lr <= 0 or self.encoder_lr <= 0:
            raise ValueError("learning rates must be > 0")
        if self.select_on not in SELECTION_METRICS:
            raise ValueError(f"select_on must be one of {SELECTION_METRICS}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}")
        if self.grad_clip < 0 or self.attention_weight < 0 or self.weight_decay < 0:
            raise ValueError("grad_clip, attention_weight and weight_decay must be >= 0")
        if self.patience < 0 or self.val_images < 0 or self.threads < 0:
            raise ValueError("patience, val_images and threads must be >= 0")
        if self.max_len < 2:
            raise ValueError("max_len must be >= 2")

    def to_dict(self) -> dict:
        """Plain data for the checkpoint (weights_only loading accepts no Path)."""
        return {
            k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in asdict(self).items()
        }


# --------------------------------------------------------------------------- setup


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
    if options.tokenizer:
        return load_pretrained_tokenizer(options.tokenizer)
    captions = [c for image in train for c in image.captions]
    return train_word_tokenizer(captions, min_frequency=options.min_word_freq)


def make_config(options: TrainOptions, tokenizer: CaptionTokenizer) -> ModelConfig:
    return ModelConfig(
        vocab_size=tokenizer.vocab_size,
        encoder=options.encoder,
        embed_dim=options.embed_dim,
        attention_dim=options.attention_dim,
        decoder_dim=options.decoder_dim,
        dropout=options.dropout,
        max_len=options.max_len,
        feature_taps=tuple(options.feature_taps),
        position_features=options.position_features,
        colour_grid=options.colour_grid,
        fine_tune_stages=options.fine_tune_stages,
        layout_init=options.layout_init,
        **tokenizer.specials.config_fields(),
    )


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class CaptionTable:
    """Every training caption as ids, image-major, with its image's row."""

    image_names: tuple[str, ...]  # row -> image name
    image_of: np.ndarray  # (C,) image row of caption c
    captions: list[list[int]]  # C lists of ids, [start] ... [end]
    pad_id: int


# Fit options that set the architecture: with --init-from they must agree
# with the checkpoint's config (or be left at their defaults).
ARCHITECTURE_OPTIONS = (
    "encoder", "embed_dim", "attention_dim", "decoder_dim", "max_len",
    "feature_taps", "position_features", "colour_grid",
)  # fmt: skip


def continued_config(
    options: TrainOptions, saved: ModelConfig, tokenizer: CaptionTokenizer
) -> ModelConfig:
    """The checkpoint's config with the options that may change between phases."""
    # Through make_config, so given and default values are normalised like saved ones.
    given = make_config(options, tokenizer)
    default = make_config(TrainOptions(data=options.data, out=options.out), tokenizer)
    for name in ARCHITECTURE_OPTIONS:
        wanted, kept = getattr(given, name), getattr(saved, name)
        if wanted != getattr(default, name) and wanted != kept:
            raise UsageError(
                f"--init-from keeps the checkpoint's {name} ({kept!r}); got {wanted!r}"
            )
    if saved.layout_init and options.layout_init != saved.layout_init:
        raise UsageError(f"--init-from: the checkpoint has layout_init {saved.layout_init}")
    return replace(
        saved, fine_tune_stages=options.fine_tune_stages, layout_init=options.layout_init
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


def caption_table(
    images: list[CaptionedImage], tokenizer: CaptionTokenizer, max_len: int
) -> CaptionTable:
    image_of, captions = [], []
    for row, image in enumerate(images):
        for text in image.captions:
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
    """Encoder inputs for image rows: cached features, or uint8 pixels when the
    encoder is fine-tuned (it then runs inside TrainStep, so DDP syncs its grads)."""

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
        inputs = self.inputs(rows, device)
        return self.model.encoder(inputs) if self.from_images else inputs  # (N, L, D)


class TrainStep(nn.Module):
    """What DDP wraps: encoder inputs + captions -> logits (B, T-1, V), alphas (B, T-1, L)."""

    def __init__(self, model: EncoderDecoder, from_images: bool):
        super().__init__()
        self.model = model
        self.from_images = from_images

    def forward(self, inputs: torch.Tensor, captions: torch.Tensor, image_index: torch.Tensor):
        features = self.model.encoder(inputs) if self.from_images else inputs  # (N, L, D)
        return self.model.decoder(features, captions, image_index)


# --------------------------------------------------------------------------- loop


def fit(options: TrainOptions) -> dict:
    """Train; returns a summary (best BLEU-4, epochs, paths)."""
    previous_threads = torch.get_num_threads()
    try:
        return _fit(options)
    finally:
        torch.set_num_threads(previous_threads)  # a library call leaves the process as it was


def _fit(options: TrainOptions) -> dict:
    dist_info = init_distributed(options.device)
    device = pick_device(options.device, dist_info)
    threads = set_threads(options.threads, dist_info)
    seed_everything(options.seed)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)

    dataset = read_dataset(options.data)
    select_on = selection_metric(options.select_on, dataset)  # fail before the cache
    train_images = dataset.split(options.train_split)
    val_images = dataset.split(options.val_split) if options.val_split in dataset.splits else []
    if options.val_images:
        val_images = val_images[: options.val_images]
    resume = load_checkpoint(out / LAST) if options.resume and (out / LAST).is_file() else None
    if options.resume and resume is None:
        raise UsageError(f"--resume: no {out / LAST} to resume from")
    start = load_checkpoint(options.init_from) if options.init_from and not resume else None
    tokenizer = (
        CaptionTokenizer.from_checkpoint(resume or start)
        if resume or start
        else make_tokenizer(options, train_images)
    )
    # A resumed run keeps the architecture it was started with.
    if resume:
        config = config_from_checkpoint(resume)
    elif start:
        config = continued_config(options, config_from_checkpoint(start), tokenizer)
    else:
        config = make_config(options, tokenizer)
    model = build_model(
        config, options.encoder_weights, pretrained=options.pretrained and not start
    )
    if resume:
        model.load_state_dict(resume["model"], strict=True)
    elif start:
        load_continued_weights(model, start["model"], options.init_from)
    model.to(device)

    cache = None
    if config.fine_tune_stages == 0:
        cache_root = options.cache_dir or out / "features"
        everything = {im.name: im.path for split in dataset.splits.values() for im in split}
        # Rank 0 computes, the others wait and then open what it wrote.
        if dist_info.main:
            cache = build_feature_cache(
                model.encoder,
                list(everything.items()),
                cache_root,
                workers=options.workers,
                device=device,
                progress=options.progress,
            )
        _barrier(dist_info)
        if not dist_info.main:
            cache = build_feature_cache(model.encoder, list(everything.items()), cache_root)

    scorer = ValidationScorer(select_on, dataset, val_images)
    table = caption_table(train_images, tokenizer, config.max_len)
    source = FeatureSource(model, train_images, cache, options.workers)
    val_source = FeatureSource(model, val_images, cache, options.workers)
    step_module: nn.Module = TrainStep(model, source.from_images)
    if dist_info.world > 1:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None
        )

    groups = [{"params": [p for p in model.decoder.parameters()], "lr": options.lr}]
    encoder_params = [p for p in model.encoder.parameters() if p.requires_grad]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": options.encoder_lr})
    optimizer = torch.optim.Adam(groups, weight_decay=options.weight_decay)
    steps_per_epoch = math.ceil(len(table.captions) / options.batch_size) // dist_info.world
    scheduler = make_scheduler(optimizer, options, max(1, steps_per_epoch))
    amp_dtype = _amp_dtype(device, options.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start_epoch, best, stale = 1, -1.0, 0
    if resume:
        optimizer.load_state_dict(resume["optimizer"])
        if scheduler is not None and resume.get("scheduler"):
            scheduler.load_state_dict(resume["scheduler"])
        start_epoch = int(resume["epoch"]) + 1
        extra = resume["extra"]
        best = float(extra.get("best_metric", extra.get("best_bleu4", -1.0)))
        stale = int(resume["extra"].get("stale_epochs", 0))

    summary = {
        "out": str(out),
        "select_on": select_on,
        "best_metric": best,
        "epochs_run": 0,
        "stopped_early": False,
        "threads": threads,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else None,
        "train_images": len(train_images),
        "train_captions": len(table.captions),
        "vocab_size": config.vocab_size,
    }
    for epoch in range(start_epoch, options.epochs + 1):
        torch.manual_seed(options.seed * 100_003 + epoch)  # dropout: reproducible on resume
        batches = epoch_batches(table, options.batch_size, options.seed, epoch)
        usable = len(batches) // dist_info.world * dist_info.world
        mine = (
            batches[dist_info.rank : usable : dist_info.world] if dist_info.world > 1 else batches
        )
        model.train()
        started = time.perf_counter()
        loss_sum, loss_count = 0.0, 0
        bar = _bar(
            len(mine), f"epoch {epoch}/{options.epochs}", options.progress and dist_info.main
        )
        for batch in mine:
            rows, image_index, captions = collate(table, batch)
            autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
            with autocast:
                inputs = source.inputs(rows, device)
                logits, alphas = step_module(inputs, captions.to(device), image_index.to(device))
                loss = caption_loss(
                    logits.float(),
                    alphas.float(),
                    captions.to(device),
                    config.pad_id,
                    options.attention_weight,
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if options.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(
                    [p for g in groups for p in g["params"]], options.grad_clip
                )
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None and options.lr_schedule == "cosine":
                scheduler.step()
            loss_sum += float(loss.detach()) * len(batch)
            loss_count += len(batch)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / loss_count:.3f}")
        if bar is not None:
            bar.close()
        train_seconds = time.perf_counter() - started

        score = validate(model, tokenizer, val_source, scorer, device) if dist_info.main else 0.0
        score = _broadcast(score, dist_info, device)
        if val_images:
            if scheduler is not None and options.lr_schedule == "plateau":
                scheduler.step(score)
            improved = score > best
            best, stale = (score, 0) if improved else (best, stale + 1)
        else:
            improved, stale = True, 0  # nothing to validate on: best.pt follows last.pt
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / max(1, loss_count),
            f"val_{select_on}": score,
            "best_metric": best,
            "lr": optimizer.param_groups[0]["lr"],
            "train_seconds": round(train_seconds, 3),
            "captions_per_s": round(loss_count * dist_info.world / max(train_seconds, 1e-9), 1),
            "images_per_s": round(
                len(set(table.image_of[np.concatenate(mine)].tolist()))
                * dist_info.world
                / max(train_seconds, 1e-9),
                1,
            )
            if mine
            else 0.0,
        }
        if dist_info.main:
            extra = {
                "select_on": select_on,
                "best_metric": best,
                "stale_epochs": stale,
                "options": options.to_dict(),
                "dataset": {"path": str(options.data), "layout": dataset.layout},
                "feature_cache": cache.fingerprint if cache else None,
            }
            ckpt = dict(
                model=model,
                tokenizer_json=tokenizer.to_json(),
                vocab_style=tokenizer.style,
                metrics=record,
                epoch=epoch,
                extra=extra,
            )
            save_checkpoint(
                out / LAST,
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict() if scheduler is not None else None,
                **ckpt,
            )
            if improved:
                save_checkpoint(out / BEST, **ckpt)
            with open(out / METRICS_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            if options.progress:
                print(json.dumps(record), flush=True)
        summary.update(best_metric=best, epochs_run=summary["epochs_run"] + 1, last=record)
        if options.patience and stale >= options.patience:
            summary["stopped_early"] = True
            break
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return summary


def selection_metric(requested: str, dataset: CaptionDataset) -> str:
    """The validation metric actually used (auto resolved against the dataset)."""
    has_facts = dataset.scenes_file is not None
    if requested == "semantic" and not has_facts:
        raise UsageError(
            f"--select-on semantic needs generated scenes (no scenes.jsonl in {dataset.root})"
        )
    if requested == "auto":
        return "semantic" if has_facts else "bleu4"
    return requested


class ValidationScorer:
    """Scores greedy validation captions with the selection metric."""

    def __init__(self, metric: str, dataset: CaptionDataset, images: list[CaptionedImage]):
        self.metric, self.images = metric, images
        self.facts = None
        if metric == "semantic" and images:
            facts = scene_facts(dataset.root)
            self.facts = [facts[im.name] for im in images]

    def __call__(self, captions: list[str]) -> float:
        if self.metric == "semantic":
            return semantic_accuracy_of(captions, self.facts)
        hypotheses = {im.name: c for im, c in zip(self.images, captions, strict=True)}
        references = {im.name: list(im.captions) for im in self.images}
        return bleu_scores(hypotheses, references)[3]


def validate(
    model: EncoderDecoder,
    tokenizer: CaptionTokenizer,
    source: FeatureSource,
    scorer: ValidationScorer,
    device: torch.device,
) -> float:
    """Greedy-decode the validation images and score them (0.0 when there are none)."""
    images = scorer.images
    if not images:
        return 0.0
    model.eval()
    captions: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(images), 64):
            rows = np.arange(start, min(start + 64, len(images)))
            features = source.features(rows, device).float()  # (N, L, D)
            captions.extend(caption_features(model, tokenizer, features, beam=1))
    return scorer(captions)


def make_scheduler(optimizer, options: TrainOptions, steps_per_epoch: int):
    if options.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.5, patience=2
        )
    if options.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=options.epochs * steps_per_epoch
        )
    return None


def _amp_dtype(device: torch.device, enabled: bool):
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _barrier(dist_info: Distributed) -> None:
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()


def _broadcast(value: float, dist_info: Distributed, device: torch.device) -> float:
    if dist_info.world <= 1:
        return value
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="batch", dynamic_ncols=True, leave=False)


def describe_dataset(dataset: CaptionDataset) -> dict[str, int]:
    return {split: len(images) for split, images in dataset.splits.items()}
