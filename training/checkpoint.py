"""Checkpoints that hold only tensors and plain data.

They load with `torch.load(path, weights_only=True)`, so a checkpoint from
elsewhere cannot run code. Layout (nanoGPT-style, rebuilt from the config):

    {"format": "capbatch-checkpoint", "version": 1,
     "model": state_dict, "config": ModelConfig.to_dict(),
     "tokenizer": "<tokenizer.json text>", "vocab_style": "word" | "wordpiece",
     "metrics": {...}, "epoch": int, "optimizer": state_dict | None,
     "scheduler": state_dict | None, "extra": {...}}
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from capbatch.errors import CheckpointError
from capbatch.output.durable import write_file

from .config import ModelConfig
from .model import EncoderDecoder, build_model

CHECKPOINT_FORMAT = "capbatch-checkpoint"
CHECKPOINT_VERSION = 1
RUN_BEST = "best.pt"  # what a run folder given as a checkpoint stands for


def save_checkpoint(
    path: Path | str,
    model: EncoderDecoder,
    tokenizer_json: str,
    vocab_style: str = "word",
    metrics: dict | None = None,
    epoch: int = 0,
    optimizer: dict | None = None,
    scheduler: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write atomically (temp file + rename): a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # DDP / compiled wrappers carry the real model in .module
    model = getattr(model, "module", model)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": model.config.to_dict(),
        "tokenizer": tokenizer_json,
        "vocab_style": vocab_style,
        "metrics": dict(metrics or {}),
        "epoch": int(epoch),
        "optimizer": optimizer,
        "scheduler": scheduler,
        "extra": dict(extra or {}),
    }
    return write_file(path, lambda handle: torch.save(payload, handle))


def resolve_checkpoint(path: Path | str) -> Path:
    """A checkpoint file, or a run folder standing for its best.pt."""
    path = Path(path)
    if path.is_dir():
        if not (path / RUN_BEST).is_file():
            raise CheckpointError(f"checkpoint not found: {path} is a folder without {RUN_BEST}")
        return path / RUN_BEST
    return path


def load_checkpoint(path: Path | str) -> dict:
    """Load safely (a run folder means its best.pt); every way a file can be wrong
    becomes one CheckpointError line."""
    path = resolve_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses arbitrary objects: say so plainly.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"{path} holds pickled Python objects, refused (weights-only loading): {first}"
        ) from exc
    except (zipfile.BadZipFile, EOFError, RuntimeError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {first}"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a capbatch checkpoint (no 'format': '{CHECKPOINT_FORMAT}'); "
            "train one with capbatch-train fit"
        )
    if data.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {data.get('version')!r}; "
            f"this capbatch reads version {CHECKPOINT_VERSION}"
        )
    for key in ("model", "config", "tokenizer"):
        if key not in data:
            raise CheckpointError(f"{path} lacks '{key}'")
    return data


def config_from_checkpoint(data: dict) -> ModelConfig:
    try:
        return ModelConfig.from_dict(data["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint config is invalid: {exc}") from exc


def model_from_checkpoint(data: dict) -> EncoderDecoder:
    """Rebuild the model from the config and load its weights strictly (eval mode)."""
    config = config_from_checkpoint(data)
    # The checkpoint already holds the encoder weights: no pretrained file needed.
    model = build_model(config, pretrained=False)
    try:
        model.load_state_dict(data["model"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint weights do not fit its config: {first}") from exc
    return model.eval()
