"""GPU check: torch CUDA inference images/s, an AMP training step, onnxruntime providers.

    bash tools/gpu_check.sh            # on the GPU machine; writes $OUT/gpu_check.json

Runs where torch (with CUDA) is preinstalled and nothing can be downloaded: the
repository need not be pip-installed (training/ is loaded as capbatch.training
from the checkout), timm is optional (the design's ResNet-50 configuration
needs only torchvision; EfficientNet-Lite0 is added when timm is present).
Random weights: throughput does not depend on them. Every section is guarded,
so a missing piece is reported in the JSON instead of ending the check.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# CPU runs (--tiny) share cores with other jobs: OpenMP's active wait would stall them.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
VOCAB = 5000
STEPS = 20
CAPTION_LEN = 22


def import_training():
    """capbatch.training from an install, else straight from the checkout's training/."""
    sys.path.insert(0, str(ROOT))
    try:
        import capbatch.training.model  # noqa: F401
    except ImportError:
        spec = importlib.util.spec_from_file_location(
            "capbatch.training",
            ROOT / "training" / "__init__.py",
            submodule_search_locations=[str(ROOT / "training")],
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["capbatch.training"] = module
        spec.loader.exec_module(module)
    from capbatch.training.config import ModelConfig
    from capbatch.training.model import build_model, caption_loss

    return ModelConfig, build_model, caption_loss


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-json", type=Path, required=True)
    parser.add_argument("--batch-sizes", default="64,256")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run: batch 2, 2 steps")
    args = parser.parse_args(argv)
    if args.tiny:
        args.batch_sizes, args.repeats, args.device = "2", 1, "cpu"
    return args


def model_config(ModelConfig, encoder: str, tiny: bool):
    if not tiny:
        return ModelConfig(vocab_size=VOCAB, encoder=encoder)
    from capbatch.preprocess import PreprocessSpec

    return ModelConfig(vocab_size=60, encoder=encoder, embed_dim=16, attention_dim=16,
                       decoder_dim=32, preprocess=PreprocessSpec(size=64))  # fmt: skip


def sync(torch, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def seconds_per_call(torch, fn, repeats: int, device: str) -> float:
    """Mean wall time of fn() after 2 warm-up calls, the device synchronised."""
    for _ in range(2):
        fn()
    sync(torch, device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(torch, device)
    return (time.perf_counter() - start) / repeats


def inference_rate(torch, model, batch: int, steps: int, repeats: int, device: str, amp: bool):
    size = model.config.preprocess.size
    images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, device=device)
    dtype = torch.bfloat16 if device == "cpu" else torch.float16

    def run():
        with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype, enabled=amp):
            features = model.encoder(images)  # (B, L, D)
            projected, h, c = model.decoder.init_state(features)
            tokens = torch.full((batch,), model.config.start_id, device=device)
            for _ in range(steps):
                logits, h, c, _ = model.decoder.step(tokens, h, c, features, projected)
                tokens = torch.log_softmax(logits.float(), -1).argmax(-1)  # (B,)

    return batch / seconds_per_call(torch, run, repeats, device)


def training_step_ms(torch, model, caption_loss, batch: int, repeats: int, device: str):
    config = model.config
    size = config.preprocess.size
    images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, device=device)
    captions = torch.randint(4, config.vocab_size, (batch, CAPTION_LEN), device=device)
    captions[:, 0] = config.start_id
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    scaler = torch.amp.GradScaler(enabled=device.startswith("cuda"))
    model.train()

    def step():
        with torch.autocast(device.split(":")[0], dtype):
            logits, alphas = model(images, captions)
            loss = caption_loss(logits.float(), alphas.float(), captions, config.pad_id)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    ms = 1e3 * seconds_per_call(torch, step, repeats, device)
    model.eval()
    return ms


def guarded(report: dict, key: str, fn) -> None:
    try:
        report[key] = fn()
    except Exception as exc:  # report and go on: one missing piece must not end the check
        report[key] = {"error": f"{type(exc).__name__}: {exc}"}
        traceback.print_exc()
    print(f"{key}: {json.dumps(report[key], default=str)}", flush=True)


def onnxruntime_report() -> dict:
    import onnxruntime

    return {"version": onnxruntime.__version__,
            "providers": onnxruntime.get_available_providers(),
            "device": onnxruntime.get_device()}  # fmt: skip


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    report: dict = {"python": platform.python_version(), "torch": torch.__version__}
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        report["error"] = "torch sees no CUDA device"
        device = None
    else:
        report["device"] = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    guarded(report, "onnxruntime", onnxruntime_report)
    if device:
        ModelConfig, build_model, caption_loss = import_training()
        has_timm = importlib.util.find_spec("timm") is not None
        encoders = ["resnet50"] + (["efficientnet_lite0"] if has_timm and not args.tiny else [])
        report["encoders_skipped"] = [] if has_timm else ["efficientnet_lite0: no timm"]
        batches = [int(b) for b in args.batch_sizes.split(",")]
        steps = 2 if args.tiny else STEPS
        if device.startswith("cuda"):
            torch.backends.cudnn.benchmark = True
        for encoder in encoders:
            config = model_config(ModelConfig, encoder, args.tiny)
            model = build_model(config, pretrained=False).to(device).eval()
            for batch in batches:
                for amp in (False, True):
                    key = f"{encoder}_infer_b{batch}_{'amp' if amp else 'fp32'}_img_s"
                    guarded(report, key, lambda m=model, b=batch, a=amp: round(
                        inference_rate(torch, m, b, steps, args.repeats, device, a), 1))  # fmt: skip
            guarded(report, f"{encoder}_train_step_amp_b{batches[0]}_ms", lambda m=model: round(
                training_step_ms(torch, m, caption_loss, batches[0], args.repeats, device), 1))  # fmt: skip
            del model
    report["steps_per_image"] = 2 if args.tiny else STEPS
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.out_json}")
    return report


if __name__ == "__main__":
    main()
