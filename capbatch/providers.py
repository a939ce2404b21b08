"""Execution-provider selection for `--device auto|cuda|cpu`, as pure functions.

onnxruntime silently falls back to CPU when the CUDA provider cannot start
(it only logs), so the loader compares what it asked for with what the
session actually runs and says so on one line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from enum import Enum

from .errors import UsageError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class Device(str, Enum):
    auto = "auto"
    cuda = "cuda"
    cpu = "cpu"


def parse_device(device: str | Device) -> Device:
    try:
        return Device(device.value if isinstance(device, Device) else str(device).lower())
    except ValueError:
        raise UsageError(f"unknown device {device!r}; choose auto, cuda or cpu") from None


def choose_providers(device: str | Device, available: Sequence[str]) -> list[str]:
    """The providers to ask onnxruntime for, best first.

    auto: CUDA when this onnxruntime offers it, else CPU. cuda: CUDA or a fatal
    error (never a silent CPU run). CPU always comes last as the fallback for
    ops a GPU provider does not implement.
    """
    device = parse_device(device)
    if device is Device.cpu:
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if device is Device.cuda:
        offered = ", ".join(available) or "none"
        raise UsageError(
            f"--device cuda: this onnxruntime has no {CUDA} (available: {offered}); "
            "install capbatch[gpu] instead of capbatch[cpu], or use --device cpu"
        )
    return [CPU]


def fallback_warning(requested: Sequence[str], active: Sequence[str]) -> str | None:
    """One line when CUDA was asked for but the session runs without it, else None."""
    if CUDA in requested and CUDA not in active:
        return (
            "CUDA was requested but onnxruntime could not start it (missing CUDA/cuDNN "
            "libraries?); running on CPU"
        )
    return None


def cpu_thread_count() -> int:
    """Cores this process may run on (cgroup/affinity aware where the OS says so)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------- encoder runtime


class EncoderRuntime(str, Enum):
    """Who runs encoder.onnx. The decoder step always runs on onnxruntime."""

    onnxruntime = "onnxruntime"
    openvino = "openvino"  # CPU only; the optional capbatch[openvino] extra


class Precision(str, Enum):
    f32 = "f32"
    bf16 = "bf16"  # OpenVINO's inference precision hint; onnxruntime's CPU EP has none


def parse_encoder_runtime(
    runtime: str | EncoderRuntime, precision: str | Precision, device: str | Device = "auto"
) -> tuple[EncoderRuntime, Precision]:
    """Checked (runtime, precision) for the encoder; one UsageError line otherwise."""
    try:
        runtime = EncoderRuntime(getattr(runtime, "value", runtime))
    except ValueError:
        raise UsageError(
            f"unknown encoder runtime {runtime!r}; choose onnxruntime or openvino"
        ) from None
    try:
        precision = Precision(getattr(precision, "value", precision))
    except ValueError:
        raise UsageError(f"unknown precision {precision!r}; choose f32 or bf16") from None
    if runtime is EncoderRuntime.onnxruntime and precision is not Precision.f32:
        raise UsageError(
            f"precision {precision.value} needs the openvino encoder runtime "
            "(onnxruntime runs the encoder in f32)"
        )
    if runtime is EncoderRuntime.openvino and parse_device(device) is Device.cuda:
        raise UsageError("the openvino encoder runtime runs on CPU; use --device cpu or auto")
    return runtime, precision
