"""nn.Modules around the training model's own modules, one per exported graph.

They add no computation of their own: the encoder graph is ImageEncoder +
Decoder.init_state, the step graph is Decoder.step + log_softmax, so what is
exported is exactly what training and the PyTorch reference decoding run.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from capbatch.training.model import EncoderDecoder
from torch import nn


class EncoderGraph(nn.Module):
    """images (B, S, S, 3) uint8 -> features (B, L, D), projected (B, L, A), h0, c0 (B, H)."""

    def __init__(self, model: EncoderDecoder):
        super().__init__()
        self.encoder = model.encoder
        self.decoder = model.decoder

    def forward(self, images: torch.Tensor):
        features = self.encoder(images)  # (B, L, D)
        projected, h0, c0 = self.decoder.init_state(features)  # (B, L, A), (B, H), (B, H)
        return features, projected, h0, c0


class DecoderStepGraph(nn.Module):
    """One attention + LSTMCell step -> log_probs (B, V), h_out, c_out (B, H), alpha (B, L)
    [, topk_log_probs (B, K), topk_ids (B, K)]."""

    def __init__(self, model: EncoderDecoder, top_k: int = 0):
        super().__init__()
        if not 0 <= top_k <= model.config.vocab_size:
            raise ValueError(f"top_k must be in 0..{model.config.vocab_size}")
        self.decoder = model.decoder
        self.top_k = top_k

    def forward(self, tokens, h, c, features, projected):
        logits, h_out, c_out, alpha = self.decoder.step(tokens, h, c, features, projected)
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # (B, V), as training/decoding.py
        if not self.top_k:
            return log_probs, h_out, c_out, alpha
        topk_log_probs, topk_ids = torch.topk(log_probs, self.top_k, dim=-1)  # (B, K) each
        return log_probs, h_out, c_out, alpha, topk_log_probs, topk_ids


class StaticSamePadConv(nn.Module):
    """A TF-"SAME" conv whose padding was computed once for a fixed input size.

    timm's Conv2dSame pads from x.size() at run time, which the tracer records as
    a Shape/Ceil/Pad subgraph per strided conv. The exported encoder has a static
    spatial size, so the padding is a constant.
    """

    def __init__(self, conv: nn.Conv2d, pads: tuple[int, int, int, int]):
        super().__init__()
        self.conv = conv
        self.pads = pads  # (left, right, top, bottom), as F.pad wants them

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.pads)
        return F.conv2d(
            x,
            self.conv.weight,
            self.conv.bias,
            self.conv.stride,
            0,
            self.conv.dilation,
            self.conv.groups,
        )


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    total = max((-(-size // stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def freeze_same_padding(model: EncoderDecoder, size: int) -> int:
    """Replace every dynamic-"SAME" conv in model (in place) by a StaticSamePadConv
    for images of `size` x `size`; returns how many were replaced."""
    try:
        from timm.layers import Conv2dSame
    except ImportError:  # no timm: no dynamic-SAME convs either
        return 0
    targets = [(name, m) for name, m in model.encoder.named_modules() if isinstance(m, Conv2dSame)]
    if not targets:
        return 0
    seen: dict[str, tuple[int, int]] = {}

    def record(name: str):
        def hook(_module, args) -> None:  # returning None keeps the input unchanged
            seen[name] = tuple(args[0].shape[-2:])

        return hook

    hooks = [module.register_forward_pre_hook(record(name)) for name, module in targets]
    try:
        with torch.no_grad():
            model.encoder(torch.zeros(1, size, size, 3, dtype=torch.uint8))
    finally:
        for hook in hooks:
            hook.remove()
    for name, module in targets:
        height, width = seen[name]
        top, bottom = _same_pads(
            height, module.kernel_size[0], module.stride[0], module.dilation[0]
        )
        left, right = _same_pads(width, module.kernel_size[1], module.stride[1], module.dilation[1])
        parent_name, _, child = name.rpartition(".")
        parent = model.encoder.get_submodule(parent_name) if parent_name else model.encoder
        setattr(parent, child, StaticSamePadConv(module, (left, right, top, bottom)))
    return len(targets)


def export_copy(model: EncoderDecoder) -> EncoderDecoder:
    """A CPU float32 eval-mode copy with static padding: what gets traced.

    nn.LSTMCell fails to export from CUDA, and the training model must not be
    modified by an export.
    """
    cpu = copy.deepcopy(model).to("cpu").float().eval()
    freeze_same_padding(cpu, cpu.config.preprocess.size)
    return cpu
