"""The Python API over a fake bundle, and runtime vs PyTorch reference decoding."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from capbatch.captioner import Captioner, CaptionResult
from capbatch.errors import UsageError
from tests.conftest import needs_torch
from tests.runtime_fakes import make_fake_bundle

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fake_bundle(tmp_path_factory):
    return make_fake_bundle(tmp_path_factory.mktemp("fake") / "bundle")


def _images(n: int, size: int = 48, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = np.zeros((size, size + 8 * i, 3), np.uint8)
        image[: size // 2] = rng.integers(0, 256, 3, dtype=np.uint8)
        image[size // 2 :] = rng.integers(0, 256, 3, dtype=np.uint8)
        out.append(image)
    return out


def test_caption_accepts_paths_pil_arrays_and_bytes(fake_bundle, tmp_path):
    arrays = _images(4)
    path = tmp_path / "a.png"
    Image.fromarray(arrays[0]).save(path)
    jpeg = tmp_path / "b.jpg"
    Image.fromarray(arrays[1]).save(jpeg, quality=95)
    captioner = Captioner(fake_bundle, device="cpu", batch_size=2)
    results = captioner.caption(
        [path, str(jpeg), Image.fromarray(arrays[2]), arrays[3], path.read_bytes()]
    )
    assert len(results) == 5
    assert all(isinstance(r, CaptionResult) and r.ok for r in results)
    assert all(r.caption and r.score <= 0.0 for r in results)
    assert (results[0].width, results[0].height) == (48, 48)
    assert (results[3].width, results[3].height) == (48 + 24, 48)
    # the same image as a path and as bytes gets the same caption
    assert results[0].caption == results[4].caption
    assert results[0].words and " ".join(results[0].words) == results[0].caption


def test_bad_items_become_error_results(fake_bundle, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(_images(1)[0]).save(good)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    text = tmp_path / "notes.jpg"
    text.write_text("hello, I am not a picture\n")
    captioner = Captioner(fake_bundle, device="cpu")
    results = captioner.caption(
        [good, broken, tmp_path / "missing.png", text, np.zeros((4, 4), np.float32), good]
    )
    assert [r.status for r in results] == ["ok", "error", "error", "error", "error", "ok"]
    assert all(r.error for r in results[1:5])
    assert "cannot read file" in results[2].error
    assert "uint8" in results[4].error
    assert results[0].caption == results[5].caption


def test_batch_size_does_not_change_captions(fake_bundle):
    arrays = _images(5, seed=3)
    one = Captioner(fake_bundle, device="cpu", batch_size=1).caption(arrays)
    five = Captioner(fake_bundle, device="cpu", batch_size=5).caption(arrays)
    assert [r.tokens for r in one] == [r.tokens for r in five]
    assert [r.score for r in one] == pytest.approx([r.score for r in five], abs=1e-5)


def test_beam_and_attention(fake_bundle):
    arrays = _images(3, seed=5)
    captioner = Captioner(fake_bundle, device="cpu", beam_size=3, return_attention=True)
    for result in captioner.caption(arrays):
        steps = result.attention.shape[0]
        assert steps in (len(result.tokens), len(result.tokens) + 1)  # + <end> when generated
        assert result.attention.shape[1] == 4
        np.testing.assert_allclose(result.attention.sum(1), 1.0, rtol=1e-5)


def test_max_len_caps_tokens(fake_bundle):
    captioner = Captioner(fake_bundle, device="cpu", max_len=2)
    assert all(len(r.tokens) <= 2 for r in captioner.caption(_images(4)))


def test_bad_options_are_usage_errors(fake_bundle):
    with pytest.raises(UsageError):
        Captioner(fake_bundle, device="cpu", beam_size=0)
    with pytest.raises(UsageError):
        Captioner(fake_bundle, device="cpu", batch_size=0)


TORCH_BLOCKER = "raise ImportError('torch is blocked in this test')\n"


def run_without_torch(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    """Run Python with `import torch` failing, as on a runtime-only install."""
    blocker = tmp_path / "blocker" / "torch"
    blocker.mkdir(parents=True, exist_ok=True)
    (blocker / "__init__.py").write_text(TORCH_BLOCKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(blocker.parent), str(REPO)])
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def test_captioner_imports_no_torch(fake_bundle, tmp_path):
    done = run_without_torch(
        tmp_path,
        f"""
        import sys
        import numpy as np
        from capbatch import cli, caption_cli, job
        from capbatch.engines import local
        from capbatch.captioner import Captioner
        results = Captioner({str(fake_bundle)!r}, device="cpu", beam_size=2).caption(
            [np.zeros((40, 40, 3), np.uint8)]
        )
        assert results[0].ok, results[0]
        assert "torch" not in sys.modules, "torch was imported"
        print("OK", results[0].caption)
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK")


