"""Close calls: the captions a reduced-precision encoder may have changed, redone at f32.

A bf16 encoder's outputs differ from f32's by rounding. Greedy decoding gives a
different caption only if, at the first token where the two part, that rounding
moved the gap between the two candidate tokens by more than the gap itself. So
each caption's closest call is recorded (Hypothesis.margin: the smallest gap,
over its steps, between the chosen token's log-prob and the runner-up's), and
the captions whose closest call is below the bundle's fallback margin are
encoded again by the reference encoder (onnxruntime f32) and decoded again:
those captions are the reference's own. The margin is chosen per bundle, and
the agreement it buys measured on held-out images, by
`python -m capbatch.export.precision --fallback-budget` (docs/export.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple

import numpy as np

from .bundle import Bundle
from .decoding import DecodingOptions, Hypothesis, search
from .graph_io import Encoded


def close_call_rows(hypotheses: Sequence[Hypothesis], margin: float) -> np.ndarray:
    """Indices of the captions whose closest call is below margin."""
    if any(h.margin is None for h in hypotheses):
        raise ValueError("close calls need greedy margins (DecodingOptions.track_margins)")
    return np.flatnonzero([h.margin < margin for h in hypotheses]).astype(np.int64)


def redo_rows(
    bundle: Bundle,
    pixels: np.ndarray,
    hypotheses: Sequence[Hypothesis],
    encoded: Encoded,
    options: DecodingOptions,
    rows: np.ndarray,
) -> tuple[list[Hypothesis], Encoded]:
    """Encode pixels[rows] with the reference encoder and decode them again.

    Returns every image's hypothesis and encoder outputs, the redone rows replaced:
    the domain check and attention maps then read the outputs the caption came from.
    """
    if rows.size == 0:
        return list(hypotheses), encoded
    again = bundle.encode_reference(pixels[rows])
    redone = search(bundle.step_model(again), options)
    merged_hypotheses = list(hypotheses)
    for row, hypothesis in zip(rows.tolist(), redone):
        merged_hypotheses[row] = hypothesis
    merged = []
    for kept, new in zip(astuple(encoded), astuple(again)):
        spliced = kept.copy()
        spliced[rows] = new
        merged.append(spliced)
    return merged_hypotheses, Encoded(*merged)


def redo_close_calls(
    bundle: Bundle,
    pixels: np.ndarray,
    hypotheses: Sequence[Hypothesis],
    encoded: Encoded,
    options: DecodingOptions,
) -> tuple[list[Hypothesis], Encoded, int]:
    """Redo the close calls of one batch; also returns how many were redone."""
    if not bundle.fallback_margin:
        return list(hypotheses), encoded, 0
    rows = close_call_rows(hypotheses, bundle.fallback_margin)
    merged_hypotheses, merged = redo_rows(bundle, pixels, hypotheses, encoded, options, rows)
    return merged_hypotheses, merged, int(rows.size)


def caption_batch(
    bundle: Bundle, pixels: np.ndarray, options: DecodingOptions
) -> tuple[list[Hypothesis], Encoded, int]:
    """One batch as the Captioner runs it: encode, decode, redo the close calls.

    Returns every image's hypothesis, the encoder outputs each came from, and how
    many were redone. The precision tool measures agreement through this too.
    """
    encoded = bundle.encode(pixels)  # once per image, reused by every step
    found = search(bundle.step_model(encoded), options)
    return redo_close_calls(bundle, pixels, found, encoded, options)
