"""Which checkpoint is best: the validation metric, scoring, and the best/stale count.

Per epoch the validation split is scored with the selection metric
(--select-on): validation cross-entropy (`loss`, teacher-forced on every
reference: smooth, meaningful on a handful of images), or a score of the
greedy captions the shipped decoder loop writes (training/decoding.py over
capbatch/decoding.py): CIDEr, BLEU-4, or semantic accuracy on generated scenes.
`auto` = semantic on generated scenes, else loss for fewer than SMALL_VAL
validation images, else BLEU-4. Scores closer than TOLERANCE are ties, so a
best.pt is never chosen, nor an LR halved, on a 1e-11 difference.

Small data warns loudly (stderr and the metrics line): an empty or tiny
validation split, and a best score of ~0 (nothing to select on); early
stopping waits until the metric has moved at least once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from capbatch.errors import UsageError

from .batches import CaptionTable, FeatureSource, caption_table, collate
from .data import CaptionDataset, CaptionedImage
from .evaluate import (
    bleu_scores,
    caption_features,
    cider_score,
    scene_facts,
    semantic_accuracy_of,
)
from .model import EncoderDecoder
from .tokenizer import CaptionTokenizer

HIGHER_IS_BETTER = {"loss": False, "bleu4": True, "cider": True, "semantic": True}
TOLERANCE = 1e-4  # scores closer than this are a tie (the earlier best is kept)
SMALL_VAL = 100  # auto selects on loss below this many validation images
TINY_VAL = 10  # fewer validation images than this: warn that scores are noise
NEAR_ZERO = 1e-3  # a best BLEU-4 / CIDEr / accuracy below this cannot tell checkpoints apart


def selection_metric(requested: str, dataset: CaptionDataset, val_count: int) -> str:
    """The validation metric actually used (auto resolved against the dataset)."""
    has_facts = dataset.scenes_file is not None
    if requested == "semantic" and not has_facts:
        raise UsageError(
            f"--select-on semantic needs generated scenes (no scenes.jsonl in {dataset.root})"
        )
    if requested != "auto":
        return requested
    if has_facts:
        return "semantic"
    return "loss" if val_count < SMALL_VAL else "bleu4"


def split_warnings(val_count: int, split: str, metric: str) -> list[str]:
    """What to say before training about the validation split's size."""
    if val_count == 0:
        return [
            f"the {split!r} split is empty: best.pt will follow last.pt and nothing stops "
            "early; add a split file or more images"
        ]
    if val_count < TINY_VAL:
        advice = "a larger validation split" if metric == "loss" else "--select-on loss"
        return [f"only {val_count} {split!r} images: validation scores are noisy; prefer {advice}"]
    return []


class ValidationScorer:
    """Scores the validation images with the selection metric."""

    def __init__(
        self,
        metric: str,
        dataset: CaptionDataset,
        images: list[CaptionedImage],
        tokenizer: CaptionTokenizer,
        max_len: int,
    ):
        self.metric, self.images, self.tokenizer = metric, images, tokenizer
        self.facts = None
        if metric == "semantic" and images:
            facts = scene_facts(dataset.root)
            self.facts = [facts[im.name] for im in images]
        self.table: CaptionTable | None = None
        if metric == "loss":
            self.table = caption_table(images, tokenizer, max_len)

    def score_captions(self, captions: list[str]) -> float:
        if self.metric == "semantic":
            return semantic_accuracy_of(captions, self.facts)
        hypotheses = {im.name: c for im, c in zip(self.images, captions, strict=True)}
        references = {im.name: list(im.captions) for im in self.images}
        if self.metric == "cider":
            return cider_score(hypotheses, references)
        return bleu_scores(hypotheses, references)[3]

    def __call__(self, model: EncoderDecoder, source: FeatureSource, device) -> float:
        """The metric on every validation image (0.0 when there are none)."""
        if not self.images:
            return 0.0
        model.eval()
        if self.table is not None:
            return validation_loss(model, self.table, source, device)
        captions: list[str] = []
        with torch.inference_mode():
            for start in range(0, len(self.images), 64):
                rows = np.arange(start, min(start + 64, len(self.images)))
                features = source.features(rows, device).float()  # (N, L, D)
                captions.extend(caption_features(model, self.tokenizer, features, beam=1))
        return self.score_captions(captions)


