"""capbatch.decoding against fake step models (numpy, no ONNX, no torch)."""

from __future__ import annotations

import numpy as np
import pytest

from capbatch.decoding import (
    ArrayStepModel,
    DecodingOptions,
    _top_candidates,
    beam_search,
    greedy_decode,
    search,
)
from capbatch.vocab import Vocab

START, END = 1, 2


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return (x - np.log(np.exp(x).sum(axis=-1, keepdims=True))).astype(np.float32)


class RandomRecurrentModel:
    """A tiny random recurrent 'decoder': log-probs depend on the image, the token and h."""

    def __init__(self, seed: int, vocab: int = 9, hidden: int = 6, regions: int = 4, end_bias=0.0):
        rng = np.random.default_rng(seed)
        self.embed = rng.normal(size=(vocab, hidden)).astype(np.float32)
        self.w_h = rng.normal(size=(hidden, hidden)).astype(np.float32) * 0.8
        self.w_f = rng.normal(size=(3, hidden)).astype(np.float32)
        self.w_out = rng.normal(size=(hidden, vocab)).astype(np.float32) * 2.0
        self.w_out[:, END] += end_bias
        self.w_att = rng.normal(size=(3,)).astype(np.float32)
        self.vocab, self.hidden, self.regions = vocab, hidden, regions
        self.calls: list[int] = []  # rows per step call

    def step_fn(self, tokens, h, c, features, projected):
        self.calls.append(int(tokens.shape[0]))
        scores = projected @ self.w_att  # (R, L)
        alpha = np.exp(scores - scores.max(1, keepdims=True))
        alpha = (alpha / alpha.sum(1, keepdims=True)).astype(np.float32)  # (R, L)
        context = (alpha[:, :, None] * features).sum(1)  # (R, 3)
        h = np.tanh(self.embed[tokens] + h @ self.w_h + context @ self.w_f).astype(np.float32)
        c = c + 1.0  # counts steps: the fake keeps c meaningful so select() is exercised
        return _log_softmax(h @ self.w_out), h, c.astype(np.float32), alpha

    def model(self, images: int, seed: int = 0) -> ArrayStepModel:
        rng = np.random.default_rng(seed + 100)
        features = rng.normal(size=(images, self.regions, 3)).astype(np.float32)
        projected = features.copy()
        h0 = rng.normal(size=(images, self.hidden)).astype(np.float32)
        c0 = np.zeros((images, self.hidden), np.float32)
        return ArrayStepModel(self.step_fn, features, projected, h0, c0, start_id=START, end_id=END)


class TableModel:
    """Scripted log-probs: image i at step t gets table[i][t] (a dict token -> log-prob)."""

    def __init__(self, tables: list[list[dict[int, float]]], vocab: int = 6):
        self.tables, self.vocab = tables, vocab
        self.calls: list[int] = []

    def step_fn(self, tokens, h, c, features, projected):
        self.calls.append(int(tokens.shape[0]))
        rows = tokens.shape[0]
        out = np.full((rows, self.vocab), -20.0, dtype=np.float32)
        for r in range(rows):
            image, step = int(features[r, 0, 0]), int(h[r, 0])
            table = self.tables[image]
            for token, lp in table[min(step, len(table) - 1)].items():
                out[r, token] = lp
        return out, h + 1.0, c, np.full((rows, 1), 1.0, np.float32)

    def model(self) -> ArrayStepModel:
        n = len(self.tables)
        features = np.arange(n, dtype=np.float32).reshape(n, 1, 1)
        zeros = np.zeros((n, 1), np.float32)
        return ArrayStepModel(
            self.step_fn, features, features, zeros, zeros, start_id=START, end_id=END
        )


def reference_beam(step_fn, features, projected, h0, c0, beam_size, max_len):
    """docs/decoding.md beam rules, one image at a time, in plain Python."""
    results = []
    for i in range(features.shape[0]):
        beam = [([], [], 0.0, h0[i], c0[i], START)]  # tokens, lps, score, h, c, last
        finished = []
        for _ in range(max_len):
            if not beam:
                break
            tokens = np.array([b[5] for b in beam], np.int64)
            h = np.stack([b[3] for b in beam])
            c = np.stack([b[4] for b in beam])
            n = len(beam)
            feats = np.repeat(features[i : i + 1], n, 0)
            proj = np.repeat(projected[i : i + 1], n, 0)
            lp, h, c, _ = step_fn(tokens, h, c, feats, proj)
            vocab = lp.shape[1]
            cands = []
            for p in range(n):
                for t in range(vocab):
                    total = np.float32(np.float32(beam[p][2]) + lp[p, t])
                    cands.append((float(total), p * vocab + t))
            cands.sort(key=lambda x: -x[0])  # stable: ties keep lower flat index first
            new_beam = []
            for total, flat in cands[: beam_size - len(finished)]:
                p, t = divmod(flat, vocab)
                toks, lps = beam[p][0], beam[p][1] + [float(lp[p, t])]
                if t == END:
                    finished.append((toks, lps, total))
                else:
                    new_beam.append((toks + [t], lps, total, h[p], c[p], t))
            beam = new_beam
        pool = finished + [(b[0], b[1], b[2]) for b in beam]
        results.append(sorted(pool, key=lambda x: -(x[2] / max(1, len(x[1])))))
    return results


def test_options_validate():
    with pytest.raises(ValueError):
        DecodingOptions(beam_size=0)
    with pytest.raises(ValueError):
        DecodingOptions(max_len=0)


