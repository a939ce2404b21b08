"""What export validation (capbatch.export.validate) promises, on a tiny trained model.

- An exported graph whose I/O names differ from export/specs.py is refused
  before anything runs, with a ValidationError naming the graph and each
  differing list (inputs, outputs).
- Shapes: every output whose shape differs from PyTorch's is reported with its
  batch and both shapes, and then only shapes are reported.
- Values: the largest |ORT - PyTorch| per output across every batch and step is
  compared with its tolerance (absolute, or scaled by PyTorch's peak for the
  relative ones); a value over it (not one equal to it) is refused naming the
  graph and every failing output with both figures. Outputs without a
  tolerance (topk_ids) are not compared by value.
- The step graph is driven with ORT's own outputs (h, c, argmax token) fed back
  into both runtimes, at each validation batch size (images reused in order
  when a batch is larger than the set), from the start token.
- Greedy captions: ORT's tokens must equal PyTorch's on every image, except a
  near-tie (the two tokens' ORT log-probs, teacher-forced on PyTorch's prefix,
  within tie_gap, inclusive), which is reported, not failed; caption_agreement
  is the fraction identical; first_divergence's index semantics.
- validation_images reads the files `capbatch caption` reads (sorted, any case
  of extension) through the runtime's preprocessing, names an unreadable one,
  and otherwise generates the same deterministic scenes every time.
"""

from __future__ import annotations

import copy
import hashlib
import re
from types import SimpleNamespace

import numpy as np
import pytest

from tests.conftest import needs_torch

pytestmark = needs_torch

TOL = 1e-4  # export/specs.py FP32_ATOL: the absolute outputs' tolerance


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny():
    """The tiny trained model (the export copy validation compares), its bundle, images."""
    import torch
    from capbatch.export.wrappers import export_copy
    from capbatch.training.checkpoint import load_checkpoint, model_from_checkpoint

    from tests.bundles import make_tiny_bundle, tiny_checkpoint_of, tiny_images

    # Tiny ops on a shared 2-core machine: one thread is faster (as tests/bundles.py).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    bundle = make_tiny_bundle()  # exported once per process, validation off
    model = export_copy(model_from_checkpoint(load_checkpoint(tiny_checkpoint_of(bundle))))
    yield SimpleNamespace(
        bundle=bundle,
        model=model,
        encoder=bundle / "encoder.onnx",
        step=bundle / "decoder_step.onnx",
        images=tiny_images(),
    )
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sessions(tiny):
    from capbatch.export.validate import ort_session

    return ort_session(tiny.encoder), ort_session(tiny.step)


@pytest.fixture(scope="module")
def topk_bundle(tiny):
    from tests.bundles import make_tiny_bundle

    return make_tiny_bundle(top_k=2)  # same checkpoint, step graph with 2 extra outputs


def _vocab_ids(caption: str) -> tuple[int, ...]:
    from tests.bundles import tiny_vocab

    vocab = tiny_vocab()
    return tuple(vocab.index(word) for word in caption.split())


def _perturbed(model, **changes):
    """A copy of model with `bias_name=(index or None, delta)` added to some biases."""
    import torch

    other = copy.deepcopy(model)
    with torch.no_grad():
        for name, (index, delta) in changes.items():
            bias = other.decoder.get_submodule(name).bias
            if index is None:
                bias += delta
            else:
                bias[index] += delta
    return other


class Recorder:
    """A real ORT session that remembers each run (names asked, feeds, outputs);
    `change(feeds, outputs)` may alter what the validator gets back, `adapt(feeds)`
    what the real session is fed."""

    def __init__(self, session, change=None, adapt=None):
        self.session, self.change, self.adapt, self.calls = session, change, adapt, []

    def get_inputs(self):
        return self.session.get_inputs()

    def get_outputs(self):
        return self.session.get_outputs()

    def run(self, names, feeds):
        outputs = self.session.run(names, feeds if self.adapt is None else self.adapt(feeds))
        if self.change is not None:
            outputs = self.change(feeds, outputs)
        self.calls.append((names, {k: v.copy() for k, v in feeds.items()}, outputs))
        return outputs


class NamedOnly:
    """A session that only has names: validation must refuse it before running it."""

    def __init__(self, inputs, outputs):
        self.inputs, self.outputs = inputs, outputs

    def get_inputs(self):
        return [SimpleNamespace(name=n) for n in self.inputs]

    def get_outputs(self):
        return [SimpleNamespace(name=n) for n in self.outputs]

    def run(self, names, feeds):
        raise AssertionError("a graph with the wrong names was run")


def _use_sessions(monkeypatch, tiny, encoder, step):
    from capbatch.export import validate

    by_path = {str(tiny.encoder): encoder, str(tiny.step): step}
    monkeypatch.setattr(validate, "ort_session", lambda path: by_path[str(path)])


def _recorders(monkeypatch, tiny, sessions, step_change=None):
    encoder, step = Recorder(sessions[0]), Recorder(sessions[1], step_change)
    _use_sessions(monkeypatch, tiny, encoder, step)
    return encoder, step


# --------------------------------------------------------------------------- errors, sessions


