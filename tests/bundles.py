"""Test helper: tiny trained checkpoints and exported bundles, made in seconds.

Other engineers' tests import these:

    from tests.bundles import make_tiny_bundle, make_tiny_checkpoint, TINY_CAPTIONS

The model is small (decoder dims 16-32, 64x64 images so L = 4 regions) with a
randomly initialised frozen backbone, then BRIEFLY TRAINED (decoder only, Adam)
to caption a fixed set of generated images with distinct short captions. A
trained model has clear argmax margins, so ORT and PyTorch greedy tokens agree
exactly; random weights give near-ties that make token comparisons flaky.

Results are cached per process and per argument set: the bundle directory is
shared, so treat it as read-only (copy it before tampering).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import numpy as np

WORDS = ["red", "green", "blue", "square", "circle", "big", "small", "on", "left", "two"]
SPECIALS = ["<pad>", "<start>", "<end>", "<unk>"]
# One caption per TINY_IMAGES image, all distinct.
TINY_CAPTIONS = (
    "red square",
    "green circle on left",
    "two blue squares",
    "big red circle",
    "small green square",
    "blue circle on red",
    "two small circles",
    "big blue square on left",
)
TINY_IMAGE_SIZE = 64
TRAIN_STEPS = 300
LEARNING_RATE = 3e-3
# A randomly initialised backbone (BatchNorm at its default statistics) is close
# to positively homogeneous, so a larger normalisation std shrinks its features:
# ResNet-50's reach the hundreds otherwise and the tiny decoder cannot learn on
# them. The factor travels in the config like any normalisation constant.
TINY_STD_SCALE = {"resnet50": 64.0, "efficientnet_lite0": 4.0}

_CACHE: dict[tuple, Path] = {}
_CHECKPOINTS: dict[tuple, Path] = {}
_CACHE_ROOT: Path | None = None


def tiny_vocab() -> list[str]:
    words = sorted({w for caption in TINY_CAPTIONS for w in caption.split()} | set(WORDS))
    return SPECIALS + words


def tiny_tokenizer_json(vocab: list[str]) -> str:
    from capbatch.training.tokenizer import word_level_json

    return word_level_json(vocab, SPECIALS)


def tiny_images(size: int = TINY_IMAGE_SIZE) -> np.ndarray:
    """(8, size, size, 3) uint8: one distinct generated image per TINY_CAPTIONS entry."""
    rng = np.random.default_rng(1234)
    images = rng.integers(0, 256, (len(TINY_CAPTIONS), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        # A bold block per image on top of the noise, so images differ in large regions.
        colour = np.array([(i * 97) % 256, (i * 53) % 256, (i * 199) % 256], dtype=np.uint8)
        top, left = (i % 2) * size // 2, (i // 2 % 2) * size // 2
        image[top : top + size // 2, left : left + size // 2] = colour
    return images


def _caption_ids(vocab: list[str], caption: str, length: int) -> list[int]:
    index = {t: i for i, t in enumerate(vocab)}
    ids = [1] + [index[w] for w in caption.split()] + [2]
    return ids + [0] * (length - len(ids))


def make_tiny_checkpoint(
    directory: Path | str,
    encoder: str = "efficientnet_lite0",
    *,
    train_steps: int = TRAIN_STEPS,
    seed: int = 0,
    **config_overrides,
) -> Path:
    """Write `directory/tiny.pt`, a capbatch checkpoint of a tiny, briefly trained model.

    config_overrides go to ModelConfig (e.g. max_len=12, position_features=True,
    preprocess=PreprocessSpec(size=96)). Greedy decoding of tiny_images() gives
    TINY_CAPTIONS (asserted by this repo's export tests).
    """
    import torch
    from capbatch.training.checkpoint import save_checkpoint
    from capbatch.training.config import IMAGENET_STD

    from capbatch.preprocess import PreprocessSpec

    vocab = tiny_vocab()
    settings = dict(
        vocab_size=len(vocab),
        encoder=encoder,
        embed_dim=16,
        attention_dim=16,
        decoder_dim=32,
        dropout=0.0,
        max_len=12,
        preprocess=PreprocessSpec(size=TINY_IMAGE_SIZE),
        std=tuple(s * TINY_STD_SCALE.get(encoder, 1.0) for s in IMAGENET_STD),
    )
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    # Tiny ops on a shared 2-core machine: one thread is ~20x faster than two
    # threads spinning against other processes.
    torch.set_num_threads(1)
    try:
        model, loss = _train_tiny({**settings, **config_overrides}, train_steps)
    finally:
        torch.set_num_threads(threads)
    path = Path(directory) / "tiny.pt"
    return save_checkpoint(
        path,
        model,
        tiny_tokenizer_json(vocab),
        vocab_style="word",
        metrics={"train_loss": loss, "train_steps": train_steps},
        epoch=1,
        extra={"model_name": "tiny"},
    )


def _train_tiny(settings: dict, train_steps: int):
    """Decoder-only Adam on the fixed images/captions; returns (eval model, last loss)."""
    import torch
    from capbatch.training.config import ModelConfig
    from capbatch.training.model import build_model, caption_loss

    vocab = tiny_vocab()
    config = ModelConfig(**settings)
    model = build_model(config, pretrained=False)
    images = torch.from_numpy(tiny_images(config.preprocess.size))
    length = max(len(c.split()) for c in TINY_CAPTIONS) + 2
    captions = torch.tensor([_caption_ids(vocab, c, length) for c in TINY_CAPTIONS])
    model.eval()
    with torch.no_grad():
        features = model.encoder(images)  # (8, L, D): the backbone stays frozen
    model.decoder.train()
    optimizer = torch.optim.Adam(model.decoder.parameters(), lr=LEARNING_RATE)
    loss = torch.zeros(())
    for _ in range(train_steps):
        logits, alphas = model.decoder(features, captions)  # (8, T-1, V), (8, T-1, L)
        loss = caption_loss(logits, alphas, captions, config.pad_id, attention_weight=0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), float(loss.detach())


def _cache_root() -> Path:
    global _CACHE_ROOT
    if _CACHE_ROOT is None:
        _CACHE_ROOT = Path(tempfile.mkdtemp(prefix="capbatch-tiny-bundles-"))
        atexit.register(shutil.rmtree, _CACHE_ROOT, ignore_errors=True)
    return _CACHE_ROOT


def make_tiny_bundle(
    directory: Path | str | None = None,
    encoder: str = "efficientnet_lite0",
    *,
    fp16: bool = False,
    int8: bool = False,
    top_k: int = 0,
    validate: bool = False,
    **config_overrides,
) -> Path:
    """An exported bundle of make_tiny_checkpoint(encoder, **config_overrides).

    Exported once per process per argument set and cached (validation off by
    default for speed; this repo's export tests validate). With `directory`,
    the cached bundle (and its -fp16/-int8 siblings) is copied to
    directory/"bundle" (safe to modify); without, the shared cached path is
    returned (do not modify it). Either way the source checkpoint sits beside
    the bundle as tiny.pt (tiny_checkpoint_of).
    """
    from capbatch.export.convert import VARIANTS, export_bundle, variant_dir

    overrides = tuple(sorted(config_overrides.items()))
    key = (encoder, fp16, int8, top_k, validate, overrides)
    if key not in _CACHE:
        work = Path(tempfile.mkdtemp(prefix="tiny-", dir=_cache_root()))
        # One training per model, however many bundles are exported from it.
        if (encoder, overrides) not in _CHECKPOINTS:
            ckpt_dir = Path(tempfile.mkdtemp(prefix="ckpt-", dir=_cache_root()))
            _CHECKPOINTS[encoder, overrides] = make_tiny_checkpoint(
                ckpt_dir, encoder, **config_overrides
            )
        checkpoint = shutil.copy2(_CHECKPOINTS[encoder, overrides], work / "tiny.pt")
        _CACHE[key] = export_bundle(
            checkpoint,
            work / "bundle",
            fp16=fp16,
            int8=int8,
            top_k=top_k,
            validate=validate,
            force=True,
        )
    cached = _CACHE[key]
    if directory is None:
        return cached
    target = Path(directory) / "bundle"
    shutil.copytree(cached, target)
    shutil.copy2(cached.parent / "tiny.pt", Path(directory) / "tiny.pt")
    for variant, wanted in zip(VARIANTS, (fp16, int8)):
        if wanted:
            shutil.copytree(variant_dir(cached, variant), variant_dir(target, variant))
    return target


def tiny_checkpoint_of(bundle: Path | str) -> Path:
    """The tiny.pt a tiny bundle (cached or copied) was exported from: it sits beside it."""
    path = Path(bundle).parent / "tiny.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no tiny checkpoint beside {bundle}")
    return path
