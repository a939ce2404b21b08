"""Model structure and shapes for both encoders; the reference decoders agree."""

from __future__ import annotations

import pytest

from tests.conftest import needs_torch

pytestmark = needs_torch


@pytest.fixture(scope="module")
def torch():
    import torch

    torch.manual_seed(0)
    return torch


def _config(**kw):
    from capbatch.training.config import ModelConfig

    base = dict(vocab_size=40, embed_dim=16, attention_dim=8, decoder_dim=24, dropout=0.0)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("encoder,dim", [("resnet50", 2048), ("efficientnet_lite0", 1280)])
def test_encoder_regions_and_decoder_shapes(torch, encoder, dim):
    from capbatch.training.model import build_model

    model = build_model(_config(encoder=encoder), pretrained=False).eval()
    images = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8)
    with torch.inference_mode():
        features = model.encoder(images)
        assert features.shape == (2, 49, dim)
        captions = torch.tensor([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0]])
        logits, alphas = model.decoder(features, captions)
    assert logits.shape == (2, 4, 40)
    assert alphas.shape == (2, 4, 49)
    assert torch.allclose(alphas.sum(-1), torch.ones(2, 4), atol=1e-5)


def test_resnet_encoder_is_design_children_minus_two(torch):
    from capbatch.training.model import build_model

    model = build_model(_config(encoder="resnet50"), pretrained=False)
    names = [type(m).__name__ for m in model.encoder.stages[0]]
    assert names == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Sequential"]
    assert len(model.encoder.stages) == 4  # layer1 (in stage 0) .. layer4
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())


def test_taps_and_positions_extend_region_features(torch):
    from capbatch.training.model import build_model

    config = _config(feature_taps=(1, 2, 4), position_features=True)
    assert config.encoder_dim == 1280 + 24 + 40 + 112 + 2
    model = build_model(config, pretrained=False).eval()
    with torch.inference_mode():
        features = model.encoder(torch.zeros(1, 224, 224, 3, dtype=torch.uint8))
    assert features.shape == (1, 49, config.encoder_dim)
    # last two channels are the (x, y) grid: top-left region (-1, -1), bottom-right (1, 1)
    assert features[0, 0, -2:].tolist() == [-1.0, -1.0]
    assert features[0, -1, -2:].tolist() == [1.0, 1.0]


def test_fine_tune_stages_unfreezes_only_the_last(torch):
    from capbatch.training.model import build_model

    model = build_model(_config(fine_tune_stages=1), pretrained=False)
    stages = model.encoder.stages
    assert all(p.requires_grad for p in stages[-1].parameters())
    assert not any(p.requires_grad for p in stages[-2].parameters())
    model.train()
    assert stages[-1].training and not stages[-2].training


def test_greedy_equals_beam_one(torch):
    from capbatch.training.decoding import beam_search, greedy_decode
    from capbatch.training.model import build_model

    model = build_model(_config(encoder="resnet50", max_len=8), pretrained=False).eval()
    features = torch.randn(4, 49, 2048)
    greedy = greedy_decode(model, features)
    beams = beam_search(model, features, beam_size=1)
    for g, b in zip(greedy, beams, strict=True):
        assert g.tokens == b[0].tokens
        assert g.score == pytest.approx(b[0].score, abs=1e-5)


def test_bad_config_is_refused():
    from capbatch.training.config import ModelConfig

    with pytest.raises(ValueError, match="unknown encoder"):
        ModelConfig(vocab_size=10, encoder="vgg")
    with pytest.raises(ValueError, match="tap"):
        ModelConfig(vocab_size=10, encoder="resnet50", feature_taps=(3,))


def _cat_jpeg():
    from pathlib import Path

    return Path(__file__).parents[1] / "data" / "cat_chelsea.jpg"


def test_lite0_real_weights_load_strictly_and_see_a_cat(torch):
    """The encoder as trained and exported (uint8 NHWC in, regions out), topped with
    the ImageNet head, puts a cat class (281-285) in its top 5 on a real photo."""
    from capbatch.training.model import build_model, load_lite0_classifier
    from PIL import Image

    from capbatch.preprocess import preprocess_image

    classifier = load_lite0_classifier(None).eval()  # strict=True inside
    config = _config()
    model = build_model(config).eval()
    pixels = preprocess_image(Image.open(_cat_jpeg()), config.preprocess)  # (224, 224, 3) uint8
    with torch.inference_mode():
        regions = model.encoder(torch.from_numpy(pixels.copy()).unsqueeze(0))  # (1, 49, 1280)
        logits = classifier.classifier(regions.mean(dim=1))  # global average pool -> fc
    top5 = logits.topk(5).indices[0].tolist()
    assert set(top5) & set(range(281, 286)), top5
    assert top5[0] in range(281, 286), top5


def test_lite0_weights_that_do_not_fit_are_refused(torch, tmp_path):
    from capbatch.training.model import EncoderWeightsError, load_lite0_classifier

    bad = tmp_path / "bad.pth"
    torch.save({"conv_stem.weight": torch.zeros(1)}, bad)
    with pytest.raises(EncoderWeightsError, match="does not fit tf_efficientnet_lite0"):
        load_lite0_classifier(bad)
    with pytest.raises(EncoderWeightsError, match="not found"):
        load_lite0_classifier(tmp_path / "missing.pth")


