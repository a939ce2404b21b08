"""Caption metrics and the `capbatch-train eval` report.

BLEU-1..4, METEOR, ROUGE-L and CIDEr come from pycocoevalcap (METEOR runs the
machine's Java; SPICE needs a model download and is left out). Captions and
references are normalised the same simple way before scoring (lower case,
words and apostrophes only), in Python, so per-epoch validation BLEU and the
final report agree. On generated-scene datasets the report adds semantic
accuracy: the share of captions stating exactly the scene's true facts.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from capbatch.errors import UsageError
from capbatch.output.durable import write_file

from .checkpoint import load_checkpoint, model_from_checkpoint, resolve_checkpoint
from .config import EvalOptions
from .data import CaptionedImage, DatasetError, read_dataset
from .decoding import decode_features
from .features import build_feature_cache
from .model import EncoderDecoder
from .setup import Distributed, pick_device
from .tokenizer import CaptionTokenizer

_WORDS = re.compile(r"[a-z0-9']+")


def normalize_caption(text: str) -> str:
    return " ".join(_WORDS.findall(text.lower()))


def bleu_scores(hypotheses: dict[str, str], references: dict[str, list[str]]) -> list[float]:
    """Corpus BLEU-1..4 of one hypothesis per key against its references."""
    from pycocoevalcap.bleu.bleu import Bleu

    gts, res = _normalised(hypotheses, references)
    scores, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return [float(s) for s in scores]


def cider_score(hypotheses: dict[str, str], references: dict[str, list[str]]) -> float:
    """Corpus CIDEr(-D as pycocoevalcap computes it) of one hypothesis per key."""
    from pycocoevalcap.cider.cider import Cider

    gts, res = _normalised(hypotheses, references)
    return float(Cider().compute_score(gts, res)[0])


def caption_metrics(
    hypotheses: dict[str, str], references: dict[str, list[str]], meteor: bool = True
) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L, CIDEr and (when Java is present) METEOR."""
    from pycocoevalcap.rouge.rouge import Rouge

    gts, res = _normalised(hypotheses, references)
    metrics = {f"bleu{n + 1}": s for n, s in enumerate(bleu_scores(hypotheses, references))}
    metrics["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    metrics["cider"] = cider_score(hypotheses, references)
    if meteor and shutil.which("java"):
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        try:
            metrics["meteor"] = float(scorer.compute_score(gts, res)[0])
        finally:
            # Meteor's __del__ stops its Java process; drop it deterministically.
            del scorer
    return metrics


def _normalised(hypotheses: dict[str, str], references: dict[str, list[str]]):
    keys = sorted(hypotheses)
    missing = [k for k in keys if not references.get(k)]
    if missing:
        raise ValueError(f"no references for {missing[:3]}")
    # An empty hypothesis would crash BLEU's length ratio; score it as one unknown word.
    res = {k: [normalize_caption(hypotheses[k]) or "<empty>"] for k in keys}
    gts = {k: [normalize_caption(r) for r in references[k]] for k in keys}
    return gts, res


# --------------------------------------------------------------------------- captioning


def caption_features(
    model: EncoderDecoder,
    tokenizer: CaptionTokenizer,
    features: torch.Tensor,
    beam: int = 1,
    batch_size: int = 64,
) -> list[str]:
    """features (N, L, D) -> one caption per image (greedy for beam 1, else beam search)."""
    captions: list[str] = []
    for start in range(0, features.shape[0], batch_size):
        chunk = features[start : start + batch_size]  # (B, L, D)
        hyps = decode_features(model, chunk, beam)
        captions.extend(tokenizer.decode(h.tokens) for h in hyps)
    return captions


def evaluate(options: EvalOptions) -> dict:
    """Caption a split with a checkpoint (a file, or a run folder: its best.pt) and
    score it; write the JSON report and every prediction (JSONL) if asked.

    On a generated-scenes dataset, evaluating "test" also reports "test_novel"
    (held-out combinations) and "test_renderer" (scenes drawn by the independent
    renderer, training/scenes_sdf.py) where the dataset has them, each with its
    own semantic accuracy.
    """
    checkpoint = resolve_checkpoint(options.checkpoint)
    device = pick_device(options.device, Distributed())
    data = load_checkpoint(checkpoint)
    model = model_from_checkpoint(data).to(device)
    tokenizer = CaptionTokenizer.from_checkpoint(data)
    group_by = options.group_by
    if group_by is None:  # the split fit trained on, so "test" means the same images
        group_by = data.get("extra", {}).get("options", {}).get("group_by", "")
    dataset = read_dataset(options.data, group_by=group_by)
    splits = [options.split]
    if dataset.scenes_file and options.split == "test":
        splits += [name for name in ("test_novel", "test_renderer") if name in dataset.splits]
    cache_root = options.cache_dir or checkpoint.parent / "features"
    facts = scene_facts(dataset.root) if dataset.scenes_file else None
    report: dict = {
        "checkpoint": str(checkpoint),
        "data": str(options.data),
        "beam": options.beam,
        "epoch": data.get("epoch"),
        "splits": {},
    }
    predictions: list[dict] = []
    for split in splits:
        images = dataset.split(split)
        if options.limit:
            images = images[: options.limit]
        if not images:
            raise DatasetError(f"{options.data}: split {split!r} is empty")
        captions = caption_images(model, tokenizer, images, cache_root, options, device)
        report["splits"][split] = score_split(images, captions, facts, options.meteor)
        predictions.extend(
            {"split": split, "image": im.name, "caption": c, "references": list(im.captions)}
            for im, c in zip(images, captions, strict=True)
        )
    if options.out:
        write_report(Path(options.out), report, predictions)
    return report


def predictions_path(report: Path) -> Path:
    """Where every prediction goes, beside the report: REPORT.predictions.jsonl."""
    return report.with_name(report.stem + ".predictions.jsonl")


def write_report(path: Path, report: dict, predictions: list[dict]) -> None:
    lines = predictions_path(path)
    report["predictions"] = str(lines)
    write_file(lines, "".join(json.dumps(p) + "\n" for p in predictions))
    write_file(path, json.dumps(report, indent=2) + "\n")


def score_split(
    images: Sequence[CaptionedImage], captions: list[str], facts: dict | None, meteor: bool
) -> dict:
    """Metrics of one split's captions (+ semantic accuracy on generated scenes)."""
    hypotheses = {im.name: c for im, c in zip(images, captions, strict=True)}
    references = {im.name: list(im.captions) for im in images}
    result: dict = {"images": len(images)}
    result.update(caption_metrics(hypotheses, references, meteor=meteor))
    if facts is not None:
        truths = [facts[im.name] for im in images]
        result["semantic_accuracy"] = semantic_accuracy_of(captions, truths)
        # Which fact the wrong captions got wrong (colour, shape, relation, ...).
        result["mismatches"] = _scenes_module().mismatch_counts(captions, truths)
    result["examples"] = [
        {"image": im.name, "caption": c, "references": list(im.captions)}
        for im, c in list(zip(images, captions))[:5]
    ]
    return result


def caption_images(
    model: EncoderDecoder,
    tokenizer: CaptionTokenizer,
    images: Sequence[CaptionedImage],
    cache_root: Path,
    options: EvalOptions,
    device: torch.device,
) -> list[str]:
    cache = build_feature_cache(
        model.encoder, [(im.name, im.path) for im in images], cache_root, device=device
    )
    features = cache.batch(cache.rows([im.name for im in images])).to(device)
    return caption_features(model, tokenizer, features, options.beam, options.batch_size)


def scene_facts(root: Path) -> dict:
    """image name -> true facts, read by the generated-scenes module itself."""
    return _scenes_module().load_scene_facts(root)


def _scenes_module():
    try:
        from . import scenes
    except ImportError as exc:
        raise UsageError(
            "semantic accuracy needs capbatch.training.scenes (the generated-scenes module)"
        ) from exc
    return scenes


def semantic_accuracy_of(captions: list[str], facts: list) -> float:
    return float(_scenes_module().semantic_accuracy(captions, facts))
