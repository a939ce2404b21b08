"""Which checkpoint is best: the validation metric, scoring, and the best/stale count.

Per epoch the validation images are greedy-decoded by the shipped decoder loop
(training/decoding.py over capbatch/decoding.py) and scored with the selection
metric (--select-on): semantic accuracy on generated scenes, BLEU-4 otherwise.
`Selection` keeps the best score and how many epochs have passed without it
improving (for best.pt, LR plateaus and early stopping).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from capbatch.errors import UsageError

from .batches import FeatureSource
from .data import CaptionDataset, CaptionedImage
from .evaluate import bleu_scores, caption_features, scene_facts, semantic_accuracy_of
from .model import EncoderDecoder
from .tokenizer import CaptionTokenizer


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


@dataclass
class Selection:
    """The best validation score so far and the epochs since it last improved."""

    best: float = -1.0
    stale: int = 0

    def update(self, score: float) -> bool:
        """Record an epoch's score; True when it is the new best."""
        if score > self.best:
            self.best, self.stale = score, 0
            return True
        self.stale += 1
        return False
