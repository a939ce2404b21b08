"""The encoder's runtime and precision, and the gate that allows a reduced one.

A precision other than the reference (onnxruntime f32) runs the SAME encoder.onnx
with different arithmetic, so it can change captions. It is only used when the
bundle's manifest records, for this very graph (its sha256), that its greedy
captions matched the reference on enough held-out images of every split
(`runtime_agreement`, written by `python -m capbatch.export.precision`;
docs/export.md). A runtime precision is gated like the fp16/int8 variant bundles,
without shipping a second graph: the default bundle has no room for one.

A record may also carry `fallback_margin`: the agreement was measured with the
captions whose greedy margin fell below it redone by the reference encoder
(capbatch/close_calls.py), so the loader keeps one beside the reduced one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .errors import BundleError
from .manifest import Manifest
from .providers import EncoderRuntime, Precision

REFERENCE = (EncoderRuntime.onnxruntime, Precision.f32)
AGREEMENT_KEY = "runtime_agreement"


def agreement_key(runtime: EncoderRuntime, precision: Precision) -> str:
    return f"{runtime.value}-{precision.value}"


def is_reference(runtime: EncoderRuntime, precision: Precision) -> bool:
    return (runtime, precision) == REFERENCE


def recorded_agreement(manifest: Manifest, key: str) -> Mapping[str, Any] | None:
    records = manifest.raw.get(AGREEMENT_KEY)
    if not isinstance(records, Mapping):
        return None
    record = records.get(key)
    return record if isinstance(record, Mapping) else None


def _summary(record: Mapping[str, Any]) -> str:
    splits = record.get("splits")
    if not isinstance(splits, Mapping):
        return "no per-split figures"
    parts = []
    for name, split in splits.items():
        if isinstance(split, Mapping):
            parts.append(
                f"{name} {split.get('agreement', 0):.1%} (min {split.get('min_agreement', 0):.0%})"
            )
    return ", ".join(parts) or "no per-split figures"


def check_agreement(manifest: Manifest, runtime: EncoderRuntime, precision: Precision) -> None:
    """Raise one BundleError line unless a passing agreement is recorded for this encoder."""
    if is_reference(runtime, precision):
        return
    key = agreement_key(runtime, precision)
    record = recorded_agreement(manifest, key)
    hint = "measure it with python -m capbatch.export.precision (docs/export.md)"
    if record is None:
        raise BundleError(
            f"bundle {manifest.model_id} records no caption agreement for the {key} encoder; "
            + hint
        )
    encoder_sha = manifest.files.get(manifest.encoder.file)
    if record.get("encoder_sha256") != encoder_sha:
        raise BundleError(
            f"the {key} agreement recorded in {manifest.model_id} was measured on another "
            f"encoder graph; {hint}"
        )
    if record.get("passed") is not True:
        raise BundleError(
            f"the {key} encoder changes captions: agreement with onnxruntime f32 "
            f"{_summary(record)}; refused"
        )


def other_cpu_warning(
    manifest: Manifest, runtime: EncoderRuntime, precision: Precision, device_name: str | None
) -> str | None:
    """One line when a reduced precision's agreement was measured on another CPU.

    bf16 kernels (and so their rounding) differ between instruction sets, e.g.
    AVX-512 BF16 and AMX: the recorded figures describe the CPU named in the record.
    """
    if precision is Precision.f32 or not device_name:
        return None
    record = recorded_agreement(manifest, agreement_key(runtime, precision))
    measured_on = None if record is None else record.get("device")
    if not measured_on or measured_on == device_name:
        return None
    return (
        f"the {agreement_key(runtime, precision)} caption agreement of {manifest.model_id} "
        f"was measured on {measured_on}, not on this CPU ({device_name}); measure it here "
        "with python -m capbatch.export.precision (docs/export.md)"
    )


def _valid_margin(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def choose_fallback_margin(
    manifest: Manifest, runtime: EncoderRuntime, precision: Precision, asked: float | None
) -> float | None:
    """The greedy margin below which captions are redone at f32; None: no fallback.

    The reference encoder has nothing to fall back to. `asked` (a number) overrides
    the margin recorded with this encoder's agreement.
    """
    if is_reference(runtime, precision):
        return None
    if asked is not None:
        if not _valid_margin(asked):
            raise ValueError(f"fallback_margin must be a finite number >= 0, got {asked!r}")
        return float(asked) or None
    record = recorded_agreement(manifest, agreement_key(runtime, precision))
    recorded = None if record is None else record.get("fallback_margin")
    if recorded is None:
        return None
    if not _valid_margin(recorded):
        raise BundleError(
            f"bundle {manifest.model_id} records an invalid fallback_margin {recorded!r} "
            f"for the {agreement_key(runtime, precision)} encoder"
        )
    return float(recorded) or None


def create_encoder(
    runtime: EncoderRuntime, precision: Precision, model_bytes: bytes, threads: int | None
):
    """An OpenVINO encoder with the session calls Bundle makes (runtime openvino only)."""
    if runtime is not EncoderRuntime.openvino:
        raise ValueError(f"create_encoder builds openvino encoders, not {runtime.value}")
    from .openvino_backend import OpenVinoEncoder  # optional extra: imported when asked for

    return OpenVinoEncoder(model_bytes, precision.value, threads)
