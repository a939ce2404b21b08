"""Greedy and beam-search decoding in numpy over an injectable step model.

The rules are those of docs/decoding.md, and this is their only implementation.
The loop only sees the `StepModel` interface (whisper's `Inference` idea): tests
drive it with a fake, the runtime with the ONNX decoder_step graph
(capbatch/bundle.py), training and export validation with the PyTorch model
(training/decoding.TorchStepModel).

A step model carries each image's encoder outputs (computed once) and an opaque
per-row state; rows are (image, hypothesis) pairs. The loop asks it to run a
step for the live rows and to keep a subset / reordering of rows (`select`),
so a device-resident implementation can keep its tensors where they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class DecodingOptions:
    """How to decode: beam size (1 = greedy), token limit, attention capture."""

    beam_size: int = 1
    max_len: int = 30  # generated tokens, <end> included
    return_alphas: bool = False
    # Greedy only: record each caption's closest call (Hypothesis.margin), which a
    # reduced-precision encoder uses to send close calls back to f32 (close_calls.py).
    track_margins: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.beam_size, int) or self.beam_size < 1:
            raise ValueError(f"beam_size must be an integer >= 1, got {self.beam_size!r}")
        if not isinstance(self.max_len, int) or self.max_len < 1:
            raise ValueError(f"max_len must be an integer >= 1, got {self.max_len!r}")
        if self.track_margins and self.beam_size != 1:
            raise ValueError("track_margins is for greedy decoding (beam_size 1)")


@dataclass(frozen=True)
class Hypothesis:
    """One decoded caption. tokens exclude <start>/<end>."""

    tokens: tuple[int, ...]
    token_logprobs: np.ndarray  # (steps,) float32, <end> included when generated
    score: float  # sum of token_logprobs
    alphas: np.ndarray | None = field(default=None, repr=False)  # (steps, L) or None
    # Greedy with track_margins: the smallest gap, over its steps, between the chosen
    # token's log-prob and the runner-up's. A change of arithmetic smaller than this
    # cannot change the caption's first differing token. None when not tracked.
    margin: float | None = None

    @property
    def steps(self) -> int:
        return int(self.token_logprobs.shape[0])

    @property
    def mean_logprob(self) -> float:
        """The caption's confidence: mean log-prob per generated token."""
        return self.score / max(1, self.steps)


@dataclass(frozen=True)
class StepOutput:
    log_probs: np.ndarray  # (R, V) float32 log_softmax
    alpha: np.ndarray  # (R, L) float32 attention weights
    state: Any  # the rows' next state, opaque to the loop


class StepModel(Protocol):
    """One decoder step over rows of a batch of already-encoded images."""

    start_id: int
    end_id: int
    num_images: int

    def initial_state(self) -> Any:
        """State of one row per image, row i = image i."""

    def step(self, tokens: np.ndarray, state: Any) -> StepOutput:
        """tokens (R,) int64: previous token of each row."""

    def select(self, state: Any, rows: np.ndarray) -> Any:
        """The state of rows[0], rows[1], ... (drop finished rows, follow beam parents)."""


# --------------------------------------------------------------------------- array step model