def test_validation_error_names_the_graph_and_joins_every_failure():
    from capbatch.export.validate import ValidationError

    from capbatch.errors import ExportError

    error = ValidationError("decoder_step", ["h_out: a", "alpha: b"])
    assert isinstance(error, ExportError)  # the CLI's one-line, exit-2 errors
    assert error.graph == "decoder_step"
    assert error.failures == ["h_out: a", "alpha: b"]
    assert str(error) == "decoder_step validation failed: h_out: a; alpha: b"


def test_ort_session_runs_on_the_cpu_provider_with_warnings_silenced(tiny):
    from capbatch.export.validate import ort_session

    session = ort_session(tiny.encoder)
    assert session.get_providers() == ["CPUExecutionProvider"]
    # Severity 3 = errors only: ORT's warnings would interleave with export's report.
    assert session.get_session_options().log_severity_level == 3


def test_ort_session_asks_for_the_cpu_provider_by_name(tiny, monkeypatch):
    import onnxruntime
    from capbatch.export.validate import ort_session

    # With a GPU build installed, ORT's default would be CUDA; validation is the CPU
    # EP's (docs/export.md), and a misspelt provider would only fall back with a banner.
    asked = []
    monkeypatch.setattr(
        onnxruntime, "InferenceSession", lambda *args, **kwargs: asked.append((args, kwargs))
    )
    ort_session(tiny.encoder)
    ((args, kwargs),) = asked
    assert args[0] == str(tiny.encoder)
    assert kwargs == {"providers": ["CPUExecutionProvider"]}


# --------------------------------------------------------------------------- names


def test_exported_graphs_have_the_spec_names(sessions):
    from capbatch.export.specs import DECODER_STEP, ENCODER
    from capbatch.export.validate import check_io_names

    assert check_io_names(sessions[0], ENCODER) == []
    assert check_io_names(sessions[1], DECODER_STEP) == []


def test_check_io_names_reports_inputs_and_outputs_each_with_both_lists():
    from capbatch.export.specs import ENCODER
    from capbatch.export.validate import check_io_names

    # Order matters too: the runtime feeds and reads by position in places.
    swapped = NamedOnly(["images"], ["projected", "features", "h0", "c0"])
    assert check_io_names(swapped, ENCODER) == [
        "outputs are ['projected', 'features', 'h0', 'c0'], "
        "expected ['features', 'projected', 'h0', 'c0']"
    ]
    renamed = NamedOnly(["pixels"], ["features", "projected", "h0"])
    assert check_io_names(renamed, ENCODER) == [
        "inputs are ['pixels'], expected ['images']",
        "outputs are ['features', 'projected', 'h0'], "
        "expected ['features', 'projected', 'h0', 'c0']",
    ]


def test_validate_graphs_refuses_a_renamed_encoder_before_running_anything(
    tiny, sessions, monkeypatch
):
    from capbatch.export.validate import ValidationError, validate_graphs

    bad = NamedOnly(["image"], ["features", "projected", "h0", "c0"])
    _use_sessions(monkeypatch, tiny, bad, Recorder(sessions[1]))
    with pytest.raises(ValidationError) as caught:
        validate_graphs(tiny.model, tiny.encoder, tiny.step, tiny.images, batches=(1,), steps=1)
    assert caught.value.graph == "encoder"
    assert caught.value.failures == ["inputs are ['image'], expected ['images']"]


def test_validate_graphs_refuses_a_step_graph_without_the_topk_outputs_it_asked_for(
    tiny, sessions, monkeypatch
):
    from capbatch.export.validate import ValidationError, validate_graphs

    # A plain step graph validated as a top_k=2 one: names differ, graph named.
    encoder, step = _recorders(monkeypatch, tiny, sessions)
    with pytest.raises(ValidationError) as caught:
        validate_graphs(
            tiny.model, tiny.encoder, tiny.step, tiny.images, top_k=2, batches=(1,), steps=1
        )
    assert caught.value.graph == "decoder_step"
    assert caught.value.failures == [
        "outputs are ['log_probs', 'h_out', 'c_out', 'alpha'], expected ['log_probs', "
        "'h_out', 'c_out', 'alpha', 'topk_log_probs', 'topk_ids']"
    ]
    assert encoder.calls == [] and step.calls == []  # names first, nothing run


# --------------------------------------------------------------------------- the diff tracker


