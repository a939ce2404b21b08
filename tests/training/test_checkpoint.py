"""Checkpoints hold only tensors and plain data: weights_only round trip, unsafe files refused."""

from __future__ import annotations

import pytest

from tests.conftest import needs_torch

pytestmark = needs_torch


class NotPlainData:
    """A pickled object a weights-only load must refuse."""

    def __init__(self):
        self.value = 42


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    import torch
    from capbatch.training.checkpoint import save_checkpoint
    from capbatch.training.config import ModelConfig
    from capbatch.training.model import build_model
    from capbatch.training.tokenizer import train_word_tokenizer

    torch.manual_seed(0)
    tok = train_word_tokenizer(["a red circle", "a blue square on the left"])
    config = ModelConfig(
        vocab_size=tok.vocab_size,
        embed_dim=8,
        attention_dim=8,
        decoder_dim=16,
        dropout=0.0,
        max_len=6,
    )
    model = build_model(config, pretrained=False).eval()
    optimizer = torch.optim.Adam(model.decoder.parameters(), lr=1e-3)
    model.decoder.fc.weight.sum().backward()
    optimizer.step()
    path = save_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "best.pt",
        model,
        tok.to_json(),
        "word",
        metrics={"val_bleu4": 0.5},
        epoch=3,
        optimizer=optimizer.state_dict(),
        extra={"options": {"lr": 1e-3, "data": "/x"}},
    )
    return path, model, tok


def test_roundtrip_loads_with_weights_only(saved):
    import torch
    from capbatch.training.checkpoint import load_checkpoint, model_from_checkpoint
    from capbatch.training.decoding import greedy_decode
    from capbatch.training.tokenizer import CaptionTokenizer

    path, model, tok = saved
    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain data only
    assert raw["format"] == "capbatch-checkpoint" and raw["epoch"] == 3
    assert raw["metrics"] == {"val_bleu4": 0.5}
    assert raw["optimizer"]["param_groups"][0]["lr"] == 1e-3
    data = load_checkpoint(path)
    rebuilt = model_from_checkpoint(data)
    for key, value in model.state_dict().items():
        assert torch.equal(value, rebuilt.state_dict()[key]), key
    features = torch.randn(2, 49, 1280)
    a, b = greedy_decode(model, features), greedy_decode(rebuilt, features)
    assert [h.tokens for h in a] == [h.tokens for h in b]
    again = CaptionTokenizer.from_checkpoint(data)
    assert again.encode("a blue circle") == tok.encode("a blue circle")
    assert again.style == "word"


def test_pickled_objects_are_refused_with_a_clear_message(tmp_path):
    import torch
    from capbatch.training.checkpoint import load_checkpoint

    from capbatch.errors import CheckpointError

    path = tmp_path / "evil.pt"
    torch.save({"format": "capbatch-checkpoint", "version": 1, "payload": NotPlainData()}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects, refused"):
        load_checkpoint(path)


def test_truncated_and_foreign_files_are_refused(saved, tmp_path):
    import torch
    from capbatch.training.checkpoint import load_checkpoint

    from capbatch.errors import CheckpointError

    path, _, _ = saved
    blob = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(cut)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(empty)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a capbatch checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
