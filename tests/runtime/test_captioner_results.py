"""What the Captioner API promises (docs/runtime.md, "Python API"), pinned where the
mutation run of capbatch/captioner.py found nothing checking it: the exact reasons of
error results, what an error result holds, the inputs it accepts, batching, and the
warn callback. Real data: the shipped bundle and samples/."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from capbatch.export.precision import record_runtime_agreement
from PIL import Image

import capbatch.bundle as bundle_module
from capbatch.batch_rows import infer
from capbatch.captioner import Captioner, CaptionerArgs, repeats_back_to_back
from capbatch.errors import UsageError
from capbatch.manifest import read_manifest

REPO = Path(__file__).resolve().parents[2]
SAMPLES = sorted((REPO / "samples").glob("*.jpg"))


@pytest.fixture(scope="module")
def captioner():
    return Captioner(device="cpu", batch_size=2)


def test_error_results_say_why_in_exact_words(captioner, tmp_path):
    missing, junk = tmp_path / "missing.jpg", tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    odd = np.zeros((4, 4, 5), np.uint8)  # five channels: no image mode has them
    results = captioner.caption([str(missing), odd, 42, np.zeros((4, 4), np.float32)])
    assert [r.error for r in results[:1]] == ["cannot read file: No such file or directory"]
    assert results[1].error.startswith("unsupported array shape (4, 4, 5): ")
    assert results[2].error == "unsupported item type int"
    assert results[3].error == "arrays must be uint8 (H, W) or (H, W, 3|4), got float32 (4, 4)"
    for result in results:  # an error result holds no caption and says it is one
        assert (result.ok, result.status, result.caption, result.score) == (
            False, "error", None, None,
        )  # fmt: skip
        assert result.tokens == () and result.words == ()


def test_a_broken_lazily_loaded_image_is_a_conversion_error(captioner):
    whole = SAMPLES[0].read_bytes()
    image = Image.open(io.BytesIO(whole[: len(whole) // 3]))  # header fine, data cut
    (result,) = captioner.caption([image])
    assert result.error.startswith("cannot convert image: "), result.error


def test_grey_and_rgba_arrays_are_captioned_like_their_rgb(captioner):
    rgb = np.asarray(Image.open(SAMPLES[0]).convert("RGB"))
    grey = np.asarray(Image.open(SAMPLES[0]).convert("L"))  # (H, W): accepted as it is
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    results = captioner.caption([rgb, grey, rgba])
    assert all(r.ok for r in results), [r.error for r in results]
    assert results[2].caption == results[0].caption  # an opaque alpha changes nothing
    assert (results[1].width, results[1].height) == (rgb.shape[1], rgb.shape[0])


def test_one_item_given_to_caption_is_a_list_of_one(captioner):
    results = captioner.caption(str(SAMPLES[0]))
    assert isinstance(results, list) and len(results) == 1 and results[0].ok
    assert captioner(str(SAMPLES[0])).caption == results[0].caption


def test_a_plain_caption_is_not_flagged_repeated_and_says_so_with_false(captioner):
    result = captioner(str(SAMPLES[0]))
    assert result.repeated is False and result.truncated is False


def test_items_go_to_the_model_in_batches_of_batch_size(captioner, monkeypatch):
    sizes = []
    real = Captioner.caption_decoded

    def counted(self, images):
        sizes.append(len(images))
        return real(self, images)

    monkeypatch.setattr(Captioner, "caption_decoded", counted)
    results = captioner.caption([str(p) for p in SAMPLES[:5]] + [b"junk"])
    assert sizes == [2, 2, 1]  # errors never take a place in a batch
    assert [r.ok for r in results] == [True] * 5 + [False]


def test_a_failed_batch_keeps_each_images_size(captioner, monkeypatch):
    from capbatch.image_decode import decode_image

    images = [decode_image(p.read_bytes(), captioner.preprocess) for p in SAMPLES[:2]]

    def broken(self, pixels):
        raise RuntimeError("the model fell over\nwith details")

    monkeypatch.setattr(Captioner, "_run", broken)
    results = infer(captioner, images)
    assert [r.error for r in results] == ["inference failed: RuntimeError: the model fell over"] * 2
    assert [(r.width, r.height) for r in results] == [(i.width, i.height) for i in images]
    assert all(r.tokens == () for r in results)


def test_only_phrases_of_up_to_three_words_count_as_repeated():
    assert repeats_back_to_back("a red circle a red circle".split()) is True  # 3 words
    assert repeats_back_to_back("a red circle above a red circle above".split()) is False


def test_warnings_of_loading_reach_the_callback_given_to_from_args(reduced, monkeypatch):
    # A bf16 agreement measured on another CPU: loading says so through `warn`.
    manifest = read_manifest(reduced)
    record_runtime_agreement(
        reduced,
        "openvino-bf16",
        {"encoder_sha256": manifest.files["encoder.onnx"], "passed": True, "splits": {},
         "device": "Another CPU"},
    )  # fmt: skip
    stand_in = bundle_module.create_encoder

    def named_cpu(*args):
        session = stand_in(*args)
        return type("Encoder", (), {
            "device_name": "This CPU", "run": session.run,
            "get_inputs": session.get_inputs, "get_outputs": session.get_outputs,
        })()  # fmt: skip

    monkeypatch.setattr(bundle_module, "create_encoder", named_cpu)
    warned = []
    args = CaptionerArgs(model=reduced, device="cpu", encoder_runtime="openvino", precision="bf16")
    Captioner.from_args(args, warn=warned.append)
    assert len(warned) == 1 and "measured on Another CPU, not on this CPU (This CPU)" in warned[0]


def test_a_caption_that_loops_is_flagged_repeated(tmp_path):
    from tests.runtime_fakes import make_fake_bundle

    # The tiny fake bundle's random decoder loops on a word ("on on red on on on").
    looping = Captioner(make_fake_bundle(tmp_path / "b"), device="cpu")
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    result = looping(pixels)
    assert repeats_back_to_back(result.words) and result.repeated is True


# -- the Python API's arguments (docs/runtime.md, "From Python") -----------------------


@pytest.fixture(scope="module")
def fake_bundle(tmp_path_factory):
    from tests.runtime_fakes import make_fake_bundle

    return make_fake_bundle(tmp_path_factory.mktemp("api") / "bundle")


def test_the_api_defaults_are_the_documented_ones(fake_bundle):
    made = Captioner(fake_bundle)
    assert made.args == CaptionerArgs(model=fake_bundle)
    assert (made.args.device, made.batch_size, made.args.beam_size) == ("auto", 32, 1)
    assert (made.options.return_alphas, made.options.track_margins) == (False, False)
    assert made.options.max_len == 8  # the model's (the fake bundle's manifest)


def test_every_argument_reaches_the_loaded_captioner(fake_bundle, monkeypatch):
    seen = {}
    real_load = bundle_module.load_bundle

    def load_bundle(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr("capbatch.captioner.load_bundle", load_bundle)
    warnings = []
    made = Captioner(fake_bundle, device="cpu", beam_size=2, max_len=5, batch_size=3,
                     return_attention=True, warn=warnings.append, intra_op_threads=1)  # fmt: skip
    assert (made.args.beam_size, made.options.beam_size, made.options.max_len) == (2, 2, 5)
    assert (made.batch_size, made.options.return_alphas) == (3, True)
    assert seen["intra_op_threads"] == 1 and seen["warn"] == warnings.append
    assert (seen["encoder_runtime"], seen["precision"]) == ("onnxruntime", "f32")


def test_a_loader_warning_reaches_the_warn_given(fake_bundle, monkeypatch):
    monkeypatch.setattr(bundle_module, "fallback_warning", lambda requested, active: "slow path")
    warnings = []
    Captioner(fake_bundle, device="cpu", warn=warnings.append)
    assert warnings == ["slow path"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("batch_size", 0), ("beam_size", True), ("max_len", 0), ("intra_op_threads", 2.0),
     ("batch_size", None)],
)  # fmt: skip
def test_args_refuse_what_is_no_positive_integer_in_these_words(field, value):
    with pytest.raises(UsageError) as raised:
        CaptionerArgs(**{field: value})
    assert str(raised.value) == f"{field} must be an integer >= 1, got {value!r}"


def test_optional_args_may_be_none_and_later_ones_are_still_checked():
    assert CaptionerArgs(max_len=None, intra_op_threads=None).max_len is None
    with pytest.raises(UsageError, match="^intra_op_threads must be"):
        CaptionerArgs(max_len=None, intra_op_threads=0)  # not skipped after a None


def test_a_bundle_with_a_fallback_margin_tracks_margins(fake_bundle, monkeypatch):
    real_load = bundle_module.load_bundle

    def with_margin(*args, **kwargs):
        loaded = real_load(*args, **kwargs)
        loaded.fallback_margin = 0.5
        return loaded

    monkeypatch.setattr("capbatch.captioner.load_bundle", with_margin)
    assert Captioner(fake_bundle, device="cpu").options.track_margins is True