def test_diff_tracker_keeps_the_largest_diff_and_pytorch_peak_across_runs():
    import torch
    from capbatch.export.specs import ENCODER
    from capbatch.export.validate import _DiffTracker

    tracker = _DiffTracker(ENCODER)
    assert tracker.diff == {"features": 0.0, "projected": 0.0, "h0": 0.0, "c0": 0.0}
    assert tracker.peak == tracker.diff and tracker.shape_failures == []
    # PyTorch's outputs as a module gives them outside inference mode (requires grad).
    want = [
        torch.full((1, 2, 3), 2.0, requires_grad=True),
        torch.full((1, 2, 2), -3.0),
        torch.zeros(1, 4),
        torch.full((1, 4), 0.5),
    ]
    got = [
        np.full((1, 2, 3), 2.25, np.float32),
        np.full((1, 2, 2), -3.0, np.float32),
        np.full((1, 4), -0.5, np.float32),  # ORT's magnitude is not the peak: PyTorch's is
        np.full((1, 4), 0.5, np.float32),
    ]
    tracker.add(got, want, 1)
    assert tracker.diff == {"features": 0.25, "projected": 0.0, "h0": 0.5, "c0": 0.0}
    assert tracker.peak == {"features": 2.0, "projected": 3.0, "h0": 0.0, "c0": 0.5}
    # A second run: a smaller diff but a larger peak for features; the maxima are kept.
    want2 = [torch.full((3, 2, 3), -8.0), torch.ones(3, 2, 2), torch.zeros(3, 4), torch.ones(3, 4)]
    got2 = [w.numpy().copy() for w in want2]
    got2[0][2, 1, 2] = -8.125
    got2[3][1, 0] = 2.0
    tracker.add(got2, want2, 3)
    assert tracker.diff == {"features": 0.25, "projected": 0.0, "h0": 0.5, "c0": 1.0}
    assert tracker.peak == {"features": 8.0, "projected": 3.0, "h0": 0.0, "c0": 1.0}
    # Relative outputs scale with max(1, peak); h0 (bounded) keeps its absolute atol.
    assert tracker.tolerances() == {
        "features": TOL * 8.0,
        "projected": TOL * 3.0,
        "h0": TOL,
        "c0": TOL,
    }
    assert tracker.failures() == [
        "features: max abs diff 0.25 > tolerance 0.0008",
        "h0: max abs diff 0.5 > tolerance 0.0001",
        "c0: max abs diff 1 > tolerance 0.0001",
    ]


def test_a_diff_equal_to_its_tolerance_passes_and_one_above_it_fails():
    import torch
    from capbatch.export.specs import GraphSpec, TensorSpec
    from capbatch.export.validate import _DiffTracker

    spec = GraphSpec("g", "g.onnx", (), (TensorSpec("x", "float64", ("b",), 0.5),))
    tracker = _DiffTracker(spec)
    tracker.add([np.array([0.5])], [torch.zeros(1, dtype=torch.float64)], 1)
    assert tracker.diff == {"x": 0.5}
    assert tracker.failures() == []  # "max abs diff <= tolerance"
    tracker.add([np.array([-0.625])], [torch.zeros(1, dtype=torch.float64)], 1)
    assert tracker.failures() == ["x: max abs diff 0.625 > tolerance 0.5"]


def test_an_empty_batch_compares_as_no_difference():
    import torch
    from capbatch.export.specs import ENCODER
    from capbatch.export.validate import _DiffTracker

    tracker = _DiffTracker(ENCODER)
    shapes = [(0, 2, 3), (0, 2, 2), (0, 4), (0, 4)]
    tracker.add([np.zeros(s, np.float32) for s in shapes], [torch.zeros(s) for s in shapes], 0)
    assert tracker.diff == dict.fromkeys(["features", "projected", "h0", "c0"], 0.0)
    assert tracker.peak == tracker.diff
    assert tracker.failures() == []


def test_shape_mismatches_are_reported_per_output_and_batch_and_replace_value_failures():
    import torch
    from capbatch.export.specs import ENCODER
    from capbatch.export.validate import _DiffTracker

    tracker = _DiffTracker(ENCODER)
    want = [torch.zeros(5, 2, 3), torch.zeros(5, 2, 2), torch.zeros(5, 4), torch.zeros(5, 4)]
    got = [
        np.zeros((5, 2, 4), np.float32),  # wrong D
        np.zeros((5, 2, 2), np.float32),
        np.ones((5, 4), np.float32),  # over tolerance, but shapes come first
        np.zeros((4, 4), np.float32),  # wrong batch
    ]
    tracker.add(got, want, 5)
    assert tracker.shape_failures == [
        "features at batch 5: shape (5, 2, 4), PyTorch (5, 2, 3)",
        "c0 at batch 5: shape (4, 4), PyTorch (5, 4)",
    ]
    # Outputs with the right shape are still compared; the misshapen ones are not.
    assert tracker.diff == {"features": 0.0, "projected": 0.0, "h0": 1.0, "c0": 0.0}
    assert tracker.failures() == tracker.shape_failures


def test_outputs_without_a_tolerance_are_shape_checked_but_not_compared_by_value():
    import torch
    from capbatch.export.specs import GraphSpec, TensorSpec, decoder_step_spec
    from capbatch.export.validate import _DiffTracker

    assert list(_DiffTracker(decoder_step_spec(2)).diff) == [
        "log_probs", "h_out", "c_out", "alpha", "topk_log_probs",
    ]  # fmt: skip
    # An id output first: different ids (ties may order differently) fail nothing,
    # and the outputs after it are still compared.
    spec = GraphSpec(
        "g", "g.onnx", (),
        (TensorSpec("ids", "int64", ("b",)), TensorSpec("x", "float32", ("b",), TOL)),
    )  # fmt: skip
    tracker = _DiffTracker(spec)
    tracker.add([np.array([3, 1]), np.array([1.0, 2.0], np.float32)],
                [torch.tensor([1, 3]), torch.tensor([1.0, 2.5])], 2)  # fmt: skip
    assert tracker.diff == {"x": 0.5}
    assert tracker.failures() == ["x: max abs diff 0.5 > tolerance 0.0001"]
    tracker.add([np.array([3]), np.array([1.0], np.float32)],
                [torch.tensor([1, 3]), torch.tensor([1.0])], 2)  # fmt: skip
    assert tracker.failures() == ["ids at batch 2: shape (1,), PyTorch (2,)"]


