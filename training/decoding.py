"""The torch model behind the runtime's decoder interface.

Decoding has one home: capbatch/decoding.py (greedy and beam search in numpy
over a `StepModel`, the rules of docs/decoding.md). The runtime drives it with
the ONNX decoder_step graph; training validation, `capbatch-train eval` and the
export check drive it with `TorchStepModel`, so the captions training scores
are the ones the shipped decoder writes, and a fix to the loop fixes both.

`TorchStepModel` keeps the encoder outputs and the LSTM state on the model's
device; only each step's log-probs and attention cross to numpy, because the
loop ranks candidates there. Gathering per-row features on the device, not
round-tripping them through numpy every step, keeps a CUDA run from copying
(R, L, D) floats twice per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from capbatch.decoding import DecodingOptions, Hypothesis, StepOutput
from capbatch.decoding import beam_search as _beam_search
from capbatch.decoding import greedy_decode as _greedy_decode
from capbatch.decoding import search as _search

from .model import EncoderDecoder

__all__ = ["Hypothesis", "TorchStepModel", "beam_search", "decode_features", "greedy_decode"]


@dataclass(frozen=True)
class TorchRowState:
    images: torch.Tensor  # (R,) long: which image each row decodes
    h: torch.Tensor  # (R, H)
    c: torch.Tensor  # (R, H)


class TorchStepModel:
    """`capbatch.decoding.StepModel` over an EncoderDecoder's decoder.

    features (B, L, D) are the encoder's outputs for B images; the attention
    projection and initial state are computed once, as the ONNX encoder graph
    does. Log-probs are log_softmax of the step logits in float32, as the
    exported decoder_step graph computes them.
    """

    def __init__(self, model: EncoderDecoder, features: torch.Tensor) -> None:
        self.model = model
        self.device = features.device
        self.features = features
        with torch.inference_mode():
            self.projected, self.h0, self.c0 = model.decoder.init_state(features)
        self.start_id, self.end_id = model.config.start_id, model.config.end_id
        self.num_images = int(features.shape[0])
        # Per-row features only change when rows finish or beams reorder.
        self._rows: torch.Tensor | None = None
        self._gathered = (self.features, self.projected)

    def initial_state(self) -> TorchRowState:
        images = torch.arange(self.num_images, device=self.device)
        self._rows, self._gathered = images, (self.features, self.projected)
        return TorchRowState(images, self.h0, self.c0)

    def _row_inputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images is not self._rows:
            self._rows = images
            self._gathered = (self.features[images], self.projected[images])  # (R, L, *)
        return self._gathered

    @torch.inference_mode()
    def step(self, tokens: np.ndarray, state: TorchRowState) -> StepOutput:
        features, projected = self._row_inputs(state.images)
        previous = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64)).to(self.device)
        logits, h, c, alpha = self.model.decoder.step(
            previous, state.h, state.c, features, projected
        )
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # (R, V)
        return StepOutput(
            log_probs.cpu().numpy(), alpha.float().cpu().numpy(), TorchRowState(state.images, h, c)
        )

    def select(self, state: TorchRowState, rows: np.ndarray) -> TorchRowState:
        index = torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(self.device)
        return TorchRowState(state.images[index], state.h[index], state.c[index])


def _options(model: EncoderDecoder, beam_size: int, max_len: int | None, alphas: bool):
    return DecodingOptions(
        beam_size=beam_size, max_len=max_len or model.config.max_len, return_alphas=alphas
    )


def greedy_decode(
    model: EncoderDecoder,
    features: torch.Tensor,
    max_len: int | None = None,
    return_alphas: bool = False,
) -> list[Hypothesis]:
    """features (B, L, D) -> one Hypothesis per image, by the runtime's greedy loop."""
    step_model = TorchStepModel(model, features)
    return _greedy_decode(step_model, _options(model, 1, max_len, return_alphas))


def beam_search(
    model: EncoderDecoder,
    features: torch.Tensor,
    beam_size: int = 3,
    max_len: int | None = None,
    return_alphas: bool = False,
) -> list[list[Hypothesis]]:
    """features (B, L, D) -> per image, its finished hypotheses best first."""
    options = _options(model, beam_size, max_len, return_alphas)
    return _beam_search(TorchStepModel(model, features), options)


def decode_features(model: EncoderDecoder, features: torch.Tensor, beam: int = 1):
    """features (B, L, D) -> the best Hypothesis per image (greedy for beam 1)."""
    return _search(TorchStepModel(model, features), _options(model, beam, None, False))
