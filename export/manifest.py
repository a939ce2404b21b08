"""Build and write a bundle's manifest.json, vocab.json and tokenizer.json.

Reading and hash verification live in capbatch/manifest.py (torch-free) so the
runtime and the exporter share them.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

from capbatch.training.config import ModelConfig

from capbatch import __version__
from capbatch.errors import CheckpointError
from capbatch.manifest import (
    DEFAULT_VOCAB_FILE,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    SPECIAL_TOKENS,
    sha256_file,
)
from capbatch.output.durable import write_file
from capbatch.vocab import VOCAB_STYLES

from .specs import ENCODER, GraphSpec

VOCAB_FILE = DEFAULT_VOCAB_FILE
TOKENIZER_FILE = "tokenizer.json"
ENCODER_SHORT_NAMES = {"resnet50": "r50", "efficientnet_lite0": "lite0"}


def vocab_from_tokenizer_json(tokenizer_json: str, vocab_size: int) -> list[str]:
    """Token strings indexed by id, from a HF tokenizers JSON (WordLevel/WordPiece).

    Parsed directly (no `tokenizers` import): the model's vocab map plus added tokens.
    """
    try:
        data = json.loads(tokenizer_json)
        mapping = dict(data["model"]["vocab"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint tokenizer is not a WordLevel/WordPiece JSON: {exc}"
        ) from exc
    for added in data.get("added_tokens") or []:
        mapping[added["content"]] = added["id"]
    by_id: dict[int, str] = {}
    for token, index in mapping.items():
        by_id.setdefault(int(index), token)
    if sorted(by_id) != list(range(vocab_size)):
        raise CheckpointError(
            f"checkpoint tokenizer has {len(by_id)} ids, not 0..{vocab_size - 1} as the model's "
            "vocab_size says"
        )
    return [by_id[i] for i in range(vocab_size)]


def model_id(config: ModelConfig, checkpoint_sha256: str, name: str = "capbatch") -> str:
    return (
        f"{name}-{ENCODER_SHORT_NAMES.get(config.encoder, config.encoder)}-{checkpoint_sha256[:12]}"
    )


def tool_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    return {
        "capbatch": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def write_vocab_files(bundle_dir: Path, vocab: list[str], tokenizer_json: str) -> None:
    write_file(bundle_dir / VOCAB_FILE, json.dumps(vocab, ensure_ascii=False))
    write_file(bundle_dir / TOKENIZER_FILE, tokenizer_json)


def graph_entry(spec: GraphSpec, **extra) -> dict:
    return {"file": spec.file, "inputs": spec.input_names, "outputs": spec.output_names, **extra}


def build_manifest(
    bundle_dir: Path,
    *,
    config: ModelConfig,
    checkpoint: dict,
    checkpoint_sha256: str,
    decoder_spec: GraphSpec,
    top_k: int,
    opset: int,
    variant: str,
    validation: dict | None,
    model_name: str | None = None,
) -> dict:
    """The manifest for the files now in bundle_dir (their hashes included)."""
    vocab_style = checkpoint.get("vocab_style", "word")
    if vocab_style not in VOCAB_STYLES:
        raise CheckpointError(f"unknown vocab_style {vocab_style!r} in checkpoint")
    extra = checkpoint.get("extra") or {}
    files = sorted(p.name for p in bundle_dir.iterdir() if p.is_file() and p.name != MANIFEST_FILE)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        # Variants caption slightly differently: output rows must say which one ran.
        "model_id": model_id(
            config, checkpoint_sha256, model_name or str(extra.get("model_name", "capbatch"))
        )
        + ("" if variant == "fp32" else f"-{variant}"),
        "variant": variant,
        "config": config.to_dict(),
        "preprocess": config.preprocess.to_dict(),
        # ModelConfig's <name>_id fields, under the names the runtime reads.
        "special_tokens": {name: getattr(config, f"{name}_id") for name in SPECIAL_TOKENS},
        "max_len": config.max_len,
        "vocab": {"file": VOCAB_FILE, "style": vocab_style},
        "graphs": {
            ENCODER.key: graph_entry(ENCODER),
            decoder_spec.key: graph_entry(decoder_spec, top_k=top_k),
        },
        "opset": opset,
        "files": {name: sha256_file(bundle_dir / name) for name in files},
        "source_checkpoint_sha256": checkpoint_sha256,
        "metrics": _plain(checkpoint.get("metrics") or {}),
        "epoch": int(checkpoint.get("epoch", 0) or 0),
        "validation": validation,
        "tools": tool_versions(),
    }


def write_manifest(bundle_dir: Path, manifest: dict) -> Path:
    path = bundle_dir / MANIFEST_FILE
    write_file(path, json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def _plain(value):
    """Checkpoint metrics may hold tensors or numpy scalars: make them JSON."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
