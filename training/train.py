"""The training loop: `capbatch-train fit --data DIR --out runs/NAME`.

One epoch = every training caption once. With the frozen encoder (default)
the decoder trains from the feature cache; with --fine-tune-stages N the
encoder runs on images every step. A run is three parts, each usable alone:
set-up (training/setup.py: device, DDP, threads, dataset, resume / init-from /
fresh start), batches (training/batches.py: caption ids, image-major batches,
feature source) and the epoch loop here.

Per epoch: train, score the validation split (--select-on, training/
selection.py: loss, CIDEr, BLEU-4 or semantic accuracy), write last.pt (and
best.pt when the score improved beyond the tie tolerance), append a line to
metrics.jsonl, stop early after `patience` epochs without improvement once the
score has moved. A run folder holds one run: a used OUT needs --resume or
--overwrite. Shuffling and dropout
are seeded from (seed, epoch), so a resumed run continues the same sequence.
Several processes (torchrun, WORLD_SIZE > 1) train with DDP; rank 0 validates
and writes, and its score is broadcast so every rank takes the same decisions.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from capbatch.errors import UsageError
from capbatch.output.durable import append_line

from .batches import Batches, TrainStep, collate, epoch_batches, make_batches
from .checkpoint import save_checkpoint
from .config import LR_SCHEDULES, SELECTION_METRICS, TrainOptions
from .data import CaptionDataset
from .model import caption_loss
from .selection import (
    HIGHER_IS_BETTER,
    TOLERANCE,
    Selection,
    ValidationScorer,
    selection_metric,
    split_warnings,
)
from .setup import (
    BEST,
    LAST,
    RunSetup,
    close_distributed,
    init_distributed,
    set_up,
    vocab_warnings,
)

__all__ = ["LR_SCHEDULES", "SELECTION_METRICS", "TrainOptions", "fit"]
METRICS_FILE = "metrics.jsonl"
RUN_FILES = (BEST, LAST, METRICS_FILE)  # what --overwrite replaces (the feature cache stays)


def fit(options: TrainOptions) -> dict:
    """Train; returns a summary (best score, epochs, paths)."""
    previous_threads = torch.get_num_threads()
    out = Path(options.out)
    dist_info = init_distributed(options.device)
    created = False
    try:
        if dist_info.main:
            check_out(options, out)
        setup = set_up(options, dist_info, out)
        requested = options.select_on
        if setup.start.resume and requested == "auto":  # a resumed run keeps its metric
            requested = setup.start.resume["extra"].get("select_on", requested)
        # Before the cache: a wrong --select-on fails in a second, not after an hour.
        select_on = selection_metric(requested, setup.dataset, len(setup.val_images))
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        if options.overwrite and dist_info.main:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
        batches = make_batches(setup)
        scorer = ValidationScorer(
            select_on, setup.dataset, setup.val_images, setup.tokenizer, setup.config.max_len
        )
        return EpochLoop(setup, batches, scorer).run()
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a failed start leaves no empty run folder behind
        raise
    finally:
        close_distributed(dist_info)  # the process group goes even when set-up fails
        torch.set_num_threads(previous_threads)  # a library call leaves the process as it was


def check_out(options: TrainOptions, out: Path) -> None:
    """Refuse to mix two runs in one folder: a non-empty OUT needs --resume or --overwrite."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a run folder")
    if options.resume or options.overwrite or not out.is_dir() or not any(out.iterdir()):
        return
    raise UsageError(
        f"--out {out} already holds a run; pass --resume to continue it, --overwrite to "
        "replace it, or choose another folder"
    )


# --------------------------------------------------------------------------- loop


@dataclass
class EpochResult:
    loss: float
    captions: int
    images: int
    seconds: float