# --------------------------------------------------------------------------- validate_graphs


def _torch_reference(tiny, batches, step_calls):
    """PyTorch's outputs for the inputs validation fed: encoder per batch, step per call."""
    import torch
    from capbatch.export.specs import DECODER_STEP
    from capbatch.export.wrappers import DecoderStepGraph, EncoderGraph

    with torch.inference_mode():
        encoder = EncoderGraph(tiny.model).eval()
        step = DecoderStepGraph(tiny.model).eval()
        encoded = [encoder(torch.from_numpy(tiny.images[:b])) for b in batches]
        stepped = [
            step(*(torch.from_numpy(feeds[n]) for n in DECODER_STEP.input_names))
            for _, feeds, _ in step_calls
        ]
    return [[t.numpy() for t in out] for out in encoded], [[t.numpy() for t in s] for s in stepped]


def test_validate_graphs_reports_each_outputs_max_diff_and_its_tolerance(
    tiny, sessions, monkeypatch
):
    from capbatch.export.specs import DECODER_STEP, ENCODER
    from capbatch.export.validate import validate_graphs

    encoder, step = _recorders(monkeypatch, tiny, sessions)
    result = validate_graphs(
        tiny.model, tiny.encoder, tiny.step, tiny.images, batches=(1, 3), steps=3
    )
    assert result["batches"] == [1, 3] and result["steps"] == 3
    names = ENCODER.output_names + DECODER_STEP.output_names
    assert list(result["max_abs_diff"]) == names and list(result["tolerance"]) == names
    # Recompute from the same inputs: the largest |ORT - PyTorch| and PyTorch's peak.
    encoded, stepped = _torch_reference(tiny, (1, 3), step.calls)
    pairs = {name: [] for name in names}
    for calls, reference, spec in ((encoder.calls, encoded, ENCODER),
                                   (step.calls, stepped, DECODER_STEP)):  # fmt: skip
        for (_, _, got), want in zip(calls, reference, strict=True):
            for name, g, w in zip(spec.output_names, got, want, strict=True):
                pairs[name].append((g, w))
    relative = {"features", "projected", "c0", "c_out"}
    for name in names:
        diff = max(float(np.max(np.abs(g - w))) for g, w in pairs[name])
        peak = max(float(np.max(np.abs(w))) for _, w in pairs[name])
        assert result["max_abs_diff"][name] == diff, name
        assert result["tolerance"][name] == (TOL * max(1.0, peak) if name in relative else TOL)
        assert diff <= result["tolerance"][name]
    # The backbone's features exceed 1, so their tolerance really scaled.
    assert result["tolerance"]["features"] > TOL


def test_validate_graphs_defaults_to_batches_1_3_7_and_30_steps(tiny, sessions, monkeypatch):
    from capbatch.export.validate import validate_graphs

    encoder, step = _recorders(monkeypatch, tiny, sessions)
    result = validate_graphs(tiny.model, tiny.encoder, tiny.step, tiny.images)
    assert result["batches"] == [1, 3, 7] and result["steps"] == 30
    assert [feeds["images"].shape[0] for _, feeds, _ in encoder.calls] == [1, 3, 7]
    assert len(step.calls) == 3 * 30


def test_the_step_graph_is_fed_orts_own_outputs_from_the_start_token(tiny, sessions, monkeypatch):
    from capbatch.export.validate import validate_graphs

    encoder, step = _recorders(monkeypatch, tiny, sessions)
    validate_graphs(tiny.model, tiny.encoder, tiny.step, tiny.images, batches=(2, 9), steps=3)
    # A batch larger than the image set reuses the images in order.
    assert [names for names, _, _ in encoder.calls] == [None, None]
    assert np.array_equal(encoder.calls[0][1]["images"], tiny.images[:2])
    assert np.array_equal(encoder.calls[1][1]["images"], tiny.images[[0, 1, 2, 3, 4, 5, 6, 7, 0]])
    assert len(step.calls) == 6
    for b, (_, _, encoded) in enumerate(encoder.calls):
        features, projected, h, c = encoded
        calls = step.calls[3 * b : 3 * b + 3]
        tokens = np.full(len(features), 1, np.int64)  # <start>
        for _, feeds, outputs in calls:
            assert feeds["tokens"].dtype == np.int64
            assert np.array_equal(feeds["tokens"], tokens)
            assert np.array_equal(feeds["h"], h) and np.array_equal(feeds["c"], c)
            assert np.array_equal(feeds["features"], features)
            assert np.array_equal(feeds["projected"], projected)
            tokens, h, c = outputs[0].argmax(axis=-1), outputs[1], outputs[2]


