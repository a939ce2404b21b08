"""The three parts of a training run, each alone: set-up, batches, the epoch loop."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import needs_torch
from tests.training.datasets import shape_scenes, write_csv_dataset

pytestmark = needs_torch


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    scenes = shape_scenes(limit=8)
    names = [s[0] for s in scenes]
    root = tmp_path_factory.mktemp("data")
    extra = {name: [caption.replace("a ", "one ", 1)] for name, caption, _ in scenes}
    return write_csv_dataset(root, scenes, {"train": names[:6], "val": names[6:]}, extra)


def _options(data, out, **kw):
    from capbatch.training.config import ModelConfig, TrainOptions

    model = ModelConfig(embed_dim=16, attention_dim=16, decoder_dim=32, dropout=0.0)
    return TrainOptions(
        data=data, out=out, model=model, threads=1, progress=False, pretrained=False, **kw
    )


def test_set_up_then_batches(dataset, tmp_path):
    from capbatch.training.batches import collate, epoch_batches, make_batches
    from capbatch.training.setup import Distributed, set_up

    setup = set_up(_options(dataset, tmp_path / "run"), Distributed(), tmp_path / "run")
    assert len(setup.train_images) == 6 and len(setup.val_images) == 2
    assert setup.config.vocab_size == setup.tokenizer.vocab_size and setup.config.embed_dim == 16
    assert setup.start.checkpoint is None and str(setup.device) == "cpu"

    batches = make_batches(setup)
    table = batches.table
    assert len(table.captions) == 12 and table.image_of.tolist() == [i // 2 for i in range(12)]
    order = epoch_batches(table, 4, seed=0, epoch=1)
    assert sorted(np.concatenate(order).tolist()) == list(range(12))
    assert order[0].tolist() != epoch_batches(table, 4, seed=0, epoch=2)[0].tolist()
    rows, image_index, captions = collate(table, order[0])
    assert captions.shape[0] == 4 and captions[:, 0].eq(setup.config.start_id).all()
    assert len(rows) == 2 and image_index.tolist() == [0, 0, 1, 1]  # image-major
    features = batches.source.features(rows, setup.device)
    assert tuple(features.shape) == (2, setup.config.num_regions, setup.config.encoder_dim)


def test_captions_per_image_keeps_each_images_first_captions(dataset, tmp_path):
    from capbatch.training.batches import make_batches
    from capbatch.training.setup import Distributed, set_up

    options = _options(dataset, tmp_path / "run", captions_per_image=1)
    setup = set_up(options, Distributed(), tmp_path / "run")
    table = make_batches(setup).table
    assert table.image_of.tolist() == list(range(6))  # one caption per training image
    firsts = [setup.tokenizer.caption_ids(im.captions[0], 30) for im in setup.train_images]
    assert table.captions == firsts
    with pytest.raises(ValueError, match="captions_per_image"):
        _options(dataset, tmp_path / "x", captions_per_image=-1)


def test_epoch_loop_steps_lower_the_loss(dataset, tmp_path):
    from capbatch.training.batches import make_batches
    from capbatch.training.selection import ValidationScorer
    from capbatch.training.setup import Distributed, set_up
    from capbatch.training.train import EpochLoop

    options = _options(dataset, tmp_path / "run", lr=0.03, attention_weight=0.0)
    setup = set_up(options, Distributed(), tmp_path / "run")
    batches = make_batches(setup)
    scorer = ValidationScorer("loss", setup.dataset, setup.val_images, setup.tokenizer, 30)
    loop = EpochLoop(setup, batches, scorer)
    batch = np.arange(4)
    first = loop.train_step(batch)
    for _ in range(30):
        last = loop.train_step(batch)
    assert last < first * 0.8
    assert loop.decide(loop.validate()) and loop.selection.best is not None


def test_process_group_is_torn_down_when_set_up_fails(tmp_path, monkeypatch):
    from capbatch.training import train
    from capbatch.training.data import DatasetError
    from capbatch.training.setup import Distributed

    closed = []
    monkeypatch.setattr(train, "init_distributed", lambda device: Distributed(0, 2, 0))
    monkeypatch.setattr(train, "close_distributed", closed.append)
    with pytest.raises(DatasetError):
        train.fit(_options(tmp_path / "missing", tmp_path / "run"))
    assert closed == [Distributed(0, 2, 0)]
    assert not (tmp_path / "run").exists()
