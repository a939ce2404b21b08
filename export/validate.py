"""ORT vs PyTorch: output names, then shapes, then values, then greedy captions.

Run at batch sizes other than the traced one. The step graph is driven for
VALIDATION_STEPS steps with ORT's own outputs fed back into both runtimes, so each
step's comparison sees identical inputs and errors do not compound.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from capbatch.training.decoding import greedy_decode
from capbatch.training.model import EncoderDecoder
from PIL import Image

from capbatch.decoding import ArrayStepModel, DecodingOptions, Hypothesis
from capbatch.decoding import greedy_decode as greedy_decode_numpy
from capbatch.errors import ExportError
from capbatch.preprocess import PreprocessSpec, preprocess_image
from capbatch.sources import IMAGE_EXTENSIONS

from .specs import (
    DECODER_STEP,
    ENCODER,
    VALIDATION_BATCHES,
    VALIDATION_STEPS,
    GraphSpec,
    decoder_step_spec,
)
from .wrappers import DecoderStepGraph, EncoderGraph

GENERATED_IMAGES = 8


class ValidationError(ExportError):
    """ORT and PyTorch disagree; `failures` lists every failing check."""

    def __init__(self, graph: str, failures: list[str]):
        self.graph = graph
        self.failures = failures
        super().__init__(f"{graph} validation failed: " + "; ".join(failures))


class VariantAgreementError(ExportError):
    """A reduced-precision variant captions too differently from fp32."""


def ort_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- images


def validation_images(spec: PreprocessSpec, image_dir: Path | None = None) -> np.ndarray:
    """(N, S, S, 3) uint8: the images in image_dir (sorted), else generated scenes."""
    if image_dir is not None:
        # The runtime's list: a folder `capbatch caption` reads is a folder export reads.
        paths = sorted(p for p in Path(image_dir).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not paths:
            raise ExportError(
                f"no images (.jpg, .png, .webp and {len(IMAGE_EXTENSIONS) - 3} more "
                f"extensions) in {image_dir}"
            )
        arrays = []
        for path in paths:
            try:
                with Image.open(path) as image:
                    arrays.append(preprocess_image(image, spec))
            except OSError as exc:
                raise ExportError(f"validation image {path} is unreadable: {exc}") from exc
        return np.stack(arrays)
    return generated_images(spec.size, GENERATED_IMAGES)


def generated_images(size: int, count: int, seed: int = 0) -> np.ndarray:
    """Deterministic blocky colour scenes (no files needed): (count, size, size, 3) uint8."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        images[i] = rng.integers(0, 256, 3, dtype=np.uint8)  # background colour
        for _ in range(3):
            x0, y0 = rng.integers(0, size - size // 4, 2)
            w, h = rng.integers(size // 8, size // 2, 2)
            images[i, y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, 3, dtype=np.uint8)
    return images


def _batch_of(images: np.ndarray, batch: int) -> np.ndarray:
    return images[np.arange(batch) % len(images)]


# --------------------------------------------------------------------------- value checks


def check_io_names(session, spec: GraphSpec) -> list[str]:
    got_in = [i.name for i in session.get_inputs()]
    got_out = [o.name for o in session.get_outputs()]
    failures = []
    if got_in != spec.input_names:
        failures.append(f"inputs are {got_in}, expected {spec.input_names}")
    if got_out != spec.output_names:
        failures.append(f"outputs are {got_out}, expected {spec.output_names}")
    return failures


def _max_keeping_nan(current: float, new) -> float:
    """max() that keeps a NaN once seen: Python's max(0.0, nan) is 0.0, which would
    let an output of NaNs pass as a difference of zero."""
    new = float(new)
    return math.nan if math.isnan(current) or math.isnan(new) else max(current, new)


class _DiffTracker:
    """Max abs diff and max tolerance-relevant peak per output, across all runs."""

    def __init__(self, spec: GraphSpec):
        self.spec = spec
        self.diff = {t.name: 0.0 for t in spec.outputs if t.atol is not None}
        self.peak = dict.fromkeys(self.diff, 0.0)
        self.shape_failures: list[str] = []

    def add(self, ort_outputs: list[np.ndarray], torch_outputs, batch: int) -> None:
        for tensor, got, want in zip(self.spec.outputs, ort_outputs, torch_outputs):
            want = want.detach().cpu().numpy()
            if got.shape != want.shape:
                self.shape_failures.append(
                    f"{tensor.name} at batch {batch}: shape {got.shape}, PyTorch {want.shape}"
                )
                continue
            if tensor.atol is None:
                continue
            name = tensor.name
            self.diff[name] = _max_keeping_nan(
                self.diff[name], np.max(np.abs(got - want), initial=0.0)
            )
            self.peak[name] = _max_keeping_nan(self.peak[name], np.max(np.abs(want), initial=0.0))

    def tolerances(self) -> dict[str, float]:
        by_name = {t.name: t for t in self.spec.outputs}
        return {name: by_name[name].tolerance_for(self.peak[name]) for name in self.diff}

    def failures(self) -> list[str]:
        if self.shape_failures:
            return self.shape_failures
        tolerance = self.tolerances()
        return [
            f"{name}: max abs diff {diff:.3g} > tolerance {tolerance[name]:.3g}"
            for name, diff in self.diff.items()
            if not diff <= tolerance[name]  # NaN fails too
        ]


def validate_graphs(
    model: EncoderDecoder,
    encoder_path: Path,
    step_path: Path,
    images: np.ndarray,
    *,
    top_k: int = 0,
    batches: tuple[int, ...] = VALIDATION_BATCHES,
    steps: int = VALIDATION_STEPS,
) -> dict:
    """Names, shapes and values of both graphs; returns max diffs and tolerances."""
    step_spec = decoder_step_spec(top_k)
    encoder_session, step_session = ort_session(encoder_path), ort_session(step_path)
    for session, spec in ((encoder_session, ENCODER), (step_session, step_spec)):
        failures = check_io_names(session, spec)
        if failures:
            raise ValidationError(spec.key, failures)
    encoder_graph = EncoderGraph(model).eval()
    step_graph = DecoderStepGraph(model, top_k=top_k).eval()
    encoder_diffs, step_diffs = _DiffTracker(ENCODER), _DiffTracker(step_spec)
    start_id = model.config.start_id
    with torch.inference_mode():
        for batch in batches:
            pixels = _batch_of(images, batch)
            encoded = encoder_session.run(None, _encoder_feeds(pixels))
            encoder_diffs.add(encoded, encoder_graph(torch.from_numpy(pixels)), batch)
            features, projected, h, c = encoded
            tokens = np.full((batch,), start_id, dtype=np.int64)
            for _ in range(steps):
                feeds = _step_feeds(tokens, h, c, features, projected)
                outputs = step_session.run(None, feeds)
                reference = step_graph(*(torch.from_numpy(feeds[n]) for n in step_spec.input_names))
                step_diffs.add(outputs, reference, batch)
                log_probs, h, c = outputs[0], outputs[1], outputs[2]
                tokens = log_probs.argmax(axis=-1).astype(np.int64)
    for tracker in (encoder_diffs, step_diffs):
        failures = tracker.failures()
        if failures:
            raise ValidationError(tracker.spec.key, failures)
    return {
        "batches": list(batches),
        "steps": steps,
        "max_abs_diff": {**encoder_diffs.diff, **step_diffs.diff},
        "tolerance": {**encoder_diffs.tolerances(), **step_diffs.tolerances()},
    }


# --------------------------------------------------------------------------- greedy captions


def ort_greedy(
    encoder_session, step_session, images: np.ndarray, *, start_id: int, end_id: int, max_len: int
) -> list[Hypothesis]:
    """The runtime's own greedy loop (capbatch.decoding) over the two sessions."""
    features, projected, h0, c0 = encoder_session.run(None, _encoder_feeds(images))
    model = ArrayStepModel(
        _step_function(step_session), features, projected, h0, c0, start_id=start_id, end_id=end_id
    )
    return greedy_decode_numpy(model, DecodingOptions(beam_size=1, max_len=max_len))


def _encoder_feeds(images: np.ndarray) -> dict[str, np.ndarray]:
    return dict(zip(ENCODER.input_names, (images,), strict=True))


def _step_feeds(*inputs: np.ndarray) -> dict[str, np.ndarray]:
    """(tokens, h, c, features, projected) keyed by the step graph's input names."""
    return dict(zip(DECODER_STEP.input_names, inputs, strict=True))


def _step_function(step_session):
    def run(tokens, h, c, features, projected):
        feeds = _step_feeds(tokens, h, c, features, projected)
        # The four outputs every step graph has (log_probs, h_out, c_out, alpha).
        return tuple(step_session.run(DECODER_STEP.output_names, feeds))

    return run


def forced_gap(
    encoder_session,
    step_session,
    image: np.ndarray,
    prefix: list[int],
    a: int,
    b: int,
    start_id: int,
) -> float:
    """|log p(a) - log p(b)| at the step after `prefix`, teacher-forced through ORT."""
    features, projected, h, c = encoder_session.run(None, _encoder_feeds(image[None]))
    run = _step_function(step_session)
    for token in [start_id, *prefix]:
        log_probs, h, c, _ = run(np.array([token], dtype=np.int64), h, c, features, projected)
    return float(abs(log_probs[0, a] - log_probs[0, b]))


def torch_greedy(model: EncoderDecoder, images: np.ndarray) -> list[tuple[list[int], int]]:
    with torch.inference_mode():
        features = model.encoder(torch.from_numpy(images))
        return [(h.tokens, h.steps) for h in greedy_decode(model, features)]


def _with_end(tokens, steps: int, end_id: int) -> list[int]:
    return list(tokens) + ([end_id] if steps > len(tokens) else [])


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first generated token where two sequences differ (None: equal)."""
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def divergence(
    encoder_session, step_session, image: np.ndarray, result: Hypothesis, reference, config
) -> tuple[int | None, float | None]:
    """Where ORT's greedy tokens first leave PyTorch's (tokens, steps) for one image
    (None: identical), and the gap there between the two tokens' ORT log-probs,
    teacher-forced on PyTorch's prefix (None where one sequence simply ends)."""
    tokens, steps = reference
    got = _with_end(result.tokens, result.steps, config.end_id)
    want = _with_end(tokens, steps, config.end_id)
    where = first_divergence(got, want)
    if where is None or where >= min(len(got), len(want)):
        return where, None
    gap = forced_gap(
        encoder_session, step_session, image, want[:where], got[where], want[where],
        config.start_id,
    )  # fmt: skip
    return where, gap


def validate_captions(
    model: EncoderDecoder,
    encoder_path: Path,
    step_path: Path,
    images: np.ndarray,
    *,
    tie_gap: float,
) -> dict:
    """Greedy tokens from ORT and PyTorch must be identical on every image.

    A divergence where the two tokens' ORT log-probs (teacher-forced on PyTorch's
    prefix) differ by <= tie_gap is a near-tie: both runtimes are within
    tolerance and either token is right. It is reported, not failed.
    """
    config = model.config
    encoder_session, step_session = ort_session(encoder_path), ort_session(step_path)
    ort_results = ort_greedy(
        encoder_session,
        step_session,
        images,
        start_id=config.start_id,
        end_id=config.end_id,
        max_len=config.max_len,
    )
    reference = torch_greedy(model, images)
    failures, near_ties, same = [], [], 0
    for index, (result, (tokens, steps)) in enumerate(zip(ort_results, reference)):
        where, gap = divergence(
            encoder_session, step_session, images[index], result, (tokens, steps), config
        )
        if where is None:
            same += 1
            continue
        if gap is not None and gap <= tie_gap:
            near_ties.append(index)
            continue
        failures.append(
            f"image {index}: ORT tokens {list(result.tokens)} != PyTorch {tokens} (step {where})"
        )
    if failures:
        raise ValidationError("greedy captions", failures)
    return {"images": len(images), "caption_agreement": same / len(images), "near_ties": near_ties}


def caption_agreement(reference: list[Hypothesis], candidate: list[Hypothesis]) -> float:
    """Fraction of images whose greedy tokens (and lengths) are identical."""
    same = sum(
        tuple(a.tokens) == tuple(b.tokens) and a.steps == b.steps
        for a, b in zip(reference, candidate)
    )
    return same / max(1, len(reference))
