"""Model configuration and training options: each declared once, here.

ModelConfig holds the architecture (sizes, options and their defaults and
choices) and the preprocessing constants. It travels inside every checkpoint
(as a plain dict) and inside every exported bundle's manifest, so training,
export and the runtime never disagree about image size, resize mode or
normalisation. TrainOptions nests a ModelConfig; `capbatch-train fit` builds
its options from the fields of both (training/cli.py), so a new field, with
its default, help and choices, is one edit here.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from capbatch.preprocess import PreprocessSpec

# Channels per backbone stage (final stage last). Taps index into these.
BACKBONE_STAGE_CHANNELS = {
    # torchvision ResNet-50: layer1..layer4
    "resnet50": (256, 512, 1024, 2048),
    # timm tf_efficientnet_lite0: blocks[0..6], then conv_head (1280)
    "efficientnet_lite0": (16, 24, 40, 80, 112, 192, 320, 1280),
}

# Downsampling factor of each stage's output (same order as the channels).
BACKBONE_STAGE_STRIDES = {
    "resnet50": (4, 8, 16, 32),
    "efficientnet_lite0": (2, 4, 8, 16, 16, 32, 32, 32),
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)



def option(
    default: Any = MISSING,
    help: str = "",
    *,
    choices: tuple | None = None,
    cli: bool = True,
    flag: str | None = None,
    default_factory: Any = MISSING,
) -> Any:
    """A dataclass field that is also a `capbatch-train fit` option.

    `choices` are checked in __post_init__ (check_choices) and become the CLI's
    choice list; `cli=False` keeps a field out of the CLI (set by code: the
    tokenizer's ids, preprocessing constants, test-only switches); `flag` names
    the option otherwise than the field.
    """
    metadata = {"help": help, "choices": choices, "cli": cli, "flag": flag}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def check_choices(instance: Any) -> None:
    """ValueError for any field whose value is not among its declared choices."""
    for f in fields(instance):
        choices = f.metadata.get("choices")
        if choices is not None and getattr(instance, f.name) not in choices:
            raise ValueError(f"{f.name} must be one of {', '.join(map(str, choices))}")


@dataclass(frozen=True)
class ModelConfig:
    """Show-Attend-Tell sizes and options.

    Defaults are the design's reference sizes. Options beyond the design
    (feature_taps, position_features, colour_grid, fine_tune_stages,
    layout_init) are off by default. vocab_size and the special ids come from
    the tokenizer (0 = not known yet: a TrainOptions' config before fit builds
    the tokenizer; build_model refuses it).
    """

    vocab_size: int = option(0, cli=False)
    encoder: str = option(
        "efficientnet_lite0", "Backbone.", choices=tuple(BACKBONE_STAGE_CHANNELS)
    )
    embed_dim: int = option(300, "Word embedding size.")
    attention_dim: int = option(256, "Attention MLP size.")
    decoder_dim: int = option(512, "LSTM state size.")
    dropout: float = option(0.5, "Dropout before the word classifier.")
    max_len: int = option(30, "Max generated tokens (<end> included).")
    pad_id: int = option(0, cli=False)
    start_id: int = option(1, cli=False)
    end_id: int = option(2, cli=False)
    unk_id: int = option(3, cli=False)
    # Earlier backbone stages (indices into BACKBONE_STAGE_CHANNELS[encoder]),
    # average-pooled to the final grid and appended to every region's features.
    feature_taps: tuple[int, ...] = option(
        (), "Earlier backbone stages appended to features, e.g. 1,2,4."
    )
    position_features: bool = option(False, "Append each region's (x, y) to its features.")
    # A fine colour map: the normalised image average-pooled to (grid * k) x
    # (grid * k), each region getting its own k x k x 3 block. Frozen ImageNet
    # features keep shape but lose much of the colour. k divides the 32-pixel
    # region, so pooling has a fixed kernel.
    colour_grid: int = option(
        0, "Append each region's k x k average colours (0 = off), e.g. 4.", choices=(0, 1, 2, 4, 8)
    )
    fine_tune_stages: int = option(
        0, "Unfreeze the last N backbone stages (the frozen ones' output is cached)."
    )
    # Initial LSTM state also from a layout summary: each region projected to
    # this many values, all regions flattened (0 = off: h0/c0 from the mean
    # feature alone, as designed). The mean loses where things are; relations
    # ("left of", "above") need it before the first object is even named.
    layout_init: int = option(
        0, "Initial LSTM state also from each region projected to N values (0 = off)."
    )
    mean: tuple[float, float, float] = option(IMAGENET_MEAN, cli=False)
    std: tuple[float, float, float] = option(IMAGENET_STD, cli=False)
    preprocess: PreprocessSpec = option(cli=False, default_factory=PreprocessSpec)

    def __post_init__(self) -> None:
        if self.encoder not in BACKBONE_STAGE_CHANNELS:
            raise ValueError(
                f"unknown encoder {self.encoder!r}; choose one of {sorted(BACKBONE_STAGE_CHANNELS)}"
            )
        check_choices(self)
        stages = BACKBONE_STAGE_CHANNELS[self.encoder]
        if list(self.feature_taps) != sorted(set(self.feature_taps)):
            raise ValueError("feature_taps must be increasing stage indices without repeats")
        if self.preprocess.size % 32:
            raise ValueError(f"image size must be a multiple of 32, got {self.preprocess.size}")
        for tap in self.feature_taps:
            if not 0 <= tap < len(stages) - 1:
                raise ValueError(f"feature tap {tap} out of range for {self.encoder}")
        if not 0 <= self.layout_init <= 64:
            raise ValueError("layout_init must be in 0..64 values per region")
        if not 0 <= self.fine_tune_stages <= len(stages):
            raise ValueError(f"fine_tune_stages must be in 0..{len(stages)}")
        if self.vocab_size and self.vocab_size < 5:
            raise ValueError("vocab_size must cover the 4 special tokens and at least one word")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if self.max_len < 1:
            raise ValueError("max_len must be >= 1")

    @property
    def encoder_dim(self) -> int:
        stages = BACKBONE_STAGE_CHANNELS[self.encoder]
        dim = stages[-1] + sum(stages[t] for t in self.feature_taps)
        dim += 3 * self.colour_grid**2
        return dim + (2 if self.position_features else 0)

    @property
    def grid_size(self) -> int:
        # Both backbones downsample by 32.
        return self.preprocess.size // 32

    @property
    def num_regions(self) -> int:
        return self.grid_size**2

    def to_dict(self) -> dict:
        data = asdict(self)
        data["feature_taps"] = list(self.feature_taps)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        data = dict(data)
        if "preprocess" in data and isinstance(data["preprocess"], dict):
            data["preprocess"] = PreprocessSpec(**data["preprocess"])
        for key in ("feature_taps", "mean", "std"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


LR_SCHEDULES = ("plateau", "cosine", "constant")
# What validation measures to pick best.pt, halve the LR and stop early
# (training/selection.py): "semantic" = fraction of captions whose parsed facts
# equal the scene's (generated scenes only; BLEU-4 barely tracks it on short
# formulaic captions); "loss" = teacher-forced cross-entropy, the one score that
# still moves on a handful of validation images.
SELECTION_METRICS = ("auto", "loss", "cider", "bleu4", "semantic")


@dataclass(frozen=True)
class TrainOptions:
    """Everything `fit` needs; `model` is the architecture (ModelConfig's own fields)."""

    data: Path = option(help="Dataset directory (CSV, Flickr8k or Karpathy layout).")
    out: Path = option(help="Run directory: best.pt, last.pt, metrics.jsonl.")
    # Architecture: ModelConfig's own options, flattened into fit's flags.
    model: ModelConfig = option(default_factory=ModelConfig)
    encoder_weights: Path | None = option(
        None, "Local backbone weights (required for resnet50)."
    )
    pretrained: bool = option(True, cli=False)  # False: random encoder weights (tests only)
    epochs: int = option(20, "Training epochs.")
    batch_size: int = option(32, "Captions per batch.")
    lr: float = option(3e-4, "Learning rate of the decoder.")
    encoder_lr: float = option(1e-4, "LR of fine-tuned encoder stages.")
    # A model rebuilt from a bundle (training/from_bundle.py) has its BatchNorm
    # folded into the convolutions: batch statistics would undo the fold.
    frozen_batchnorm: bool = option(
        False, "Fine-tuned stages keep their BatchNorm statistics (eval mode)."
    )
    weight_decay: float = option(0.0, "Adam weight decay.")
    grad_clip: float = option(5.0, "Max gradient norm (0 = off).")
    lr_schedule: str = option(
        "plateau",
        "Halve on a validation plateau, cosine per step, or constant.",
        choices=LR_SCHEDULES,
    )
    attention_weight: float = option(1.0, "Doubly-stochastic attention regularisation weight.")
    init_from: Path | None = option(
        None,
        "Start from this checkpoint's weights, tokenizer and architecture; only "
        "--fine-tune-stages and --layout-init may change it (e.g. fine-tune, then "
        "train the decoder on cached features).",
    )
    tokenizer: Path | None = option(None, "Local HF tokenizer directory (default: train one).")
    min_word_freq: int = option(1, "Words (or pieces) seen fewer times become [UNK].")
    trim_tokenizer: bool = option(
        False,
        "With --tokenizer: keep only the tokens the training captions use (at least "
        "--min-word-freq times), so the decoder's vocabulary layers shrink to match.",
    )
    # Scenes list their canonical caption first: training on it alone teaches one
    # wording per fact. Measured on the v2 model it removed only part of the near
    # ties a reduced-precision encoder flips (docs/benchmarks.md), so the default
    # model does not use it.
    captions_per_image: int = option(
        0, "Train on the first N captions of each image (0 = all)."
    )
    patience: int = option(5, "Early stopping patience in epochs (0 = off).")
    select_on: str = option(
        "auto",
        "Validation metric for best.pt, LR plateaus and early stopping: loss "
        "(cross-entropy), CIDEr, BLEU-4 or semantic accuracy (generated scenes); auto = "
        "semantic with scenes.jsonl, else loss below 100 validation images, else BLEU-4.",
        choices=SELECTION_METRICS,
    )
    val_images: int = option(500, "Validation images per epoch (0 = all).")
    group_by: str = option(
        "",
        "Without split files: a regex whose first group (or match) names an image's "
        "group, e.g. '^(.+)_aug\\d+' so augmented copies of one photo share a split.",
    )
    cache_dir: Path | None = option(None, "Feature cache root (default OUT/features).")
    seed: int = option(0, "Seed of shuffling, dropout and initial weights.")
    threads: int = option(0, "torch CPU threads (0 = all usable cores).")
    workers: int = option(2, "Image decoding threads.")
    device: str = option("auto", "auto | cpu | cuda | cuda:N")
    amp: bool = option(True, "Mixed precision on CUDA.")
    resume: bool = option(False, "Continue from OUT/last.pt.")
    overwrite: bool = option(
        False, "Start over in a non-empty OUT (its best.pt, last.pt and metrics are replaced)."
    )
    progress: bool = option(True, "Progress bars and a metrics line per epoch.")
    train_split: str = option("train", cli=False)
    val_split: str = option("val", cli=False)
    # Recorded in checkpoints, e.g. a run note.
    extra: dict = option(cli=False, default_factory=dict)

    def __post_init__(self) -> None:
        check_choices(self)
        if self.epochs < 1:
            raise ValueError("epochs must be >= 1")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.lr <= 0 or self.encoder_lr <= 0:
            raise ValueError("learning rates must be > 0")
        if self.grad_clip < 0 or self.attention_weight < 0 or self.weight_decay < 0:
            raise ValueError("grad_clip, attention_weight and weight_decay must be >= 0")
        if min(self.patience, self.val_images, self.threads, self.captions_per_image) < 0:
            raise ValueError("patience, val_images, threads and captions_per_image must be >= 0")
        if self.model.max_len < 2:
            raise ValueError("max_len must be >= 2")
        if self.group_by:
            try:
                re.compile(self.group_by)
            except re.error as exc:
                raise ValueError(f"--group-by {self.group_by!r} is not a regex: {exc}") from exc
        if self.resume and self.overwrite:
            raise ValueError("--resume continues OUT and --overwrite replaces it: pick one")

    def to_dict(self) -> dict:
        """Plain data for the checkpoint (weights_only loading accepts no Path)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["model"] = self.model.to_dict()
        return {
            k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in data.items()
        }


@dataclass(frozen=True)
class EvalOptions:
    """What `capbatch-train eval` needs (training/evaluate.py)."""

    checkpoint: Path = option(
        help="Checkpoint (best.pt), or a run folder (uses its best.pt).", flag="--ckpt"
    )
    data: Path = option(help="Dataset directory.")
    split: str = option("test", "Split to caption and score.")
    beam: int = option(1, "1 = greedy, K > 1 = beam search.")
    out: Path | None = option(
        None,
        "Write the JSON report here, and every prediction with all its references "
        "to OUT's name + .predictions.jsonl beside it.",
    )
    cache_dir: Path | None = option(None, "Feature cache root (default: next to the checkpoint).")
    batch_size: int = option(64, cli=False)
    limit: int = option(0, "Only the first N images (0 = all).")
    meteor: bool = option(True, "METEOR (needs Java).")
    device: str = option("auto", "auto | cpu | cuda | cuda:N")
    group_by: str | None = option(None, "Hash-split grouping regex (default: the one fit used).")

    def __post_init__(self) -> None:
        if self.beam < 1:
            raise ValueError("beam must be >= 1")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.limit < 0:
            raise ValueError("limit must be >= 0")