StepFunction = Callable[
    [np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
]
"""(tokens (R,), h (R,H), c (R,H), features (R,L,D), projected (R,L,A))
-> (log_probs (R,V), h_out, c_out, alpha (R,L)): the decoder_step graph's signature."""


@dataclass(frozen=True)
class RowState:
    images: np.ndarray  # (R,) int64: which image each row decodes
    h: np.ndarray  # (R, H)
    c: np.ndarray  # (R, H)


class ArrayStepModel:
    """StepModel over host numpy arrays and a step function (ONNX on CPU, or a fake).

    Per-image encoder outputs are computed once. The per-row copies of
    features/projected only change when the row->image map changes (rows
    finish, beams shrink), so they are cached on that map instead of being
    gathered every step.
    """

    def __init__(
        self,
        step_fn: StepFunction,
        features: np.ndarray,  # (B, L, D)
        projected: np.ndarray,  # (B, L, A)
        h0: np.ndarray,  # (B, H)
        c0: np.ndarray,  # (B, H)
        *,
        start_id: int,
        end_id: int,
    ) -> None:
        self._step_fn = step_fn
        self._features = features
        self._projected = projected
        self._h0, self._c0 = h0, c0
        self.start_id, self.end_id = int(start_id), int(end_id)
        self.num_images = int(features.shape[0])
        self._cache_key: bytes | None = None
        self._cached: tuple[np.ndarray, np.ndarray] = (features, projected)

    def initial_state(self) -> RowState:
        return RowState(np.arange(self.num_images, dtype=np.int64), self._h0, self._c0)

    def _rows_inputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = images.tobytes()
        if key != self._cache_key:
            identity = images.shape[0] == self.num_images and bool(
                np.all(images == np.arange(self.num_images))
            )
            if identity:
                self._cached = (self._features, self._projected)
            else:
                self._cached = (self._features[images], self._projected[images])  # (R, L, *)
            self._cache_key = key
        return self._cached

    def step(self, tokens: np.ndarray, state: RowState) -> StepOutput:
        features, projected = self._rows_inputs(state.images)
        log_probs, h, c, alpha = self._step_fn(tokens, state.h, state.c, features, projected)
        return StepOutput(log_probs, alpha, RowState(state.images, h, c))

    def select(self, state: RowState, rows: np.ndarray) -> RowState:
        return RowState(state.images[rows], state.h[rows], state.c[rows])


# --------------------------------------------------------------------------- decoding


def search(model: StepModel, options: DecodingOptions) -> list[Hypothesis]:
    """The best hypothesis per image: greedy for beam_size 1, else beam search."""
    if options.beam_size == 1:
        return greedy_decode(model, options)
    return [ranked[0] for ranked in beam_search(model, options)]


def greedy_decode(model: StepModel, options: DecodingOptions) -> list[Hypothesis]:
    """Batched greedy: the first index of the max; finished rows leave the batch."""
    n = model.num_images
    state = model.initial_state()
    active = np.arange(n, dtype=np.int64)  # image of each live row
    tokens = np.full(n, model.start_id, dtype=np.int64)
    out_tokens: list[list[int]] = [[] for _ in range(n)]
    out_logprobs: list[list[np.float32]] = [[] for _ in range(n)]
    out_alphas: list[list[np.ndarray]] = [[] for _ in range(n)]
    margins = np.full(n, np.inf, dtype=np.float32)
    for _ in range(options.max_len):
        result = model.step(tokens, state)
        rows = np.arange(active.shape[0])
        best = np.argmax(result.log_probs, axis=1)  # (R,) first index of the max
        best_logprob = result.log_probs[rows, best]  # (R,)
        if options.track_margins:
            gaps = _gap_to_runner_up(result.log_probs, rows, best, best_logprob)
            margins[active] = np.minimum(margins[active], gaps)
        for row, image in enumerate(active.tolist()):
            out_logprobs[image].append(best_logprob[row])
            if options.return_alphas:
                out_alphas[image].append(result.alpha[row].copy())
            if best[row] != model.end_id:
                out_tokens[image].append(int(best[row]))
        live = best != model.end_id  # (R,)
        if not live.any():
            break
        state = result.state
        if not live.all():
            keep = np.flatnonzero(live)
            state = model.select(state, keep)
            active = active[keep]
        tokens = best[live].astype(np.int64)
    return [
        _hypothesis(
            out_tokens[i],
            out_logprobs[i],
            out_alphas[i],
            options.return_alphas,
            margin=float(margins[i]) if options.track_margins else None,
        )
        for i in range(n)
    ]


def _gap_to_runner_up(
    log_probs: np.ndarray, rows: np.ndarray, best: np.ndarray, best_logprob: np.ndarray
) -> np.ndarray:
    """(R,) best_logprob minus the largest other entry; inf for a one-word vocabulary."""
    others = log_probs.copy()  # masking a copy: 6x cheaper than a partition over the vocab
    others[rows, best] = -np.inf
    return best_logprob - others.max(axis=1)


def _hypothesis(
    tokens, logprobs, alphas, with_alphas: bool, score: float | None = None, margin=None
):
    token_logprobs = np.asarray(logprobs, dtype=np.float32)
    if score is None:
        # Summed in float64, as the reference sums Python floats.
        score = float(sum(float(v) for v in token_logprobs))
    stacked = np.stack(alphas) if with_alphas and alphas else None
    return Hypothesis(tuple(int(t) for t in tokens), token_logprobs, float(score), stacked, margin)


def beam_search(model: StepModel, options: DecodingOptions) -> list[list[Hypothesis]]:
    """Batched beam search; per image, its finished hypotheses best first.

    Rows of all images' live beams are stacked into one batch per step; rows
    of an image are contiguous. Candidate selection is vectorised over images
    by padding each image's rows to K.
    """
    k = options.beam_size
    n = model.num_images
    end_id = model.end_id
    state = model.initial_state()
    row_image = np.arange(n, dtype=np.int64)  # (R,) image of each live row
    row_score = np.zeros(n, dtype=np.float32)  # (R,) summed log-prob, float32 like the reference
    row_tokens = np.zeros((n, 0), dtype=np.int64)  # (R, t)
    row_logprobs = np.zeros((n, 0), dtype=np.float32)  # (R, t)
    row_alphas: np.ndarray | None = None  # (R, t, L)
    tokens = np.full(n, model.start_id, dtype=np.int64)
    finished: list[list[Hypothesis]] = [[] for _ in range(n)]

    for _ in range(options.max_len):
        if row_image.shape[0] == 0:
            break
        result = model.step(tokens, state)
        log_probs = result.log_probs.astype(np.float32, copy=False)  # (R, V)
        vocab = log_probs.shape[1]
        images, starts, counts = np.unique(row_image, return_index=True, return_counts=True)
        widths = np.array([k - len(finished[i]) for i in images], dtype=np.int64)  # (G,)
        # (G, K, V) totals, padded rows at -inf sort after every real candidate.
        totals = np.full((images.shape[0], k, vocab), -np.inf, dtype=np.float32)
        local = np.arange(row_image.shape[0]) - np.repeat(starts, counts)  # row index in image
        group = np.repeat(np.arange(images.shape[0]), counts)
        totals[group, local] = row_score[:, None] + log_probs  # float32 add, as the reference
        flat_totals = totals.reshape(images.shape[0], k * vocab)  # (G, K*V)
        chosen = _top_candidates(flat_totals, k)  # (G, K) flat indices, best first, stable
        take = np.minimum(widths, counts * vocab)  # (G,)

        parents_local, next_token = np.divmod(chosen, vocab)  # (G, K)
        valid = np.arange(k)[None, :] < take[:, None]  # (G, K)
        # (G, K) global row of each parent; padding slots are clamped and never kept.
        parent_row = np.minimum(starts[:, None] + parents_local, row_image.shape[0] - 1)
        chosen_lp = log_probs[parent_row, next_token]  # (G, K)
        chosen_total = np.take_along_axis(flat_totals, chosen, axis=1)  # (G, K)

        new_tokens = np.concatenate(
            [row_tokens[parent_row], next_token[..., None]], axis=2
        )  # (G, K, t+1)
        new_logprobs = np.concatenate(
            [row_logprobs[parent_row], chosen_lp[..., None]], axis=2
        )  # (G, K, t+1)
        new_alphas = (
            _extend_alphas(row_alphas, result.alpha, parent_row) if options.return_alphas else None
        )  # (G, K, t+1, L)

        ended = valid & (next_token == end_id)  # (G, K)
        for g, j in zip(*np.nonzero(ended)):  # row-major: finishing order per image
            alphas = new_alphas[g, j].copy() if new_alphas is not None else None
            hyp = Hypothesis(
                tuple(int(t) for t in new_tokens[g, j, :-1]), new_logprobs[g, j].copy(),
                float(chosen_total[g, j]), alphas,
            )  # fmt: skip
            finished[int(images[g])].append(hyp)
        keep = valid & (next_token != end_id)  # (G, K): row-major keeps images contiguous
        state = model.select(result.state, parent_row[keep])
        row_image = images[np.nonzero(keep)[0]]
        row_score = chosen_total[keep]
        row_tokens = new_tokens[keep]
        row_logprobs = new_logprobs[keep]
        row_alphas = new_alphas[keep] if new_alphas is not None else None
        tokens = next_token[keep].astype(np.int64)

    _finish_live(finished, row_image, row_tokens, row_logprobs, row_score, row_alphas)
    # sorted() is stable: equal means keep pool order.
    return [sorted(pool, key=lambda hyp: -hyp.mean_logprob) for pool in finished]


def _finish_live(finished, row_image, row_tokens, row_logprobs, row_score, row_alphas) -> None:
    """Live hypotheses at max_len finish as they are, after the finished ones."""
    for r, image in enumerate(row_image.tolist()):
        alphas = row_alphas[r].copy() if row_alphas is not None else None
        finished[image].append(
            Hypothesis(
                tuple(int(t) for t in row_tokens[r]), row_logprobs[r].copy(),
                float(row_score[r]), alphas,
            )  # fmt: skip
        )


def _extend_alphas(
    row_alphas: np.ndarray | None, step_alpha: np.ndarray, parent_row: np.ndarray
) -> np.ndarray:
    """(R, t, L) attention so far + this step's (R, L) -> (G, K, t+1, L) along beam parents."""
    step = step_alpha[parent_row][:, :, None, :]  # (G, K, 1, L)
    previous = (
        row_alphas[parent_row]
        if row_alphas is not None
        else np.zeros(step.shape[:2] + (0, step.shape[-1]), np.float32)
    )
    return np.concatenate([previous, step], axis=2)


def _top_candidates(totals: np.ndarray, k: int) -> np.ndarray:
    """Per row of totals (G, N): the k best flat indices, descending, ties by lower index.

    Exactly a stable descending sort's first k, without sorting all N: take the
    k largest by partition, then fall back to a full stable sort for any row
    where a value tied with the k-th one was left outside the partition.
    """
    g, size = totals.shape
    if size <= k:
        return np.argsort(-totals, axis=1, kind="stable")
    part = np.argpartition(-totals, k - 1, axis=1)[:, :k]  # (G, k) unordered
    part_values = np.take_along_axis(totals, part, axis=1)  # (G, k)
    order = np.lexsort((part, -part_values), axis=1)  # by value desc, then index asc
    chosen = np.take_along_axis(part, order, axis=1)  # (G, k)
    kth = np.take_along_axis(part_values, order, axis=1)[:, -1]  # (G,)
    tied_outside = (totals >= kth[:, None]).sum(axis=1) > k  # (G,)
    for row in np.flatnonzero(tied_outside):
        chosen[row] = np.argsort(-totals[row], kind="stable")[:k]
    return chosen