def test_encoder_value_drift_is_refused_naming_the_encoder_and_each_output(tiny):
    import torch
    from capbatch.export.validate import ValidationError, validate_graphs
    from capbatch.export.wrappers import EncoderGraph

    # PyTorch's h0 and c0 moved (and its step too: the encoder is reported first).
    model = _perturbed(tiny.model, init_h=(None, 0.5), init_c=(None, 0.25), fc=(5, 3.0))
    with pytest.raises(ValidationError) as caught:
        validate_graphs(model, tiny.encoder, tiny.step, tiny.images, batches=(1, 3), steps=2)
    with torch.inference_mode():
        peak = max(
            float(EncoderGraph(model)(torch.from_numpy(tiny.images[:b]))[3].abs().max())
            for b in (1, 3)
        )
    assert caught.value.graph == "encoder"
    assert caught.value.failures == [
        f"h0: max abs diff 0.5 > tolerance {TOL:.3g}",
        f"c0: max abs diff 0.25 > tolerance {TOL * max(1.0, peak):.3g}",
    ]
    assert str(caught.value).startswith("encoder validation failed: h0: max abs diff 0.5 > ")


def test_step_value_drift_is_refused_naming_the_step_graph_and_only_the_drifting_output(
    tiny, sessions, monkeypatch
):
    import torch
    from capbatch.export.specs import DECODER_STEP
    from capbatch.export.validate import ValidationError, validate_graphs
    from capbatch.export.wrappers import DecoderStepGraph

    model = _perturbed(tiny.model, fc=(5, 3.0))  # only the vocabulary projection moved
    _, step = _recorders(monkeypatch, tiny, sessions)
    with pytest.raises(ValidationError) as caught:
        validate_graphs(model, tiny.encoder, tiny.step, tiny.images, batches=(1, 3), steps=2)
    # h_out, c_out and alpha come before fc: fed the same inputs, they still agree.
    with torch.inference_mode():
        graph = DecoderStepGraph(model)
        diff = max(
            float(np.max(np.abs(outputs[0] - graph(
                *(torch.from_numpy(feeds[n]) for n in DECODER_STEP.input_names)
            )[0].numpy())))
            for _, feeds, outputs in step.calls
        )  # fmt: skip
    assert diff > 0.1
    assert caught.value.graph == "decoder_step"
    assert caught.value.failures == [f"log_probs: max abs diff {diff:.3g} > tolerance 0.0001"]


def test_topk_log_probs_are_compared_by_value_too(tiny, topk_bundle):
    from capbatch.export.validate import ValidationError, validate_graphs

    encoder, step = topk_bundle / "encoder.onnx", topk_bundle / "decoder_step.onnx"
    result = validate_graphs(tiny.model, encoder, step, tiny.images, top_k=2, batches=(3,), steps=2)
    assert list(result["max_abs_diff"])[-2:] == ["alpha", "topk_log_probs"]
    model = _perturbed(tiny.model, fc=(5, 3.0))
    with pytest.raises(ValidationError) as caught:
        validate_graphs(model, encoder, step, tiny.images, top_k=2, batches=(3,), steps=2)
    assert caught.value.graph == "decoder_step"
    assert [f.split(":")[0] for f in caught.value.failures] == ["log_probs", "topk_log_probs"]


def test_a_step_output_with_the_wrong_shape_is_refused_at_each_batch_and_step(
    tiny, sessions, monkeypatch
):
    from capbatch.export.validate import ValidationError, validate_graphs

    def drop_a_region_at_batch_3(feeds, outputs):
        if len(feeds["tokens"]) == 3:  # alpha is not fed back, so the loop goes on
            outputs = [*outputs[:3], outputs[3][:, :-1]]
        return outputs

    _recorders(monkeypatch, tiny, sessions, drop_a_region_at_batch_3)
    with pytest.raises(ValidationError) as caught:
        validate_graphs(tiny.model, tiny.encoder, tiny.step, tiny.images, batches=(1, 3), steps=2)
    assert caught.value.graph == "decoder_step"
    assert caught.value.failures == ["alpha at batch 3: shape (3, 3), PyTorch (3, 4)"] * 2


def test_encoder_outputs_with_the_wrong_shape_are_refused_naming_their_batch(
    tiny, sessions, monkeypatch
):
    from capbatch.export.validate import ValidationError, validate_graphs

    regions = tiny.model.config.num_regions

    def extra_region_at_batch_3(feeds, outputs):
        if len(feeds["images"]) == 3:
            pad = ((0, 0), (0, 1), (0, 0))
            outputs = [np.pad(outputs[0], pad), np.pad(outputs[1], pad), *outputs[2:]]
        return outputs

    def real_regions(feeds):  # the real step graph still runs (PyTorch's takes any L)
        return {
            **feeds,
            "features": feeds["features"][:, :regions],
            "projected": feeds["projected"][:, :regions],
        }

    encoder = Recorder(sessions[0], extra_region_at_batch_3)
    _use_sessions(monkeypatch, tiny, encoder, Recorder(sessions[1], adapt=real_regions))
    with pytest.raises(ValidationError) as caught:
        validate_graphs(tiny.model, tiny.encoder, tiny.step, tiny.images, batches=(1, 3), steps=1)
    features, projected = (encoder.calls[1][2][i].shape[2] for i in (0, 1))
    assert caught.value.graph == "encoder"
    assert caught.value.failures == [
        f"features at batch 3: shape (3, {regions + 1}, {features}), "
        f"PyTorch (3, {regions}, {features})",
        f"projected at batch 3: shape (3, {regions + 1}, {projected}), "
        f"PyTorch (3, {regions}, {projected})",
    ]


