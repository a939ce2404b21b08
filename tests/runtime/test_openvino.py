"""The OpenVINO encoder runtime (the optional capbatch[openvino] extra; skipped without it)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("openvino")

from capbatch.export.precision import (  # noqa: E402
    ImageSet,
    check_runtime_precision,
    greedy_tokens,
    main,
)

from capbatch.bundle import ENCODER_CHUNK, load_bundle  # noqa: E402
from capbatch.manifest import verify_bundle  # noqa: E402
from capbatch.openvino_backend import OpenVinoEncoder  # noqa: E402
from capbatch.providers import EncoderRuntime, Precision  # noqa: E402
from tests.runtime_fakes import make_fake_bundle  # noqa: E402


def _images(n: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(11).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_openvino_f32_encoder_matches_onnxruntime_in_chunks(tmp_path):
    bundle = make_fake_bundle(tmp_path / "b")
    reference = load_bundle(bundle, device="cpu")
    candidate = load_bundle(
        bundle, device="cpu", encoder_runtime="openvino", require_agreement=False
    )
    assert isinstance(candidate.encoder, OpenVinoEncoder)
    assert (candidate.encoder_runtime, candidate.precision) == (
        EncoderRuntime.openvino,
        Precision.f32,
    )
    assert candidate.providers == ["CPUExecutionProvider"]  # the step stays on onnxruntime
    images = _images(ENCODER_CHUNK + 5)  # more than one chunk
    want, got = reference.encode(images), candidate.encode(images)
    for name in ("features", "projected", "h0", "c0"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), atol=1e-5)
    assert greedy_tokens(candidate, images) == greedy_tokens(reference, images)


def test_a_recorded_passing_agreement_lets_the_loader_use_openvino(tmp_path):
    bundle = make_fake_bundle(tmp_path / "b")
    sets = [ImageSet("test", tuple(str(i) for i in range(10)), _images(10))]
    result = check_runtime_precision(bundle, "openvino", "f32", sets, record=True)
    assert result["passed"] and result["splits"]["test"]["agreement"] == 1.0
    assert result["effective_precision"] == "f32" and result["device"]  # what actually ran
    assert verify_bundle(bundle)["runtime_agreement"]["openvino-f32"]["passed"] is True
    gated = load_bundle(bundle, device="cpu", encoder_runtime="openvino", precision="f32")
    assert isinstance(gated.encoder, OpenVinoEncoder)


def test_precision_tool_measures_a_folder(tmp_path, capsys):
    bundle = make_fake_bundle(tmp_path / "b")
    samples = tmp_path / "samples"
    samples.mkdir()
    for i, pixels in enumerate(_images(4, 48)):
        Image.fromarray(pixels).save(samples / f"img{i}.png")
    out = tmp_path / "agreement.json"
    code = main(
        [
            "--bundle",
            str(bundle),
            "--samples",
            str(samples),
            "--precision",
            "f32",
            "--json",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "| samples | 4 | 4 | 100.0% | 97% | yes |" in printed
    assert out.is_file() and "runtime_agreement" not in verify_bundle(bundle)  # not --record


def test_openvino_encoder_is_safe_from_several_threads(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    bundle = make_fake_bundle(tmp_path / "b")
    model = load_bundle(bundle, device="cpu", encoder_runtime="openvino", require_agreement=False)
    batches = [_images(3 + i) + i for i in range(6)]  # different shapes and contents
    serial = [model.encode(b).features for b in batches]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda b: model.encode(b).features, batches))
    for want, got in zip(serial, parallel):
        np.testing.assert_array_equal(got, want)
