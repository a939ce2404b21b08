"""Model configuration: the one place where sizes and preprocessing constants live.

The config travels inside every checkpoint (as a plain dict) and inside every
exported bundle's manifest, so training, export and the runtime never disagree
about image size, resize mode or normalisation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

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


@dataclass(frozen=True)
class ModelConfig:
    """Show-Attend-Tell sizes and options.

    Defaults are the design's reference sizes. Options beyond the design
    (feature_taps, position_features, fine_tune_stages) are off by default.
    """

    vocab_size: int
    encoder: str = "efficientnet_lite0"  # "resnet50" (design) | "efficientnet_lite0"
    embed_dim: int = 300
    attention_dim: int = 256
    decoder_dim: int = 512
    dropout: float = 0.5
    max_len: int = 30  # generated tokens, <end> included
    pad_id: int = 0
    start_id: int = 1
    end_id: int = 2
    unk_id: int = 3
    # Earlier backbone stages (indices into BACKBONE_STAGE_CHANNELS[encoder]),
    # average-pooled to the final grid and appended to every region's features.
    feature_taps: tuple[int, ...] = ()
    # Append each region's (x, y) grid coordinates in [-1, 1] to its features.
    position_features: bool = False
    # Append a fine colour map: the normalised image average-pooled to
    # (grid * k) x (grid * k), each region getting its own k x k x 3 block.
    # Frozen ImageNet features keep shape but lose much of the colour.
    colour_grid: int = 0
    # Unfreeze the last N backbone stages (0 = frozen encoder, as designed).
    fine_tune_stages: int = 0
    # Initial LSTM state also from a layout summary: each region projected to
    # this many values, all regions flattened (0 = off: h0/c0 from the mean
    # feature alone, as designed). The mean loses where things are; relations
    # ("left of", "above") need it before the first object is even named.
    layout_init: int = 0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)

    def __post_init__(self) -> None:
        if self.encoder not in BACKBONE_STAGE_CHANNELS:
            raise ValueError(
                f"unknown encoder {self.encoder!r}; choose one of {sorted(BACKBONE_STAGE_CHANNELS)}"
            )
        stages = BACKBONE_STAGE_CHANNELS[self.encoder]
        if list(self.feature_taps) != sorted(set(self.feature_taps)):
            raise ValueError("feature_taps must be increasing stage indices without repeats")
        if self.preprocess.size % 32:
            raise ValueError(f"image size must be a multiple of 32, got {self.preprocess.size}")
        for tap in self.feature_taps:
            if not 0 <= tap < len(stages) - 1:
                raise ValueError(f"feature tap {tap} out of range for {self.encoder}")
        if self.colour_grid not in (0, 1, 2, 4, 8):
            # k must divide the 32-pixel region so pooling has a fixed kernel.
            raise ValueError("colour_grid must be 0, 1, 2, 4 or 8")
        if not 0 <= self.layout_init <= 64:
            raise ValueError("layout_init must be in 0..64 values per region")
        if not 0 <= self.fine_tune_stages <= len(stages):
            raise ValueError(f"fine_tune_stages must be in 0..{len(stages)}")
        if self.vocab_size < 5:
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