class EpochLoop:
    """Optimiser, schedule and AMP over a set-up run and its batches; run() trains."""

    def __init__(self, setup: RunSetup, batches: Batches, scorer: ValidationScorer):
        self.setup, self.batches, self.scorer = setup, batches, scorer
        options, model, device = setup.options, setup.model, setup.device
        self.step_module: nn.Module = TrainStep(model, batches.source.from_images)
        if setup.dist.world > 1:
            self.step_module = nn.parallel.DistributedDataParallel(
                self.step_module, device_ids=[device.index] if device.type == "cuda" else None
            )
        groups = [{"params": list(model.decoder.parameters()), "lr": options.lr}]
        encoder_params = [p for p in model.encoder.parameters() if p.requires_grad]
        if encoder_params:
            groups.append({"params": encoder_params, "lr": options.encoder_lr})
        self.params = [p for g in groups for p in g["params"]]
        self.optimizer = torch.optim.Adam(groups, weight_decay=options.weight_decay)
        captions = len(batches.table.captions)
        steps = math.ceil(captions / options.batch_size) // setup.dist.world
        self.scheduler = make_scheduler(
            self.optimizer, options, max(1, steps), HIGHER_IS_BETTER[scorer.metric]
        )
        self.amp_dtype = _amp_dtype(device, options.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.selection = Selection(scorer.metric)
        self.first_epoch = 1
        self.warnings: list[str] = []  # said once each, on stderr and in the metrics
        split_size = split_warnings(len(setup.val_images), options.val_split, scorer.metric)
        vocab = vocab_warnings(setup.config, batches.table.captions)
        for warning in [*setup.dataset.warnings, *split_size, *vocab]:
            self.warn(warning)
        if setup.start.resume:
            self._restore(setup.start.resume)

    def _restore(self, resume: dict) -> None:
        self.optimizer.load_state_dict(resume["optimizer"])
        if self.scheduler is not None and resume.get("scheduler"):
            self.scheduler.load_state_dict(resume["scheduler"])
        self.first_epoch = int(resume["epoch"]) + 1
        self.selection = Selection.restore(self.scorer.metric, resume["extra"])

    def warn(self, message: str) -> None:
        if message in self.warnings:
            return
        self.warnings.append(message)
        if self.setup.dist.main:
            print(f"capbatch-train: warning: {message}", file=sys.stderr, flush=True)

    def summary(self) -> dict:
        setup, device = self.setup, self.setup.device
        amp = str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else None
        return {
            "out": str(setup.out),
            "select_on": self.scorer.metric,
            "best_metric": self.selection.best,
            "epochs_run": 0,
            "stopped_early": False,
            "threads": setup.threads,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "amp": amp,
            "train_images": len(setup.train_images),
            "train_captions": len(self.batches.table.captions),
            "vocab_size": setup.config.vocab_size,
            "warnings": self.warnings,
        }

    def run(self) -> dict:
        options, dist_info = self.setup.options, self.setup.dist
        summary = self.summary()
        for epoch in range(self.first_epoch, options.epochs + 1):
            result = self.train_epoch(epoch)
            score = self.validate()
            improved = self.decide(score)
            record = self.record(epoch, result, score)
            if dist_info.main:
                self.write(epoch, record, improved)
            summary.update(
                best_metric=self.selection.best, epochs_run=summary["epochs_run"] + 1, last=record
            )
            if self.selection.should_stop(options.patience):
                summary["stopped_early"] = True
                break
        return summary

    def my_batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's share of the epoch's batches (all of them without DDP)."""
        dist_info = self.setup.dist
        batches = epoch_batches(
            self.batches.table, self.setup.options.batch_size, self.setup.options.seed, epoch
        )
        if dist_info.world == 1:
            return batches
        usable = len(batches) // dist_info.world * dist_info.world
        return batches[dist_info.rank : usable : dist_info.world]

    def train_epoch(self, epoch: int) -> EpochResult:
        options, setup = self.setup.options, self.setup
        torch.manual_seed(options.seed * 100_003 + epoch)  # dropout: reproducible on resume
        mine = self.my_batches(epoch)
        setup.model.train()
        if options.frozen_batchnorm:
            for module in setup.model.encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        started = time.perf_counter()
        loss_sum, loss_count = 0.0, 0
        bar = _bar(len(mine), f"epoch {epoch}/{options.epochs}", options.progress and setup.dist.main)
        for batch in mine:
            loss = self.train_step(batch)
            loss_sum += loss * len(batch)
            loss_count += len(batch)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / loss_count:.3f}")
        if bar is not None:
            bar.close()
        table = self.batches.table
        images = len(set(table.image_of[np.concatenate(mine)].tolist())) if mine else 0
        seconds = time.perf_counter() - started
        return EpochResult(loss_sum / max(1, loss_count), loss_count, images, seconds)

    def train_step(self, batch: np.ndarray) -> float:
        """One optimiser step on a batch of caption indices; returns its mean loss."""
        setup, options = self.setup, self.setup.options
        device = setup.device
        rows, image_index, captions = collate(self.batches.table, batch)
        captions = captions.to(device)
        autocast = (
            torch.autocast(device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        )
        with autocast:
            inputs = self.batches.source.inputs(rows, device)
            logits, alphas = self.step_module(inputs, captions, image_index.to(device))
            loss = caption_loss(
                logits.float(), alphas.float(), captions, setup.config.pad_id,
                options.attention_weight,
            )  # fmt: skip
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if options.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, options.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None and options.lr_schedule == "cosine":
            self.scheduler.step()
        return float(loss.detach())

    def validate(self) -> float:
        """Rank 0 scores the validation images; every rank gets its score."""
        setup = self.setup
        score = 0.0
        if setup.dist.main:
            score = self.scorer(setup.model, self.batches.val_source, setup.device)
        return _broadcast(score, setup)

    def decide(self, score: float) -> bool:
        """Update the best score, the plateau schedule and the stale count; True: best.pt."""
        if not self.setup.val_images:
            self.selection.stale = 0
            return True  # nothing to validate on: best.pt follows last.pt
        if self.scheduler is not None and self.setup.options.lr_schedule == "plateau":
            self.scheduler.step(score)
        improved = self.selection.update(score)
        for warning in self.selection.warnings(self.setup.options.patience):
            self.warn(warning)
        return improved

    def record(self, epoch: int, result: EpochResult, score: float) -> dict:
        world = self.setup.dist.world
        seconds = max(result.seconds, 1e-9)
        return {
            "epoch": epoch,
            "train_loss": result.loss,
            f"val_{self.scorer.metric}": score,
            "best_metric": self.selection.best,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_seconds": round(result.seconds, 3),
            "captions_per_s": round(result.captions * world / seconds, 1),
            "images_per_s": round(result.images * world / seconds, 1),
            **({"warnings": list(self.warnings)} if self.warnings else {}),
        }

    def write(self, epoch: int, record: dict, improved: bool) -> None:
        """last.pt (with optimizer state), best.pt when improved, a metrics line."""
        setup, options = self.setup, self.setup.options
        cache = self.batches.cache
        extra = {
            "select_on": self.scorer.metric,
            **self.selection.state(),
            "options": options.to_dict(),
            "dataset": {"path": str(options.data), "layout": setup.dataset.layout},
            "feature_cache": cache.fingerprint if cache else None,
        }
        ckpt = dict(
            model=setup.model,
            tokenizer_json=setup.tokenizer.to_json(),
            vocab_style=setup.tokenizer.style,
            metrics=record,
            epoch=epoch,
            extra=extra,
        )
        scheduler = self.scheduler.state_dict() if self.scheduler is not None else None
        save_checkpoint(
            setup.out / LAST, optimizer=self.optimizer.state_dict(), scheduler=scheduler, **ckpt
        )
        if improved:
            save_checkpoint(setup.out / BEST, **ckpt)
        append_line(setup.out / METRICS_FILE, json.dumps(record))
        if options.progress:
            print(json.dumps(record), flush=True)


def make_scheduler(optimizer, options: TrainOptions, steps_per_epoch: int, maximise: bool):
    if options.lr_schedule == "plateau":
        # Changes within the selection's tie tolerance are no progress (nor a plateau's end).
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max" if maximise else "min", factor=0.5, patience=2,
            threshold=TOLERANCE, threshold_mode="abs",
        )  # fmt: skip
    if options.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=options.epochs * steps_per_epoch
        )
    return None


def _amp_dtype(device: torch.device, enabled: bool):
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _broadcast(value: float, setup: RunSetup) -> float:
    if setup.dist.world <= 1:
        return value
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64, device=setup.device)
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
