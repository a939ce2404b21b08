"""Close calls: greedy margins, the f32 redo of a reduced encoder's close calls, and the
margin's choice and record (no openvino needed: a perturbed onnxruntime encoder stands
in for the reduced-precision one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from capbatch.export.precision import (
    ImageSet,
    check_runtime_precision,
    choose_fallback_margin,
    greedy_hypotheses,
    record_runtime_agreement,
)

import capbatch.bundle as bundle_module
from capbatch.bundle import load_bundle
from capbatch.captioner import Captioner, CaptionerArgs
from capbatch.close_calls import close_call_rows, redo_close_calls, redo_rows
from capbatch.decoding import DecodingOptions, Hypothesis, StepOutput, greedy_decode
from capbatch.encoder_runtime import choose_fallback_margin as loader_margin
from capbatch.encoder_runtime import other_cpu_warning
from capbatch.errors import BundleError, UsageError
from capbatch.manifest import read_manifest
from capbatch.providers import EncoderRuntime, Precision

BF16 = (EncoderRuntime.openvino, Precision.bf16)


class ScriptedSteps:
    """A step model whose log-probs per step are given: rows of the live images."""

    start_id, end_id = 1, 0

    def __init__(self, steps: list[np.ndarray]):
        self.steps = steps
        self.num_images = steps[0].shape[0]
        self.calls = 0

    def initial_state(self):
        return np.arange(self.num_images)

    def step(self, tokens, state):
        log_probs = self.steps[self.calls][state]
        self.calls += 1
        return StepOutput(log_probs.astype(np.float32), np.zeros((len(state), 1)), state)

    def select(self, state, rows):
        return state[rows]


def test_greedy_margin_is_the_closest_call_over_each_caption():
    # image 0: gaps 2.0 then 0.5 (<end>); image 1: gap 0.25 then ends (gap 3.0)
    first = np.log(np.array([[0.01, 0.02, 0.77, 0.1, 0.1], [0.1, 0.0001, 0.45, 0.35, 0.0999]]))
    second = np.log(np.array([[0.6, 0.01, 0.3, 0.05, 0.04], [0.9, 0.01, 0.04, 0.04, 0.01]]))
    steps = [np.clip(first, -30, 0), np.clip(second, -30, 0)]
    found = greedy_decode(ScriptedSteps(steps), DecodingOptions(max_len=5, track_margins=True))
    assert [h.tokens for h in found] == [(2,), (2,)]
    expected = [
        min(np.log(0.77) - np.log(0.1), np.log(0.6) - np.log(0.3)),
        min(np.log(0.45) - np.log(0.35), np.log(0.9) - np.log(0.04)),
    ]
    assert [h.margin for h in found] == pytest.approx(expected, rel=1e-5)
    plain = greedy_decode(ScriptedSteps(steps), DecodingOptions(max_len=5))
    assert [h.margin for h in plain] == [None, None]
    assert [h.tokens for h in plain] == [h.tokens for h in found]  # tracking changes nothing


def test_margins_are_for_greedy_only():
    with pytest.raises(ValueError, match="greedy"):
        DecodingOptions(beam_size=3, track_margins=True)


def test_close_call_rows_are_those_below_the_margin():
    def hyp(margin):
        return Hypothesis((3,), np.zeros(2, np.float32), 0.0, None, margin)

    found = [hyp(0.5), hyp(0.05), hyp(0.1), hyp(2.0)]
    assert close_call_rows(found, 0.1).tolist() == [1]  # strictly below
    assert close_call_rows(found, 0.6).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="track_margins"):
        close_call_rows([hyp(None)], 0.1)


def _pixels(n=24, size=32):
    return np.random.default_rng(11).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _greedy(bundle, pixels, track=True):
    options = DecodingOptions(max_len=bundle.max_len, track_margins=track)
    encoded = bundle.encode(pixels)
    return greedy_decode(bundle.step_model(encoded), options), encoded, options


def test_redone_rows_are_the_reference_captions_and_outputs(reduced):
    pixels = _pixels()
    reference = load_bundle(reduced, device="cpu")
    candidate = load_bundle(
        reduced, device="cpu", encoder_runtime="openvino", precision="bf16",
        require_agreement=False, fallback_margin=0.5,
    )  # fmt: skip
    assert candidate.reference_encoder is not None and candidate.fallback_margin == 0.5
    ref_hyps, ref_encoded, _ = _greedy(reference, pixels)
    got, encoded, options = _greedy(candidate, pixels)
    differ = [i for i, (a, b) in enumerate(zip(ref_hyps, got)) if a.tokens != b.tokens]
    assert differ, "the stand-in encoder must change some captions for this test to mean anything"

    rows = np.array([differ[0], len(pixels) - 1], dtype=np.int64)
    merged, merged_encoded = redo_rows(candidate, pixels, got, encoded, options, rows)
    for i in range(len(pixels)):
        source, outputs = (ref_hyps, ref_encoded) if i in rows else (got, encoded)
        assert merged[i].tokens == source[i].tokens
        np.testing.assert_allclose(merged_encoded.features[i], outputs.features[i], atol=1e-5)
        np.testing.assert_allclose(merged_encoded.h0[i], outputs.h0[i], atol=1e-5)
    assert merged[differ[0]].tokens != got[differ[0]].tokens  # a changed caption mended

    everything, _, count = redo_close_calls(candidate, pixels, got, encoded, options)
    assert count == int(sum(h.margin < 0.5 for h in got))
    assert [h.tokens for h in everything] == [
        ref_hyps[i].tokens if got[i].margin < 0.5 else got[i].tokens for i in range(len(got))
    ]


def test_no_margin_means_no_reference_encoder_and_nothing_redone(reduced):
    candidate = load_bundle(
        reduced, device="cpu", encoder_runtime="openvino", precision="bf16",
        require_agreement=False, fallback_margin=0.0,
    )  # fmt: skip
    assert candidate.reference_encoder is None and candidate.fallback_margin is None
    pixels = _pixels(6)
    got, encoded, options = _greedy(candidate, pixels)
    same, same_encoded, count = redo_close_calls(candidate, pixels, got, encoded, options)
    assert count == 0 and same == got and same_encoded is encoded
    with pytest.raises(ValueError, match="no reference encoder"):
        candidate.encode_reference(pixels)


def test_the_loader_takes_the_recorded_margin(reduced):
    manifest = read_manifest(reduced)
    assert loader_margin(manifest, EncoderRuntime.onnxruntime, Precision.f32, 0.3) is None
    assert loader_margin(manifest, *BF16, None) is None  # nothing recorded: no fallback
    assert loader_margin(manifest, *BF16, 0.25) == 0.25
    for bad in (-1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="fallback_margin"):
            loader_margin(manifest, *BF16, bad)
    record_runtime_agreement(reduced, "openvino-bf16", {"fallback_margin": 0.75})
    assert loader_margin(read_manifest(reduced), *BF16, None) == 0.75
    assert loader_margin(read_manifest(reduced), *BF16, 0.0) is None  # asked: none
    record_runtime_agreement(reduced, "openvino-bf16", {"fallback_margin": "lots"})
    with pytest.raises(BundleError, match="invalid fallback_margin 'lots'"):
        loader_margin(read_manifest(reduced), *BF16, None)


def test_the_budget_sets_the_margin_from_val():
    margins = [0.9, 0.1, 0.5, 0.3, 0.7, 2.0, 1.1, 0.2, 0.05, 3.0]
    assert choose_fallback_margin(margins, 0.0) == 0.0
    assert choose_fallback_margin(margins, 0.05) == 0.0  # the budget allows no caption
    assert choose_fallback_margin(margins, 0.2) == 0.2  # 0.05 and 0.1 are below it
    assert sum(m < choose_fallback_margin(margins, 0.3) for m in margins) == 3
    for bad in (-0.1, 1.0):
        with pytest.raises(UsageError, match="fallback-budget"):
            choose_fallback_margin(margins, bad)


def test_measured_and_recorded_with_a_fallback_as_the_captioner_runs(reduced):
    pixels = _pixels(40)
    sets = [
        ImageSet("val", tuple(map(str, range(20))), pixels[:20]),
        ImageSet("test", tuple(map(str, range(20))), pixels[20:]),
    ]
    plain = check_runtime_precision(reduced, "openvino", "bf16", sets, force=True)
    assert plain["fallback_margin"] == 0.0
    assert all(s["close_calls"] == 0 for s in plain["splits"].values())

    result = check_runtime_precision(
        reduced, "openvino", "bf16", sets, fallback_budget=0.5, record=True, force=True
    )
    margin = result["fallback_margin"]
    assert margin > 0 and result["agreement_without_fallback"] == {
        name: split["agreement"] for name, split in plain["splits"].items()
    }
    assert result["splits"]["val"]["close_calls"] == 10  # half of val, as budgeted
    for name, split in result["splits"].items():
        assert split["agreement"] >= plain["splits"][name]["agreement"]
    # The record is what the loader uses: the same margin, a reference encoder kept.
    loaded = load_bundle(reduced, device="cpu", encoder_runtime="openvino", precision="bf16",
                         require_agreement=False)  # fmt: skip
    assert loaded.fallback_margin == margin and loaded.reference_encoder is not None
    found, redone = greedy_hypotheses(loaded, sets[1].pixels)
    assert redone == result["splits"]["test"]["close_calls"]

    captioner = Captioner.__new__(Captioner)
    captioner._load(CaptionerArgs(model=reduced, device="cpu"), warn=print)
    captioner.bundle = loaded
    captioner.options = DecodingOptions(max_len=loaded.max_len, track_margins=True)
    assert [h.tokens for h in captioner.hypotheses(sets[1].pixels)] == [h.tokens for h in found]
    assert captioner.close_calls == redone


def test_beam_search_with_a_reduced_precision_is_refused():
    with pytest.raises(UsageError, match="greedy captions; use beam size 1"):
        CaptionerArgs(beam_size=3, encoder_runtime="openvino", precision="bf16", device="cpu")
    CaptionerArgs(beam_size=3, encoder_runtime="openvino", precision="f32", device="cpu")


def test_an_agreement_measured_on_another_cpu_is_named(reduced, monkeypatch):
    record_runtime_agreement(
        reduced,
        "openvino-bf16",
        {
            "encoder_sha256": read_manifest(reduced).files["encoder.onnx"],
            "passed": True,
            "splits": {},
            "device": "Some Other CPU",
        },
    )
    assert other_cpu_warning(read_manifest(reduced), *BF16, "Some Other CPU") is None
    assert other_cpu_warning(read_manifest(reduced), *BF16, None) is None
    assert (
        other_cpu_warning(read_manifest(reduced), EncoderRuntime.openvino, Precision.f32, "X")
        is None
    )
    warned = []
    real = bundle_module.create_encoder

    def on_this_cpu(*args):
        session = real(*args)
        return type("Encoder", (), {
            "device_name": "This CPU",
            "run": session.run,
            "get_inputs": session.get_inputs,
            "get_outputs": session.get_outputs,
        })()  # fmt: skip

    monkeypatch.setattr(bundle_module, "create_encoder", on_this_cpu)
    load_bundle(
        reduced, device="cpu", encoder_runtime="openvino", precision="bf16", warn=warned.append
    )
    assert warned == [
        "the openvino-bf16 caption agreement of "
        f"{read_manifest(reduced).model_id} was measured on Some Other CPU, not on this CPU "
        "(This CPU); measure it here with python -m capbatch.export.precision (docs/export.md)"
    ]


def test_the_cli_refuses_beam_search_with_bf16_in_one_line(capsys, tmp_path):
    from tests.cli.test_caption import run_cli

    out = tmp_path / "rows.csv"
    args = ("--encoder-runtime", "openvino", "--precision", "bf16", "--beam-size", "3")
    samples = Path(__file__).resolve().parents[2] / "samples"
    code, _, err = run_cli(capsys, "caption", samples, "--out", out, *args)
    assert code == 2 and not out.exists()
    assert err.strip().splitlines() == [
        "capbatch: error: precision bf16 is measured and gated on greedy captions; "
        "use beam size 1, or precision f32 for beam search"
    ]
