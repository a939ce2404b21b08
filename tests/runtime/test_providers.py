"""capbatch.providers: the device and encoder-runtime choices in one exact line
each, and the thread count a process may use. Written from the survivors of
the providers.py mutation run (docs/testing.md)."""

from __future__ import annotations

import pytest

from capbatch import providers
from capbatch.errors import UsageError
from capbatch.providers import (
    CPU,
    CUDA,
    Device,
    EncoderRuntime,
    Precision,
    choose_providers,
    cpu_thread_count,
    fallback_warning,
    parse_device,
    parse_encoder_runtime,
)


def _usage_error(call) -> str:
    with pytest.raises(UsageError) as caught:
        call()
    return str(caught.value)


def test_devices_parse_from_members_and_any_case():
    assert parse_device(Device.cuda) is Device.cuda
    assert parse_device("CPU") is Device.cpu
    assert _usage_error(lambda: parse_device("tpu")) == (
        "unknown device 'tpu'; choose auto, cuda or cpu"
    )


def test_cuda_without_the_gpu_build_is_one_line_naming_what_there_is():
    assert _usage_error(lambda: choose_providers("cuda", [])) == (
        f"--device cuda: this onnxruntime has no {CUDA} (available: none); "
        "install capbatch[gpu] instead of capbatch[cpu], or use --device cpu"
    )
    assert _usage_error(lambda: choose_providers("cuda", [CPU, "AzureExecutionProvider"])) == (
        f"--device cuda: this onnxruntime has no {CUDA} "
        f"(available: {CPU}, AzureExecutionProvider); "
        "install capbatch[gpu] instead of capbatch[cpu], or use --device cpu"
    )
    assert choose_providers(Device.auto, [CUDA, CPU]) == [CUDA, CPU]


def test_a_silent_cpu_fallback_is_said_in_one_line():
    assert fallback_warning([CUDA, CPU], [CPU]) == (
        "CUDA was requested but onnxruntime could not start it (missing CUDA/cuDNN "
        "libraries?); running on CPU"
    )
    assert fallback_warning([CUDA, CPU], [CUDA, CPU]) is None
    assert fallback_warning([CPU], [CPU]) is None


def test_encoder_runtime_refusals_are_exact():
    assert parse_encoder_runtime(EncoderRuntime.openvino, Precision.bf16) == (
        EncoderRuntime.openvino,
        Precision.bf16,
    )
    assert _usage_error(lambda: parse_encoder_runtime("onnxruntime", "bf16")) == (
        "precision bf16 needs the openvino encoder runtime (onnxruntime runs the encoder in f32)"
    )
    assert _usage_error(lambda: parse_encoder_runtime("openvino", "f32", "cuda")) == (
        "the openvino encoder runtime runs on CPU; use --device cpu or auto"
    )


def test_threads_follow_the_cpus_this_process_may_use(monkeypatch):
    monkeypatch.setattr(providers.os, "sched_getaffinity", lambda pid: {3})
    assert cpu_thread_count() == 1  # one allowed core, whatever the machine has
    monkeypatch.delattr(providers.os, "sched_getaffinity")  # macOS, Windows
    monkeypatch.setattr(providers.os, "cpu_count", lambda: 6)
    assert cpu_thread_count() == 6
    monkeypatch.setattr(providers.os, "cpu_count", lambda: None)  # unknown
    assert cpu_thread_count() == 1
    monkeypatch.setattr(providers.os, "cpu_count", lambda: 1)
    assert cpu_thread_count() == 1
