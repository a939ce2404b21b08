"""What capbatch/close_calls.py promises (docs/export.md, "Close calls"): which captions
are close calls, and that redoing them gives the reference's captions and encoder outputs
for exactly those rows, leaving the others and the caller's arrays as they were. A
perturbed onnxruntime encoder stands in for bf16, as in tests/runtime/test_close_calls.py."""

from __future__ import annotations

import numpy as np
import pytest

from capbatch.bundle import Encoded, load_bundle
from capbatch.close_calls import close_call_rows, redo_close_calls, redo_rows
from capbatch.decoding import Hypothesis
from tests.runtime.test_close_calls import _greedy, _pixels

FIELDS = ("features", "projected", "h0", "c0")


def _hyp(margin):
    return Hypothesis((3,), np.zeros(1, np.float32), 0.0, None, margin)


@pytest.fixture
def bundles(reduced):
    """(reference, candidate): the candidate's encoder is another graph, so its captions
    differ on some images; its reference encoder (fallback margin 0.5) is the bundle's own."""
    candidate = load_bundle(
        reduced, device="cpu", encoder_runtime="openvino", precision="bf16",
        require_agreement=False, fallback_margin=0.5,
    )  # fmt: skip
    return load_bundle(reduced, device="cpu"), candidate


def _copy(encoded):
    return Encoded(*(getattr(encoded, name).copy() for name in FIELDS))


def test_close_call_rows_need_every_margin():
    with pytest.raises(ValueError) as raised:
        close_call_rows([_hyp(0.3), _hyp(None)], 0.5)
    assert str(raised.value) == "close calls need greedy margins (DecodingOptions.track_margins)"


def test_close_call_rows_are_int64_indices_even_when_none():
    for found, margin in (([], 0.5), ([_hyp(0.6), _hyp(0.5)], 0.5)):
        rows = close_call_rows(found, margin)
        assert rows.dtype == np.int64 and rows.size == 0
    rows = close_call_rows([_hyp(0.0), _hyp(1.0), _hyp(0.49)], 0.5)
    assert rows.dtype == np.int64 and rows.tolist() == [0, 2]


def test_no_rows_means_nothing_redone(bundles):
    reference, _ = bundles  # keeps no reference encoder: encoding again would raise
    pixels = _pixels(4)
    found, encoded, options = _greedy(reference, pixels)
    merged, merged_encoded = redo_rows(
        reference, pixels, tuple(found), encoded, options, np.zeros(0, np.int64)
    )
    assert merged == found and isinstance(merged, list)
    assert merged_encoded is encoded


def test_one_redone_row_is_the_references_and_only_that_row(bundles):
    reference, candidate = bundles
    pixels = _pixels()
    want, want_encoded, _ = _greedy(reference, pixels)
    got, encoded, options = _greedy(candidate, pixels)
    differ = [i for i, (a, b) in enumerate(zip(want, got)) if a.tokens != b.tokens]
    assert differ, "the stand-in encoder must change some captions for this test to mean anything"
    row = differ[-1]
    before = _copy(encoded)

    merged, merged_encoded = redo_rows(
        candidate, pixels, got, encoded, options, np.array([row], np.int64)
    )
    assert [h.tokens for h in merged] == [
        (want if i == row else got)[i].tokens for i in range(len(pixels))
    ]
    for name in FIELDS:
        spliced, kept = getattr(merged_encoded, name), getattr(before, name)
        np.testing.assert_allclose(spliced[row], getattr(want_encoded, name)[row], atol=1e-5)
        others = np.arange(len(pixels)) != row
        np.testing.assert_array_equal(spliced[others], kept[others])
        # the caller's outputs are left as they were: the redo works on copies
        np.testing.assert_array_equal(getattr(encoded, name), kept)


def test_without_a_margin_nothing_is_redone_and_no_margin_is_needed(bundles):
    reference, _ = bundles
    assert not reference.fallback_margin
    pixels = _pixels(4)
    found, encoded, options = _greedy(reference, pixels, track=False)
    same, same_encoded, count = redo_close_calls(reference, pixels, tuple(found), encoded, options)
    assert same == found and isinstance(same, list)
    assert same_encoded is encoded and count == 0


def test_the_close_calls_below_the_margin_are_counted_and_redone(bundles):
    reference, candidate = bundles
    pixels = _pixels()
    want, _, _ = _greedy(reference, pixels)
    got, encoded, options = _greedy(candidate, pixels)
    margins = sorted(h.margin for h in got)
    assert margins[3] < margins[4], "distinct margins, for the cut below to fall between"
    candidate.fallback_margin = (margins[3] + margins[4]) / 2  # four close calls
    below = [h.margin < candidate.fallback_margin for h in got]
    assert all(want[i].tokens != got[i].tokens for i in range(len(got))), "all need mending"
    merged, _, count = redo_close_calls(candidate, pixels, got, encoded, options)
    assert count == sum(below) == 4 and type(count) is int
    assert [h.tokens for h in merged] == [
        (want if close else got)[i].tokens for i, close in enumerate(below)
    ]
