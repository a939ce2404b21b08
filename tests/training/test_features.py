"""Feature cache: computed once, float16 memmap, keyed by encoder fingerprint, extended in place."""

from __future__ import annotations

import json

import pytest

from tests.conftest import needs_torch
from tests.training.datasets import shape_scenes

pytestmark = needs_torch


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    out = []
    for name, _, image in shape_scenes(limit=5):
        image.save(folder / name)
        out.append((name, folder / name))
    return out


def _encoder(seed: int = 0):
    import torch
    from capbatch.training.config import ModelConfig
    from capbatch.training.model import build_model

    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=10, embed_dim=8, attention_dim=8, decoder_dim=8)
    return build_model(config, pretrained=False).encoder.eval()


def test_cache_matches_encoder_and_is_reused(tmp_path, images):
    import numpy as np
    import torch
    from capbatch.training.features import build_feature_cache, load_images

    encoder = _encoder()
    cache = build_feature_cache(encoder, images[:3], tmp_path, batch_size=2)
    assert cache.features.dtype == np.float16 and isinstance(cache.features, np.memmap)
    assert cache.features.shape == (3, 49, 1280)
    pixels = torch.from_numpy(
        load_images([p for _, p in images[:3]], encoder.config.preprocess, None)
    )
    with torch.inference_mode():
        direct = encoder(pixels)  # (3, 49, 1280)
    got = cache.batch(cache.rows([n for n, _ in images[:3]]))
    assert torch.allclose(got, direct, rtol=2e-3, atol=2e-3)  # float16 storage

    data_file = cache.directory / "features.f16"
    stamp = data_file.stat().st_mtime_ns
    again = build_feature_cache(encoder, images[:3], tmp_path)
    assert again.directory == cache.directory and data_file.stat().st_mtime_ns == stamp

    # New images extend the cache; existing rows are kept, not recomputed.
    grown = build_feature_cache(encoder, images, tmp_path)
    assert grown.names[:3] == cache.names and len(grown.names) == 5
    assert np.array_equal(np.asarray(grown.features[:3]), np.asarray(cache.features))
    index = json.loads((grown.directory / "index.json").read_text())
    assert index["shape"] == [5, 49, 1280]


def test_other_encoder_weights_get_their_own_cache(tmp_path, images):
    from capbatch.training.features import build_feature_cache, encoder_fingerprint

    first, second = _encoder(0), _encoder(1)
    assert encoder_fingerprint(first) != encoder_fingerprint(second)
    a = build_feature_cache(first, images[:2], tmp_path)
    b = build_feature_cache(second, images[:2], tmp_path)
    assert a.directory != b.directory
    assert not (a.features == b.features).all()


def test_interrupted_build_resumes(tmp_path, images, monkeypatch):
    import capbatch.training.features as features
    import numpy as np

    encoder = _encoder()
    calls = {"n": 0}
    real = features.load_images

    def flaky(paths, spec, pool):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(paths, spec, pool)

    monkeypatch.setattr(features, "load_images", flaky)
    with pytest.raises(KeyboardInterrupt):
        features.build_feature_cache(encoder, images, tmp_path, batch_size=2)
    monkeypatch.setattr(features, "load_images", real)
    directory = next(tmp_path.iterdir())
    assert json.loads((directory / "index.json.partial").read_text())["filled"] == 2
    resumed = features.build_feature_cache(encoder, images, tmp_path, batch_size=2)
    fresh = features.build_feature_cache(encoder, images, tmp_path / "fresh", batch_size=2)
    assert np.array_equal(np.asarray(resumed.features), np.asarray(fresh.features))
    assert not (directory / "index.json.partial").exists()


def test_unreadable_image_is_named(tmp_path, images):
    from capbatch.training.data import DatasetError
    from capbatch.training.features import build_feature_cache

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="cannot read image .*broken.png"):
        build_feature_cache(_encoder(), [images[0], ("broken.png", bad)], tmp_path / "c")