# --------------------------------------------------------------------------- greedy captions


def test_torch_greedy_gives_pytorchs_tokens_and_steps(tiny):
    from capbatch.export.validate import torch_greedy

    from tests.bundles import TINY_CAPTIONS

    expected = [(_vocab_ids(c), len(c.split()) + 1) for c in TINY_CAPTIONS]  # + <end>
    assert torch_greedy(tiny.model, tiny.images) == expected


def test_ort_greedy_is_the_runtimes_loop_over_the_four_step_outputs(tiny, topk_bundle):
    from capbatch.export.specs import DECODER_STEP
    from capbatch.export.validate import ort_greedy, ort_session

    from tests.bundles import TINY_CAPTIONS

    encoder = Recorder(ort_session(topk_bundle / "encoder.onnx"))
    step = Recorder(ort_session(topk_bundle / "decoder_step.onnx"))
    got = ort_greedy(encoder, step, tiny.images, start_id=1, end_id=2, max_len=12)
    assert [r.tokens for r in got] == [_vocab_ids(c) for c in TINY_CAPTIONS]
    assert [r.steps for r in got] == [len(c.split()) + 1 for c in TINY_CAPTIONS]
    # A top-k step graph has six outputs; the loop asks for the four it uses.
    assert {tuple(names) for names, _, _ in step.calls} == {tuple(DECODER_STEP.output_names)}
    assert [names for names, _, _ in encoder.calls] == [None]
    assert np.array_equal(step.calls[0][1]["tokens"], np.ones(8, np.int64))  # <start>
    # max_len counts generated tokens: 2 stops every caption after its second word.
    short = ort_greedy(encoder, step, tiny.images, start_id=1, end_id=2, max_len=2)
    assert [r.tokens for r in short] == [_vocab_ids(c)[:2] for c in TINY_CAPTIONS]
    assert [r.steps for r in short] == [2] * 8


def test_forced_gap_is_the_log_prob_gap_after_pytorchs_prefix(tiny, sessions):
    import torch
    from capbatch.export.validate import forced_gap
    from capbatch.export.wrappers import DecoderStepGraph, EncoderGraph

    image = tiny.images[5]  # "blue circle on red"
    prefix = list(_vocab_ids("blue circle on"))
    red, end = _vocab_ids("red")[0], 2
    step = Recorder(sessions[1])
    gap = forced_gap(sessions[0], step, image, prefix, red, end, 1)
    # Teacher-forced: <start> then the prefix, one image, ORT's state carried along.
    assert [feeds["tokens"].tolist() for _, feeds, _ in step.calls] == [[1], *[[t] for t in prefix]]
    for (_, _, previous), (_, feeds, _) in zip(step.calls, step.calls[1:]):
        assert np.array_equal(feeds["h"], previous[1]) and np.array_equal(feeds["c"], previous[2])
    with torch.inference_mode():
        features, projected, h, c = EncoderGraph(tiny.model)(torch.from_numpy(image[None]))
        graph = DecoderStepGraph(tiny.model)
        for token in [1, *prefix]:
            log_probs, h, c, _ = graph(torch.tensor([token]), h, c, features, projected)
    expected = abs(float(log_probs[0, red]) - float(log_probs[0, end]))
    assert expected > 0.5  # the trained model is sure of "red" here
    assert gap == pytest.approx(expected, abs=2 * TOL)
    assert forced_gap(sessions[0], sessions[1], image, prefix, end, red, 1) == gap


def _hypothesis(tokens, steps):
    from capbatch.decoding import Hypothesis

    return Hypothesis(tuple(tokens), np.zeros(steps, np.float32), 0.0)


def test_first_divergence_is_the_first_differing_index_or_the_shorter_length():
    from capbatch.export.validate import first_divergence

    assert first_divergence([4, 5, 6], [4, 5, 6]) is None
    assert first_divergence([], []) is None
    assert first_divergence([7, 5], [4, 5]) == 0
    assert first_divergence([4, 5, 6], [4, 9, 6]) == 1
    assert first_divergence([4, 5, 6], [4, 5, 7, 8]) == 2  # the first difference wins
    # One a prefix of the other: the index just past the shorter one.
    assert first_divergence([4, 5], [4, 5, 2]) == 2
    assert first_divergence([4, 5, 2], [4, 5]) == 2
    assert first_divergence([], [3]) == 0


def test_with_end_appends_end_only_when_a_step_generated_it():
    from capbatch.export.validate import _with_end

    assert _with_end((4, 5), 3, 2) == [4, 5, 2]  # 3 steps, 2 tokens: the third was <end>
    assert _with_end((4, 5), 2, 2) == [4, 5]  # stopped by max_len
    assert _with_end((), 1, 9) == [9]


