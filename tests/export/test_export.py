"""Export a tiny trained model to a bundle: validation, greedy parity, manifest hashes."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import needs_torch

pytestmark = needs_torch

ENCODERS = ("efficientnet_lite0", "resnet50")


@pytest.fixture(scope="module", params=ENCODERS)
def validated_bundle(request):
    from tests.bundles import make_tiny_bundle

    return make_tiny_bundle(encoder=request.param, validate=True)


def test_bundle_has_the_documented_files_and_validation(validated_bundle):
    from capbatch.export.specs import DECODER_STEP, ENCODER, FP32_ATOL

    from capbatch.manifest import verify_bundle

    manifest = verify_bundle(validated_bundle)
    assert set(manifest["files"]) == {
        "encoder.onnx",
        "decoder_step.onnx",
        "vocab.json",
        "tokenizer.json",
    }
    assert manifest["graphs"]["encoder"]["outputs"] == ENCODER.output_names
    assert manifest["graphs"]["decoder_step"]["inputs"] == DECODER_STEP.input_names
    assert manifest["variant"] == "fp32"
    validation = manifest["validation"]
    assert validation["caption_agreement"] == 1.0
    assert validation["batches"] == [1, 3, 7]
    for name in ("log_probs", "h_out", "c_out", "alpha", "h0", "c0"):
        assert validation["max_abs_diff"][name] <= FP32_ATOL
    vocab = json.loads((validated_bundle / "vocab.json").read_text())
    assert vocab[:4] == ["<pad>", "<start>", "<end>", "<unk>"]


def test_tampering_one_byte_of_a_graph_is_detected(validated_bundle, tmp_path):
    from capbatch.errors import BundleError
    from capbatch.manifest import verify_bundle

    copy = tmp_path / "copy"
    shutil.copytree(validated_bundle, copy)
    graph = copy / "decoder_step.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01
    graph.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="decoder_step.onnx: sha256 mismatch"):
        verify_bundle(copy)


@pytest.mark.parametrize("batch", [1, 5])
def test_ort_greedy_reproduces_torch_tokens(validated_bundle, batch):
    import torch
    from capbatch.export.validate import ort_greedy, ort_session
    from capbatch.training.checkpoint import load_checkpoint, model_from_checkpoint
    from capbatch.training.decoding import greedy_decode

    from tests.bundles import TINY_CAPTIONS, tiny_images, tiny_vocab

    model = model_from_checkpoint(load_checkpoint(validated_bundle.parent / "tiny.pt"))
    images = tiny_images()[:batch]
    with torch.inference_mode():
        reference = greedy_decode(model, model.encoder(torch.from_numpy(images)))
    got = ort_greedy(
        ort_session(validated_bundle / "encoder.onnx"),
        ort_session(validated_bundle / "decoder_step.onnx"),
        images,
        start_id=1,
        end_id=2,
        max_len=model.config.max_len,
    )
    assert [list(r.tokens) for r in got] == [list(h.tokens) for h in reference]
    assert [r.steps for r in got] == [h.steps for h in reference]
    vocab = tiny_vocab()
    # The tiny model learned its captions: the comparison is between clear argmaxes.
    assert [" ".join(vocab[t] for t in r.tokens) for r in got] == list(TINY_CAPTIONS[:batch])


def test_encoder_has_static_padding(tmp_path):
    """Without freezing, timm's SAME convs export a Shape/Ceil/Pad subgraph; the check sees it."""
    import copy

    import torch
    from capbatch.export.convert import _trace, dynamic_pad_nodes
    from capbatch.export.specs import ENCODER
    from capbatch.export.wrappers import EncoderGraph, export_copy
    from capbatch.training.checkpoint import load_checkpoint, model_from_checkpoint

    from tests.bundles import make_tiny_bundle, tiny_checkpoint_of

    bundle = make_tiny_bundle(encoder="efficientnet_lite0", validate=True)
    assert dynamic_pad_nodes(bundle / "encoder.onnx") == []
    model = model_from_checkpoint(load_checkpoint(tiny_checkpoint_of(bundle)))
    images = torch.zeros(2, 64, 64, 3, dtype=torch.uint8)
    _trace(EncoderGraph(copy.deepcopy(model)), (images,), tmp_path / "raw.onnx", ENCODER, 17)
    assert len(dynamic_pad_nodes(tmp_path / "raw.onnx")) == 5  # one per strided SAME conv
    frozen = export_copy(model)
    with torch.no_grad():
        assert torch.allclose(frozen.encoder(images), model.encoder(images), atol=1e-5)


def test_feature_extras_export_and_validate(tmp_path):
    """Taps, positions, the colour grid and the layout init (the default model's
    options) export with static pooling and pass validation, greedy captions included."""
    import torch
    from capbatch.export.convert import export_bundle

    from capbatch.manifest import verify_bundle
    from tests.bundles import make_tiny_checkpoint

    checkpoint = make_tiny_checkpoint(
        tmp_path, feature_taps=(1, 2), position_features=True, colour_grid=2, layout_init=4
    )
    # Trained away from its zero start, so validation compares a live layout branch.
    weights = torch.load(checkpoint, weights_only=True)["model"]
    assert weights["decoder.layout_h.weight"].abs().max() > 0
    manifest = verify_bundle(export_bundle(checkpoint, tmp_path / "bundle", validate=True))
    assert manifest["config"]["layout_init"] == 4
    assert manifest["config"]["colour_grid"] == 2
    assert manifest["config"]["feature_taps"] == [1, 2]
    assert manifest["validation"]["caption_agreement"] == 1.0


def test_validation_images_are_the_files_capbatch_caption_reads(tmp_path):
    # One extension list: .ppm and .tga are images to `capbatch caption`, so to export too.
    from capbatch.export.validate import validation_images
    from PIL import Image

    from capbatch.errors import ExportError
    from capbatch.preprocess import PreprocessSpec

    spec = PreprocessSpec(size=32)
    with pytest.raises(ExportError, match="no images"):
        validation_images(spec, tmp_path)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.ppm")
    Image.new("RGB", (20, 50), (10, 200, 10)).save(tmp_path / "b.TGA")
    (tmp_path / "notes.txt").write_text("not an image")
    images = validation_images(spec, tmp_path)
    assert images.shape == (2, 32, 32, 3)
    assert images[0, 0, 0].tolist() == [200, 10, 10] and images[1, 0, 0].tolist() == [10, 200, 10]
