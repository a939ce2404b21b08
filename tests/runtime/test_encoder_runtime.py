"""What capbatch/encoder_runtime.py promises (docs/export.md, "Reduced-precision encoders"):
the gate's refusals and their one-line messages, the other-CPU warning, the fallback
margin's choice, and create_encoder. Manifests are a tiny real bundle's, with the
`runtime_agreement` records written in (no openvino needed but for one test)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

import capbatch.openvino_backend as openvino_backend
from capbatch.encoder_runtime import (
    check_agreement,
    choose_fallback_margin,
    create_encoder,
    other_cpu_warning,
)
from capbatch.errors import BundleError
from capbatch.manifest import read_manifest
from capbatch.providers import EncoderRuntime, Precision
from tests.runtime_fakes import make_fake_bundle

BF16 = (EncoderRuntime.openvino, Precision.bf16)
OV_F32 = (EncoderRuntime.openvino, Precision.f32)
REFERENCE = (EncoderRuntime.onnxruntime, Precision.f32)
HINT = "measure it with python -m capbatch.export.precision (docs/export.md)"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_fake_bundle(tmp_path_factory.mktemp("bundle") / "b")


@pytest.fixture(scope="module")
def manifest(bundle):
    return read_manifest(bundle)


def recording(manifest, records):
    """The manifest as if its runtime_agreement were `records` (any JSON value)."""
    return replace(manifest, raw={**manifest.raw, "runtime_agreement": records})


def passing(manifest, **fields):
    return {"encoder_sha256": manifest.files[manifest.encoder.file], "passed": True, **fields}


def test_the_reference_needs_no_record_and_others_name_their_key(manifest):
    assert "runtime_agreement" not in manifest.raw
    assert check_agreement(manifest, *REFERENCE) is None
    for choice, key in ((BF16, "openvino-bf16"), (OV_F32, "openvino-f32")):
        with pytest.raises(BundleError) as raised:
            check_agreement(manifest, *choice)
        assert str(raised.value) == (
            f"bundle {manifest.model_id} records no caption agreement for the {key} encoder; {HINT}"
        )


@pytest.mark.parametrize(
    "records",
    ["passed", ["openvino-bf16"], {"openvino-bf16": "passed"}, {"openvino-bf16": True}],
    ids=["string", "list", "string-record", "bool-record"],
)
def test_a_malformed_record_counts_as_none(manifest, records):
    odd = recording(manifest, records)
    with pytest.raises(BundleError, match="records no caption agreement for the openvino-bf16"):
        check_agreement(odd, *BF16)
    assert other_cpu_warning(odd, *BF16, "This CPU") is None
    assert choose_fallback_margin(odd, *BF16, None) is None


def test_a_record_is_for_one_runtime_precision(manifest):
    only_f32 = recording(manifest, {"openvino-f32": passing(manifest, fallback_margin=0.5)})
    assert check_agreement(only_f32, *OV_F32) is None
    with pytest.raises(BundleError, match="records no caption agreement for the openvino-bf16"):
        check_agreement(only_f32, *BF16)
    assert choose_fallback_margin(only_f32, *BF16, None) is None


def test_a_record_for_another_graph_is_refused(manifest):
    for record in (passing(manifest, encoder_sha256="0" * 64), {"passed": True}):
        with pytest.raises(BundleError) as raised:
            check_agreement(recording(manifest, {"openvino-bf16": record}), *BF16)
        assert str(raised.value) == (
            f"the openvino-bf16 agreement recorded in {manifest.model_id} was measured on "
            f"another encoder graph; {HINT}"
        )


@pytest.mark.parametrize("passed", [False, None, "true", 1])
def test_only_passed_true_passes(manifest, passed):
    record = passing(manifest, passed=passed)
    with pytest.raises(BundleError, match="changes captions.*refused$"):
        check_agreement(recording(manifest, {"openvino-bf16": record}), *BF16)


def test_a_failing_record_is_refused_with_every_split_figure(manifest):
    splits = {
        "val": {"agreement": 0.955, "min_agreement": 0.97},
        "test": {},  # figures missing: read as 0
        "notes": "not a split",  # skipped
        "samples": {"agreement": 1.0, "min_agreement": 0.97},
    }
    record = passing(manifest, passed=False, splits=splits)
    with pytest.raises(BundleError) as raised:
        check_agreement(recording(manifest, {"openvino-bf16": record}), *BF16)
    assert str(raised.value) == (
        "the openvino-bf16 encoder changes captions: agreement with onnxruntime f32 "
        "val 95.5% (min 97%), test 0.0% (min 0%), samples 100.0% (min 97%); refused"
    )


@pytest.mark.parametrize("splits", [None, {}, {"val": 0.99}, ["val"]])
def test_a_failing_record_without_figures_says_so(manifest, splits):
    record = passing(manifest, passed=False)
    if splits is not None:
        record["splits"] = splits
    with pytest.raises(BundleError) as raised:
        check_agreement(recording(manifest, {"openvino-bf16": record}), *BF16)
    assert str(raised.value) == (
        "the openvino-bf16 encoder changes captions: agreement with onnxruntime f32 "
        "no per-split figures; refused"
    )


def test_a_passing_record_for_this_graph_is_accepted(manifest):
    records = {"openvino-bf16": passing(manifest), "openvino-f32": passing(manifest)}
    assert check_agreement(recording(manifest, records), *BF16) is None
    assert check_agreement(recording(manifest, records), *OV_F32) is None


def test_the_other_cpu_warning_is_for_a_reduced_precision_measured_elsewhere(manifest):
    assert other_cpu_warning(manifest, *BF16, "This CPU") is None  # no record at all
    unnamed = recording(manifest, {"openvino-bf16": passing(manifest)})
    assert other_cpu_warning(unnamed, *BF16, "This CPU") is None  # record names no CPU
    records = {
        "openvino-bf16": passing(manifest, device="AMD EPYC"),
        "openvino-f32": passing(manifest, device="AMD EPYC"),
    }
    named = recording(manifest, records)
    assert other_cpu_warning(named, *BF16, "AMD EPYC") is None  # measured here
    assert other_cpu_warning(named, *BF16, "") is None  # this CPU's name unknown
    assert other_cpu_warning(named, *OV_F32, "Intel Xeon") is None  # f32: same rounding
    assert other_cpu_warning(named, *BF16, "Intel Xeon") == (
        f"the openvino-bf16 caption agreement of {manifest.model_id} was measured on "
        "AMD EPYC, not on this CPU (Intel Xeon); measure it here with "
        "python -m capbatch.export.precision (docs/export.md)"
    )


def test_the_asked_margin_overrides_the_recorded_one(manifest):
    records = {"openvino-bf16": passing(manifest, fallback_margin="lots")}
    invalid = recording(manifest, records)
    assert choose_fallback_margin(invalid, *BF16, 0.3) == 0.3  # the record is not read
    margin = choose_fallback_margin(invalid, *BF16, 1)
    assert margin == 1.0 and isinstance(margin, float)
    assert choose_fallback_margin(invalid, *BF16, 0) is None  # asked for no fallback
    for bad in ("0.5", False, -0.001, -math.inf):
        with pytest.raises(ValueError, match="fallback_margin must be a finite number >= 0"):
            choose_fallback_margin(manifest, *BF16, bad)


def test_the_reference_encoder_never_falls_back(manifest):
    records = {"onnxruntime-f32": passing(manifest, fallback_margin=0.5)}
    assert choose_fallback_margin(recording(manifest, records), *REFERENCE, None) is None


def test_the_recorded_margin_is_taken_as_a_float(manifest):
    for recorded, expected in ((2, 2.0), (0.51, 0.51), (0, None), (0.0, None), (None, None)):
        record = passing(manifest, fallback_margin=recorded)
        margin = choose_fallback_margin(recording(manifest, {"openvino-bf16": record}), *BF16, None)
        assert margin == expected and type(margin) is type(expected)


@pytest.mark.parametrize("recorded", [-0.5, True, math.nan, math.inf, "0.5", [0.5]])
def test_an_invalid_recorded_margin_is_a_bundle_error(manifest, recorded):
    record = passing(manifest, fallback_margin=recorded)
    with pytest.raises(BundleError) as raised:
        choose_fallback_margin(recording(manifest, {"openvino-bf16": record}), *BF16, None)
    assert str(raised.value) == (
        f"bundle {manifest.model_id} records an invalid fallback_margin {recorded!r} "
        "for the openvino-bf16 encoder"
    )


def test_create_encoder_builds_openvino_encoders_only(bundle, monkeypatch):
    with pytest.raises(ValueError) as raised:
        create_encoder(EncoderRuntime.onnxruntime, Precision.f32, b"", None)
    assert str(raised.value) == "create_encoder builds openvino encoders, not onnxruntime"

    built = []
    monkeypatch.setattr(openvino_backend, "OpenVinoEncoder", lambda *args: built.append(args))
    create_encoder(*BF16, b"graph", 3)
    create_encoder(*OV_F32, b"graph", None)
    assert built == [(b"graph", "bf16", 3), (b"graph", "f32", None)]


def test_create_encoder_compiles_the_bytes_at_the_asked_precision(bundle):
    pytest.importorskip("openvino")
    images = np.zeros((2, 32, 32, 3), np.uint8)
    encoder = create_encoder(*OV_F32, (bundle / "encoder.onnx").read_bytes(), 1)
    assert isinstance(encoder, openvino_backend.OpenVinoEncoder)
    assert encoder.precision == "f32" and encoder.effective_precision == "f32"
    features = encoder.run(["features"], {"images": images})[0]
    assert features.shape[0] == 2
