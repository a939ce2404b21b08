"""capbatch.decoding's public contract where mutation testing found it unguarded:
search()'s dispatch, the option limits and messages, and the best-k order when the
vocabulary is no larger than the beam (docs/testing.md)."""

from __future__ import annotations

import numpy as np
import pytest

from capbatch import decoding
from capbatch.decoding import DecodingOptions, _top_candidates, beam_search, greedy_decode
from tests.runtime.test_decoding import RandomRecurrentModel

decode = decoding.search


def test_decode_is_greedy_for_beam_1_and_the_best_beam_otherwise():
    fake = RandomRecurrentModel(seed=2)
    greedy = DecodingOptions(beam_size=1, max_len=6)
    assert [h.tokens for h in decode(fake.model(3), greedy)] == [
        h.tokens for h in greedy_decode(fake.model(3), greedy)
    ]
    beam = DecodingOptions(beam_size=2, max_len=6)
    best = [ranked[0] for ranked in beam_search(fake.model(3), beam)]
    got = decode(fake.model(3), beam)
    assert [h.tokens for h in got] == [h.tokens for h in best]
    assert [h.score for h in got] == [h.score for h in best]


def test_decode_beam_2_differs_from_greedy_somewhere():
    # So the test above could tell the two apart (a beam that only re-ran greedy).
    fake = RandomRecurrentModel(seed=2)
    greedy = decode(fake.model(8), DecodingOptions(beam_size=1, max_len=6))
    beam = decode(fake.model(8), DecodingOptions(beam_size=2, max_len=6))
    assert [h.tokens for h in greedy] != [h.tokens for h in beam]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"beam_size": 0}, "beam_size must be an integer >= 1, got 0"),
        ({"beam_size": 2.0}, "beam_size must be an integer >= 1, got 2.0"),
        ({"max_len": 0}, "max_len must be an integer >= 1, got 0"),
        ({"max_len": "5"}, "max_len must be an integer >= 1, got '5'"),
    ],
)
def test_decoding_options_refuse_with_these_words(settings, message):
    with pytest.raises(ValueError) as caught:
        DecodingOptions(**settings)
    assert str(caught.value) == message


def test_one_token_and_one_beam_are_allowed():
    options = DecodingOptions(beam_size=1, max_len=1)
    fake = RandomRecurrentModel(seed=1)
    assert all(h.steps == 1 for h in decode(fake.model(2), options))


@pytest.mark.parametrize("k", [4, 6])
def test_best_k_of_a_short_row_is_descending_with_ties_by_index(k):
    totals = np.array([[0.1, 0.5, 0.3, 0.5], [-1.0, -3.0, -2.0, -0.5]], np.float32)
    assert _top_candidates(totals, k).tolist() == [[1, 3, 2, 0], [3, 0, 2, 1]]


def test_best_k_of_a_long_row_equals_a_stable_sort():
    rng = np.random.default_rng(0)
    totals = rng.integers(0, 4, (20, 12)).astype(np.float32)  # many ties
    expected = np.argsort(-totals, axis=1, kind="stable")[:, :3]
    assert _top_candidates(totals, 3).tolist() == expected.tolist()


def test_greedy_margins_are_each_captions_closest_call_as_rows_finish():
    """Hypothesis.margin (capbatch/close_calls.py reads it): the smallest gap between
    the chosen token's log-prob and the runner-up's over a caption's steps, kept per
    image while finished rows leave the batch."""
    from tests.runtime.test_decoding import END, TableModel

    fake = TableModel([
        [{END: -0.1, 4: -2.1}],  # ends at once: one gap, 2.0
        [{3: -0.5, 4: -1.5}, {5: -0.2, 3: -0.45}, {END: -0.1}],  # 1.0, 0.25, 19.9
        [{5: -0.3, 4: -0.35}, {END: -0.1, 3: -3.1}],  # 0.05, 3.0
    ])  # fmt: skip
    tracked = greedy_decode(fake.model(), DecodingOptions(max_len=6, track_margins=True))
    assert [h.tokens for h in tracked] == [(), (3, 5), (5,)]
    assert [h.margin for h in tracked] == pytest.approx([2.0, 0.25, 0.05], abs=1e-5)
    assert all(type(h.margin) is float for h in tracked)
    untracked = greedy_decode(fake.model(), DecodingOptions(max_len=6))
    assert [h.margin for h in untracked] == [None, None, None]


def test_margins_are_for_greedy_decoding_only():
    with pytest.raises(ValueError) as caught:
        DecodingOptions(beam_size=2, track_margins=True)
    assert str(caught.value) == "track_margins is for greedy decoding (beam_size 1)"
    assert DecodingOptions(beam_size=1, track_margins=True).track_margins