def test_from_capbatch_import_captioner_is_lazy_and_callable(tmp_path):
    """The field's one-liner: `import capbatch` stays cheap; Captioner() is the built-in
    model; one item gives one result, a list a list."""
    sample = REPO / "samples" / "scene_000451.jpg"
    done = run_without_torch(
        tmp_path,
        f"""
        import sys
        import capbatch
        heavy = [m for m in ("numpy", "onnxruntime", "PIL", "typer") if m in sys.modules]
        assert not heavy, heavy
        from capbatch import Captioner, CaptionResult
        captioner = Captioner(device="cpu")
        one = captioner({str(sample)!r})
        assert isinstance(one, CaptionResult) and one.ok, one
        many = captioner([{str(sample)!r}, b"junk"])
        assert [r.status for r in many] == ["ok", "error"] and many[0].caption == one.caption
        assert "generated scenes" in captioner.model_card["domain"]
        assert "torch" not in sys.modules
        print("OK", one.caption)
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "OK three green hexagons"


def test_call_on_one_array_or_bytes_is_one_result(fake_bundle):
    captioner = Captioner(fake_bundle, device="cpu")
    image = _images(1)[0]
    assert isinstance(captioner(image), CaptionResult)
    assert isinstance(captioner(bytearray(b"junk")), CaptionResult)
    assert len(captioner(_images(3))) == 3
    assert captioner.model_card == {}  # the fake bundle carries no card


# --------------------------------------------------------------------------- vs PyTorch


def _reference(checkpoint: Path, images: np.ndarray, beam_size: int):
    import torch
    from capbatch.training.checkpoint import load_checkpoint, model_from_checkpoint
    from capbatch.training.decoding import beam_search, greedy_decode

    model = model_from_checkpoint(load_checkpoint(checkpoint)).eval()
    with torch.inference_mode():
        features = model.encoder(torch.from_numpy(images))
    if beam_size == 1:
        return [h.tokens for h in greedy_decode(model, features)]
    return [ranked[0].tokens for ranked in beam_search(model, features, beam_size=beam_size)]


@needs_torch
@pytest.mark.parametrize("beam_size", [1, 3])
@pytest.mark.parametrize("batch_size", [1, 5])
def test_runtime_matches_pytorch_reference(beam_size, batch_size):
    pytest.importorskip("onnx")
    from tests.bundles import make_tiny_bundle, tiny_checkpoint_of, tiny_images

    bundle = make_tiny_bundle()
    images = tiny_images()  # (8, S, S, 3) uint8 at the model's size
    expected = _reference(tiny_checkpoint_of(bundle), images, beam_size)
    captioner = Captioner(bundle, device="cpu", beam_size=beam_size, batch_size=batch_size)
    got = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]  # already the encoder's size: no resize
        got.extend(h.tokens for h in captioner.hypotheses(chunk))
    assert [list(t) for t in got] == [list(t) for t in expected]


@needs_torch
def test_tiny_model_captions_its_images():
    pytest.importorskip("onnx")
    from tests.bundles import TINY_CAPTIONS, make_tiny_bundle, tiny_images

    captioner = Captioner(make_tiny_bundle(), device="cpu", batch_size=3)
    results = captioner.caption(list(tiny_images()))  # arrays at the model's size
    assert [r.caption for r in results] == list(TINY_CAPTIONS)