def test_divergence_is_where_the_tokens_part_and_the_gap_there(tiny, sessions):
    from capbatch.export.validate import divergence, forced_gap

    config = SimpleNamespace(start_id=1, end_id=2)
    image = tiny.images[5]
    # Identical (with <end>): nothing to measure, and the sessions are not used.
    assert divergence(None, None, image, _hypothesis([5, 6], 3), ((5, 6), 3), config) == (
        None, None,
    )  # fmt: skip
    # ORT says "red" where PyTorch ended: index 3, the gap between the two there.
    where, gap = divergence(
        sessions[0], sessions[1], image, _hypothesis([5, 6, 10, 11], 5), ((5, 6, 10), 4), config
    )
    assert where == 3
    assert gap == forced_gap(sessions[0], sessions[1], image, [5, 6, 10], 11, 2, 1)
    # One ran out of max_len where the other ended: no second token, no gap.
    assert divergence(None, None, image, _hypothesis([5, 6], 2), ((5, 6), 3), config) == (2, None)
    assert divergence(None, None, image, _hypothesis([5, 6], 3), ((5, 6), 2), config) == (2, None)
    # The config's end id is the one appended.
    other_end = SimpleNamespace(start_id=1, end_id=9)
    assert divergence(None, None, image, _hypothesis([5], 2), ((5, 9), 2), other_end) == (
        None, None,
    )  # fmt: skip


def test_validate_captions_passes_identical_tokens_with_full_agreement(tiny):
    from capbatch.export.validate import validate_captions

    result = validate_captions(tiny.model, tiny.encoder, tiny.step, tiny.images, tie_gap=2e-4)
    assert result == {"images": 8, "caption_agreement": 1.0, "near_ties": []}


@pytest.fixture(scope="module")
def no_red(tiny):
    """PyTorch never says "red": images 0, 3 and 5 diverge from ORT, the others agree."""
    from capbatch.export.validate import torch_greedy

    red = _vocab_ids("red")[0]
    model = _perturbed(tiny.model, fc=(red, -50.0))
    return SimpleNamespace(model=model, reference=torch_greedy(model, tiny.images))


def _gaps(tiny, sessions, no_red):
    from capbatch.export.validate import forced_gap

    gaps = {}
    for index, where in ((0, 0), (3, 1), (5, 3)):
        tokens, steps = no_red.reference[index]
        want = [*tokens, 2][where]
        gaps[index] = forced_gap(
            sessions[0], sessions[1], tiny.images[index], list(tokens[:where]),
            _vocab_ids("red")[0], want, 1,
        )  # fmt: skip
    return gaps


def test_diverging_captions_are_refused_naming_each_image_its_tokens_and_step(tiny, no_red):
    from capbatch.export.validate import ValidationError, validate_captions

    from tests.bundles import TINY_CAPTIONS

    with pytest.raises(ValidationError) as caught:
        validate_captions(no_red.model, tiny.encoder, tiny.step, tiny.images, tie_gap=0.0)
    assert caught.value.graph == "greedy captions"
    # "red" is the first word of image 0, the second of 3, the fourth of 5.
    assert caught.value.failures == [
        f"image {i}: ORT tokens {list(_vocab_ids(TINY_CAPTIONS[i]))} "
        f"!= PyTorch {no_red.reference[i][0]} (step {step})"
        for i, step in ((0, 0), (3, 1), (5, 3))
    ]
    # The other five images agree, so they are not listed.
    for i in (1, 2, 4, 6, 7):
        assert no_red.reference[i] == (
            _vocab_ids(TINY_CAPTIONS[i]),
            len(TINY_CAPTIONS[i].split()) + 1,
        )


def test_near_ties_within_tie_gap_are_reported_not_failed(tiny, sessions, no_red):
    from capbatch.export.validate import ValidationError, validate_captions

    gaps = _gaps(tiny, sessions, no_red)
    widest = max(gaps, key=gaps.get)
    # tie_gap equal to the widest gap: every divergence is a near-tie (inclusive).
    result = validate_captions(
        no_red.model, tiny.encoder, tiny.step, tiny.images, tie_gap=gaps[widest]
    )
    assert result == {"images": 8, "caption_agreement": 5 / 8, "near_ties": [0, 3, 5]}
    # Just below it: that image fails, alone; the others stay near-ties.
    with pytest.raises(ValidationError) as caught:
        validate_captions(
            no_red.model, tiny.encoder, tiny.step, tiny.images,
            tie_gap=float(np.nextafter(gaps[widest], 0.0)),
        )  # fmt: skip
    assert [f.split(":")[0] for f in caught.value.failures] == [f"image {widest}"]


def test_caption_agreement_is_the_fraction_with_identical_tokens_and_lengths():
    from capbatch.export.validate import caption_agreement

    reference = [_hypothesis([4, 5], 3), _hypothesis([6], 2), _hypothesis([7, 8], 2)]
    assert caption_agreement(reference, list(reference)) == 1.0
    same_tokens_no_end = [_hypothesis([4, 5], 2), _hypothesis([6], 2), _hypothesis([7], 2)]
    assert caption_agreement(reference, same_tokens_no_end) == pytest.approx(1 / 3)
    assert caption_agreement(reference, [_hypothesis([4, 5], 3)] * 3) == pytest.approx(1 / 3)
    assert caption_agreement(reference[:1], reference[:1]) == 1.0
    assert caption_agreement([], []) == 0.0  # no images: nothing agreed, no division by 0


