"""Caption tokenizers: text <-> ids, with the special ids the model config uses.

Two sources, one class:

* `train_word_tokenizer`: a lower-cased word-level HF `tokenizers` tokenizer
  trained on the training captions, specials [PAD]=0 [START]=1 [END]=2 [UNK]=3
  (ModelConfig's defaults);
* `load_pretrained_tokenizer(DIR)`: any local HF tokenizer through
  transformers (e.g. a bert-base-uncased WordPiece vocab), its CLS/SEP/PAD/UNK
  ids mapped to start/end/pad/unk.

Either way the checkpoint stores the `tokenizers` JSON text plus the vocab
style, and decoding follows docs/bundle-format.md (the runtime's rule), so
training metrics read captions exactly as the runtime will write them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from capbatch.errors import UsageError
from capbatch.output.durable import write_file
from capbatch.vocab import VOCAB_STYLES, Vocab

from .config import ModelConfig

PAD, START, END, UNK = "[PAD]", "[START]", "[END]", "[UNK]"
WORD_SPECIALS = (PAD, START, END, UNK)
TOKENIZER_FILE = "tokenizer.json"
DEFAULT_MAX_LEN = ModelConfig.max_len  # the dataclass default, declared once there


def word_level_json(vocab: Sequence[str], specials: Sequence[str]) -> str:
    """HF tokenizers WordLevel JSON for a fixed vocab (specials first, the last one
    is <unk>), written without importing tokenizers: for tests and benchmarks that
    build checkpoints from a known word list."""
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, t in enumerate(specials)
    ]  # fmt: skip
    return json.dumps(
        {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": {"type": "Lowercase"},
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": None,
            "decoder": None,
            "model": {
                "type": "WordLevel",
                "vocab": {t: i for i, t in enumerate(vocab)},
                "unk_token": specials[-1],
            },
        }
    )


@dataclass(frozen=True)
class SpecialIds:
    pad: int = 0
    start: int = 1
    end: int = 2
    unk: int = 3

    def config_fields(self) -> dict[str, int]:
        """The ModelConfig keyword arguments for these ids."""
        return {"pad_id": self.pad, "start_id": self.start, "end_id": self.end, "unk_id": self.unk}


class CaptionTokenizer:
    """A `tokenizers.Tokenizer` plus its special ids and vocab style."""

    def __init__(self, backend, specials: SpecialIds, style: str):
        if style not in VOCAB_STYLES:
            raise ValueError(f"vocab style must be 'word' or 'wordpiece', got {style!r}")
        # A pretrained tokenizer may come configured to pad/truncate to a fixed
        # length; captions are padded by the batcher and truncated by caption_ids.
        backend.no_padding()
        backend.no_truncation()
        self.backend = backend
        self.specials = specials
        self.style = style
        self._special_set = {specials.pad, specials.start, specials.end, specials.unk}
        self._special_set.update(
            i for t, i in backend.get_vocab(with_added_tokens=True).items() if t in WORD_SPECIALS
        )
        vocab = backend.get_vocab(with_added_tokens=True)
        self._id_to_token = [""] * (max(vocab.values()) + 1)
        for token, index in vocab.items():
            self._id_to_token[index] = token
        self.vocab = Vocab(tuple(self._id_to_token), style, frozenset(self._special_set))

    @property
    def vocab_size(self) -> int:
        return len(self._id_to_token)

    def encode(self, text: str) -> list[int]:
        """Caption text -> ids without any special token."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def caption_ids(self, text: str, max_len: int = DEFAULT_MAX_LEN) -> list[int]:
        """[start] + words + [end], words truncated so the decoder generates at most
        max_len tokens (<end> included), as decoding allows."""
        words = self.encode(text)[: max_len - 1]
        return [self.specials.start, *words, self.specials.end]

    def decode(self, ids: Sequence[int]) -> str:
        """ids -> text by the runtime's rule (capbatch.vocab.Vocab.text), so training
        metrics read captions exactly as `capbatch caption` writes them."""
        return self.vocab.text(ids)

    def id_to_token(self, index: int) -> str:
        return self._id_to_token[index]

    def to_json(self) -> str:
        return self.backend.to_str()

    def save(self, directory: Path | str) -> Path:
        return write_file(Path(directory) / TOKENIZER_FILE, self.to_json())

    @classmethod
    def from_json(cls, text: str, specials: SpecialIds, style: str) -> CaptionTokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text), specials, style)

    @classmethod
    def from_checkpoint(cls, data: dict) -> CaptionTokenizer:
        """The tokenizer stored in a loaded checkpoint dict (see training/checkpoint.py)."""
        config = data["config"]
        specials = SpecialIds(
            config.get("pad_id", 0),
            config.get("start_id", 1),
            config.get("end_id", 2),
            config.get("unk_id", 3),
        )
        return cls.from_json(data["tokenizer"], specials, data.get("vocab_style", "word"))