def test_resnet50_needs_a_weights_file(torch):
    from capbatch.training.model import EncoderWeightsError, build_model

    with pytest.raises(EncoderWeightsError, match="--encoder-weights"):
        build_model(_config(encoder="resnet50"))


def test_decoder_image_index_equals_repeating_features(torch):
    from capbatch.training.model import build_model

    model = build_model(_config(), pretrained=False).eval()
    features = torch.randn(2, 49, 1280)
    captions = torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0], [1, 8, 9, 2]])
    index = torch.tensor([0, 0, 1])
    with torch.inference_mode():
        grouped = model.decoder(features, captions, index)
        repeated = model.decoder(features[index], captions)
    assert torch.allclose(grouped[0], repeated[0], atol=1e-6)
    assert torch.allclose(grouped[1], repeated[1], atol=1e-6)


def test_colour_grid_gives_each_region_its_own_colour_block(torch):
    from capbatch.training.model import build_model

    config = _config(colour_grid=2)
    assert config.encoder_dim == 1280 + 12
    model = build_model(config, pretrained=False).eval()
    images = torch.zeros(1, 224, 224, 3, dtype=torch.uint8)
    images[0, :16, :16] = torch.tensor([255, 0, 0], dtype=torch.uint8)  # red top-left 16 px
    images[0, -16:, -16:] = torch.tensor([0, 0, 255], dtype=torch.uint8)  # blue bottom-right
    with torch.inference_mode():
        blocks = model.encoder(images)[0, :, -12:].reshape(49, 3, 2, 2)  # (L, rgb, k, k)
    mean = torch.tensor(config.mean) * 255
    std = torch.tensor(config.std) * 255
    black = (0 - mean) / std
    red = (torch.tensor([255.0, 0, 0]) - mean) / std
    blue = (torch.tensor([0, 0, 255.0]) - mean) / std
    assert torch.allclose(blocks[0, :, 0, 0], red, atol=1e-4)  # region 0, sub-block (0, 0)
    assert torch.allclose(blocks[0, :, 1, 1], black, atol=1e-4)
    assert torch.allclose(blocks[48, :, 1, 1], blue, atol=1e-4)  # last region, last sub-block
    assert torch.allclose(blocks[48, :, 0, 0], black, atol=1e-4)


def test_layout_init_starts_as_designed_and_sees_where_things_are(torch):
    """Zero-initialised, the layout branch leaves h0/c0 as the design's (mean
    feature); trained, it tells apart two scenes whose regions are swapped,
    which the mean feature cannot."""
    from capbatch.training.model import build_model

    model = build_model(_config(layout_init=4), pretrained=False).eval()
    decoder = model.decoder
    features = torch.randn(2, model.config.num_regions, model.config.encoder_dim)
    swapped = features.clone()
    swapped[:, [0, -1]] = features[:, [-1, 0]]  # the same content, two regions exchanged
    with torch.no_grad():
        _, h0, c0 = decoder.init_state(features)
        mean = features.mean(1)
        assert torch.allclose(h0, decoder.init_h(mean)) and torch.allclose(c0, decoder.init_c(mean))
        torch.nn.init.normal_(decoder.layout_h.weight)
        torch.nn.init.normal_(decoder.layout_c.weight)
        _, h_a, c_a = decoder.init_state(features)
        _, h_b, c_b = decoder.init_state(swapped)
    assert not torch.allclose(h_a, h_b, atol=1e-3) and not torch.allclose(c_a, c_b, atol=1e-3)
    with pytest.raises(ValueError, match="layout_init"):
        _config(layout_init=65)


@pytest.mark.parametrize("upto", [1, 3, 5, 7, 8])
def test_cached_prefix_then_trained_stages_equal_the_whole_encoder(torch, upto):
    # Partial fine-tuning trains on prefix(images, k) from the cache: running the
    # remaining stages on it must give exactly what the exported encoder gives.
    from capbatch.training.model import build_model

    config = _config(feature_taps=(1, 2, 4), position_features=True, colour_grid=4)
    encoder = build_model(config, pretrained=False).eval().encoder
    images = torch.randint(0, 256, (3, 224, 224, 3), dtype=torch.uint8)
    with torch.inference_mode():
        whole = encoder(images)
        prefix = encoder.prefix(images, upto)
        assert prefix.shape == (3, *encoder.prefix_shape(upto))
        # float32 rounding only (the convolutions see other memory layouts)
        assert torch.allclose(encoder.from_prefix(prefix, upto), whole, rtol=1e-5, atol=1e-4)
    assert upto < 8 or torch.equal(prefix, whole)


def test_prefix_of_the_last_frozen_stage_is_small_enough_to_cache(torch):
    from capbatch.training.model import build_model

    config = _config(feature_taps=(1, 2, 4), colour_grid=4, fine_tune_stages=4)
    encoder = build_model(config, pretrained=False).encoder
    assert encoder.trainable_from == 4
    # stage 3's 80 x 14 x 14 activation, taps 1 and 2 pooled to 7 x 7, 49 colour blocks
    assert encoder.prefix_shape(4) == (80 * 14 * 14 + (24 + 40) * 49 + 49 * 48,)