@torch.inference_mode()
def validation_loss(
    model: EncoderDecoder, table: CaptionTable, source: FeatureSource, device, batch_size=64
) -> float:
    """Teacher-forced cross-entropy per token over every validation reference."""
    total, tokens = 0.0, 0
    for start in range(0, len(table.captions), batch_size):
        batch = np.arange(start, min(start + batch_size, len(table.captions)))
        rows, image_index, captions = collate(table, batch)
        features = source.features(rows, device).float()  # (N, L, D)
        captions = captions.to(device)
        logits, _ = model.decoder(features, captions, image_index.to(device))  # (B, T-1, V)
        targets = captions[:, 1:]  # (B, T-1)
        total += float(
            F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                ignore_index=table.pad_id, reduction="sum",
            )  # fmt: skip
        )
        tokens += int((targets != table.pad_id).sum())
    return total / max(1, tokens)


@dataclass
class Selection:
    """The best validation score so far, the epochs since it last improved by more
    than TOLERANCE, and whether the metric has moved at all since the first epoch."""

    metric: str = "bleu4"
    best: float | None = None
    stale: int = 0
    first: float | None = None
    moved: bool = False
    warned: set[str] = field(default_factory=set)

    @property
    def higher_is_better(self) -> bool:
        return HIGHER_IS_BETTER[self.metric]

    def better(self, score: float, than: float) -> bool:
        if self.higher_is_better:
            return score > than + TOLERANCE
        return score < than - TOLERANCE

    def update(self, score: float) -> bool:
        """Record an epoch's score; True when it is the new best (ties keep the old)."""
        if self.first is None:
            self.first = score
        elif abs(score - self.first) > TOLERANCE:
            self.moved = True
        if self.best is None or self.better(score, self.best):
            self.best, self.stale = score, 0
            return True
        self.stale += 1
        return False

    def should_stop(self, patience: int) -> bool:
        """Early stopping: `patience` epochs without a better score, once the metric
        has moved (a metric stuck at its first value says nothing about overfitting)."""
        return bool(patience) and self.moved and self.stale >= patience

    def warnings(self, patience: int) -> list[str]:
        """Warnings about this epoch's selection (each said once on stderr by the caller)."""
        out = []
        near_zero = self.best is not None and self.higher_is_better and self.best < NEAR_ZERO
        if near_zero and math.isfinite(self.best):
            out.append(
                f"best val_{self.metric} is ~0 ({self.best:.3g}): it cannot tell checkpoints "
                "apart; try --select-on loss"
            )
        if patience and not self.moved and self.stale >= patience:
            out.append(
                f"val_{self.metric} has not moved since the first epoch; early stopping waits "
                "until it does"
            )
        return out

    def state(self) -> dict:
        """What a checkpoint keeps so a resumed run decides the same way."""
        return {
            "best_metric": self.best, "stale_epochs": self.stale,
            "first_metric": self.first, "metric_moved": self.moved,
        }  # fmt: skip

    @classmethod
    def restore(cls, metric: str, extra: dict) -> Selection:
        """A resumed run's selection; a fresh one when the run selected on another metric."""
        if extra.get("select_on", "bleu4") != metric:
            return cls(metric)
        best = extra.get("best_metric", extra.get("best_bleu4"))
        best = None if best is None or best == -1.0 else float(best)
        first = extra.get("first_metric")
        return cls(
            metric, best, int(extra.get("stale_epochs", 0)), first, bool(extra.get("metric_moved"))
        )