# --------------------------------------------------------------------------- images


def test_validation_images_are_the_sorted_image_files_preprocessed_like_the_runtime(tmp_path):
    from capbatch.export.validate import validation_images
    from PIL import Image

    from capbatch.preprocess import PreprocessSpec, preprocess_image

    spec = PreprocessSpec(size=32)
    rng = np.random.default_rng(7)
    for name in ("c.png", "a.PNG", "b.webp"):
        Image.fromarray(rng.integers(0, 256, (40, 24, 3), dtype=np.uint8)).save(
            tmp_path / name, lossless=True
        )
    (tmp_path / "d.txt").write_text("not an image")
    (tmp_path / "e.onnx").write_bytes(b"\0")
    images = validation_images(spec, tmp_path)
    assert images.dtype == np.uint8 and images.shape == (3, 32, 32, 3)
    for got, name in zip(images, ("a.PNG", "b.webp", "c.png")):
        with Image.open(tmp_path / name) as image:
            assert np.array_equal(got, preprocess_image(image, spec)), name


def test_a_folder_without_images_is_refused_naming_the_extensions(tmp_path):
    from capbatch.export.validate import validation_images

    from capbatch.errors import ExportError
    from capbatch.preprocess import PreprocessSpec
    from capbatch.sources import IMAGE_EXTENSIONS

    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ExportError) as caught:
        validation_images(PreprocessSpec(size=32), tmp_path)
    more = len(IMAGE_EXTENSIONS) - 3
    assert more > 20
    assert str(caught.value) == (
        f"no images (.jpg, .png, .webp and {more} more extensions) in {tmp_path}"
    )


@pytest.mark.parametrize("damage", ["not an image", "truncated"])
def test_an_unreadable_validation_image_is_refused_by_name(tmp_path, damage):
    from capbatch.export.validate import validation_images
    from PIL import Image

    from capbatch.errors import ExportError
    from capbatch.preprocess import PreprocessSpec

    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "a.png")
    path = tmp_path / "b.png"
    if damage == "truncated":  # opens (lazily), fails while decoding
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:2000])
    else:
        path.write_bytes(b"this is not a png")
    with pytest.raises(ExportError) as caught:
        validation_images(PreprocessSpec(size=32), tmp_path)
    assert re.fullmatch(rf"validation image {re.escape(str(path))} is unreadable: .+",
                        str(caught.value))  # fmt: skip
    assert isinstance(caught.value.__cause__, OSError)


def test_without_a_folder_the_eight_generated_scenes_are_used():
    from capbatch.export.validate import generated_images, validation_images

    from capbatch.preprocess import PreprocessSpec

    images = validation_images(PreprocessSpec(size=48))
    assert images.shape == (8, 48, 48, 3)
    assert np.array_equal(images, generated_images(48, 8))


def test_generated_scenes_are_the_same_blocky_images_every_time():
    from capbatch.export.validate import generated_images

    images = generated_images(64, 8)
    assert images.dtype == np.uint8 and images.shape == (8, 64, 64, 3)
    # Pinned: the agreement a manifest records is measured on exactly these.
    assert hashlib.sha256(images.tobytes()).hexdigest() == (
        "0c0bb3542cc426fae38934b385f6242753028e4e6e5eb6f117a30aaba26e3566"
    )
    assert np.array_equal(generated_images(64, 3), images[:3])  # a prefix, seed 0
    # More scenes, the same way: enough colour draws to include the extremes 0 and 255.
    assert hashlib.sha256(generated_images(64, 32).tobytes()).hexdigest() == (
        "e9982f347251ecd1bf5bf012508c7c9d9c482b0fcba365203d5202f427b523d8"
    )
    assert not np.array_equal(generated_images(64, 3, seed=1), images[:3])
    for image in images:
        # A plain background with up to three blocks: a handful of colours, not noise.
        colours = np.unique(image.reshape(-1, 3), axis=0)
        assert 2 <= len(colours) <= 4


def test_batch_of_reuses_the_images_in_order():
    from capbatch.export.validate import _batch_of

    images = np.arange(3)[:, None]
    assert _batch_of(images, 7)[:, 0].tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert _batch_of(images, 2)[:, 0].tolist() == [0, 1]


@pytest.mark.parametrize("position", ["first", "later"])
def test_nan_from_ort_is_refused_and_stays_refused(position):
    # Found by this file's author: max(0.0, nan) is 0.0, so NaNs passed as no difference.
    import numpy as np
    import torch
    from capbatch.export.specs import ENCODER
    from capbatch.export.validate import _DiffTracker

    tracker = _DiffTracker(ENCODER)
    want = [torch.zeros(1, 2, 3), torch.zeros(1, 2, 2), torch.zeros(1, 4), torch.zeros(1, 4)]
    clean = [w.numpy().copy() for w in want]
    broken = [w.numpy().copy() for w in want]
    broken[2][0, 0] = np.nan
    for outputs in [broken, clean] if position == "first" else [clean, broken]:
        tracker.add(outputs, want, 1)
    assert tracker.failures() == ["h0: max abs diff nan > tolerance 0.0001"]