def test_greedy_stops_early_and_drops_finished_rows():
    # image 0 ends at step 1, image 1 at step 3, image 2 runs to max_len.
    fake = TableModel(
        [
            [{4: -0.1}, {END: -0.2}],
            [{3: -0.5}, {4: -0.5}, {5: -0.5}, {END: -0.1}],
            [{5: -0.3}],
        ]
    )
    hyps = greedy_decode(fake.model(), DecodingOptions(max_len=6, return_alphas=True))
    assert [h.tokens for h in hyps] == [(4,), (3, 4, 5), (5,) * 6]
    assert [h.steps for h in hyps] == [2, 4, 6]
    assert hyps[0].score == pytest.approx(-0.3)
    assert hyps[0].mean_logprob == pytest.approx(-0.15)
    assert hyps[2].alphas.shape == (6, 1)
    # the batch shrinks as rows finish: 3, 3, 2, 2, 1, 1
    assert fake.calls == [3, 3, 2, 2, 1, 1]


def test_greedy_all_finish_stops_the_loop():
    fake = TableModel([[{END: -0.1}], [{END: -0.2}]])
    hyps = greedy_decode(fake.model(), DecodingOptions(max_len=10))
    assert [h.tokens for h in hyps] == [(), ()]
    assert fake.calls == [2]


def test_greedy_ties_take_first_index():
    fake = TableModel([[{3: -1.0, 4: -1.0}, {END: 0.0}]])
    assert greedy_decode(fake.model(), DecodingOptions(max_len=5))[0].tokens == (3,)


def test_beam_prefers_better_mean_and_shrinks():
    # Step 0: <end> is best, so one hypothesis finishes at once; the beam shrinks to 1.
    fake = TableModel([[{END: -0.5, 3: -0.6, 4: -3.0}, {END: -0.05, 3: -2.0}]])
    ranked = beam_search(fake.model(), DecodingOptions(beam_size=2, max_len=5))[0]
    # "3 <end>" has mean -0.325 > -0.5 of "<end>" alone
    assert [h.tokens for h in ranked] == [(3,), ()]
    assert fake.calls == [1, 1]  # one row at step 0, then the shrunk beam of one


def test_beam_max_len_finishes_live_hypotheses():
    fake = TableModel([[{3: -0.1, 4: -0.2}]])
    ranked = beam_search(fake.model(), DecodingOptions(beam_size=2, max_len=3))[0]
    assert len(ranked) == 2
    assert all(h.steps == 3 for h in ranked)
    assert ranked[0].tokens == (3, 3, 3)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_beam_one_equals_greedy(seed):
    fake = RandomRecurrentModel(seed, end_bias=1.0)
    greedy = greedy_decode(fake.model(5), DecodingOptions(max_len=12))
    beam = beam_search(fake.model(5), DecodingOptions(beam_size=1, max_len=12))
    assert [h.tokens for h in greedy] == [r[0].tokens for r in beam]
    for g, r in zip(greedy, beam):
        np.testing.assert_array_equal(g.token_logprobs, r[0].token_logprobs)


@pytest.mark.parametrize("seed,beam_size", [(0, 2), (1, 3), (2, 4), (3, 3), (4, 12)])
def test_beam_matches_plain_reference(seed, beam_size):
    fake = RandomRecurrentModel(seed, end_bias=0.5)
    model = fake.model(4, seed)
    ranked = beam_search(model, DecodingOptions(beam_size=beam_size, max_len=8))
    expected = reference_beam(
        fake.step_fn,
        model._features,
        model._projected,
        model._h0,
        model._c0,
        beam_size,
        8,
    )
    for got, want in zip(ranked, expected):
        assert [h.tokens for h in got] == [tuple(w[0]) for w in want]
        assert [h.score for h in got] == pytest.approx([w[2] for w in want], abs=1e-5)


def test_decode_picks_best_and_alphas_follow_beams():
    fake = RandomRecurrentModel(7, end_bias=0.5)
    best = search(fake.model(3), DecodingOptions(beam_size=3, max_len=6, return_alphas=True))
    ranked = beam_search(fake.model(3), DecodingOptions(beam_size=3, max_len=6))
    assert [h.tokens for h in best] == [r[0].tokens for r in ranked]
    for h in best:
        assert h.alphas.shape == (h.steps, fake.regions)
        np.testing.assert_allclose(h.alphas.sum(1), 1.0, rtol=1e-5)


def test_top_candidates_is_a_stable_descending_sort():
    rng = np.random.default_rng(0)
    # Few distinct values: many ties, including across the partition boundary.
    totals = rng.integers(0, 4, size=(20, 30)).astype(np.float32)
    totals[3, :] = -np.inf
    for k in (1, 3, 5):
        want = np.argsort(-totals, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(_top_candidates(totals, k), want)


def test_vocab_styles():
    tokens = ("<pad>", "<start>", "<end>", "<unk>", "a", "red", "##dish", "cube")
    special = frozenset({0, 1, 2})
    word = Vocab(tokens, "word", special)
    assert word.text([1, 4, 5, 7, 2, 0]) == "a red cube"
    piece = Vocab(tokens, "wordpiece", special)
    assert piece.text([4, 5, 6, 7]) == "a reddish cube"
    assert piece.text([6, 7]) == "dish cube"
    with pytest.raises(ValueError):
        Vocab(tokens, "bpe")