def train_word_tokenizer(captions: list[str], min_frequency: int = 1) -> CaptionTokenizer:
    """Lower-cased word-level tokenizer trained on `captions`.

    Punctuation other than apostrophes is dropped: the runtime joins words with
    spaces, so a kept "." would print as "a dog ." and cost BLEU for nothing.
    """
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.trainers import WordLevelTrainer

    if not captions:
        raise ValueError("cannot train a tokenizer on no captions")
    backend = Tokenizer(WordLevel(unk_token=UNK))
    backend.normalizer = normalizers.Sequence(
        [
            normalizers.NFD(),
            normalizers.StripAccents(),
            normalizers.Lowercase(),
            normalizers.Replace(Regex(r"[^\w\s']"), " "),
        ]
    )
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # The trainer numbers special tokens first, in order: [PAD]=0 .. [UNK]=3.
    trainer = WordLevelTrainer(special_tokens=list(WORD_SPECIALS), min_frequency=min_frequency)
    backend.train_from_iterator(captions, trainer=trainer)
    vocab = backend.get_vocab()
    specials = SpecialIds(vocab[PAD], vocab[START], vocab[END], vocab[UNK])
    if specials != SpecialIds():
        raise RuntimeError(f"trainer numbered special tokens unexpectedly: {specials}")
    return CaptionTokenizer(backend, specials, "word")


def load_pretrained_tokenizer(directory: Path | str) -> CaptionTokenizer:
    """A local HF tokenizer directory (vocab.txt / tokenizer.json + config), no download.

    CLS marks the start and SEP the end, as in BERT-style captioning setups.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"tokenizer directory not found: {directory}")
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise UsageError("--tokenizer needs transformers (pip install 'capbatch[train]')") from exc
    try:
        hf = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, use_fast=True)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot load a tokenizer from {directory}: {first}") from exc
    if not getattr(hf, "is_fast", False):
        raise UsageError(f"{directory}: only tokenizers with a fast (tokenizers) backend work")
    ids = {
        "start": hf.cls_token_id if hf.cls_token_id is not None else hf.bos_token_id,
        "end": hf.sep_token_id if hf.sep_token_id is not None else hf.eos_token_id,
        "pad": hf.pad_token_id,
        "unk": hf.unk_token_id,
    }
    missing = [k for k, v in ids.items() if v is None]
    if missing:
        raise UsageError(f"{directory}: tokenizer lacks special tokens for {missing}")
    vocab = hf.backend_tokenizer.get_vocab()
    style = "wordpiece" if any(t.startswith("##") for t in vocab) else "word"
    specials = SpecialIds(pad=ids["pad"], start=ids["start"], end=ids["end"], unk=ids["unk"])
    from tokenizers import Tokenizer

    # A copy: CaptionTokenizer switches padding/truncation off on its backend.
    backend = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    return CaptionTokenizer(backend, specials, style)


def trim_tokenizer(
    tokenizer: CaptionTokenizer, captions: Sequence[str], min_frequency: int = 1
) -> CaptionTokenizer:
    """The same tokenizer with only the tokens the captions use (at least
    min_frequency times) and its special tokens, renumbered densely in the old order.

    Exact on the captions it was trimmed on: WordPiece takes the longest piece in
    the vocabulary at each position, and every piece it took is kept. A word
    whose pieces were dropped for rarity becomes the unknown token, as in a
    trained word tokenizer. The decoder's embedding and output layers shrink
    from the pretrained vocabulary (30,522 for BERT) to the captions' own.
    """
    data = json.loads(tokenizer.to_json())
    model = data["model"]
    if model.get("type") not in ("WordPiece", "WordLevel"):
        raise UsageError(f"cannot trim a {model.get('type')} tokenizer (WordPiece or WordLevel)")
    counts: dict[int, int] = {}
    for text in captions:
        for index in tokenizer.encode(text):
            counts[index] = counts.get(index, 0) + 1
    keep = {i for i, n in counts.items() if n >= min_frequency}
    keep |= {added["id"] for added in data.get("added_tokens", [])}
    keep |= {getattr(tokenizer.specials, k) for k in ("pad", "start", "end", "unk")}
    new_id = {old: new for new, old in enumerate(sorted(keep))}
    model["vocab"] = {t: new_id[i] for t, i in model["vocab"].items() if i in new_id}
    for added in data.get("added_tokens", []):
        added["id"] = new_id[added["id"]]
    processor = data.get("post_processor") or {}
    for special in (processor.get("special_tokens") or {}).values():
        special["ids"] = [new_id[i] for i in special["ids"]]
    if data.get("padding"):
        data["padding"]["pad_id"] = new_id[data["padding"]["pad_id"]]
    specials = SpecialIds(
        **{k: new_id[getattr(tokenizer.specials, k)] for k in ("pad", "start", "end", "unk")}
    )
    return CaptionTokenizer.from_json(json.dumps(data), specials, tokenizer.style)
