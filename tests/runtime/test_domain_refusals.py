"""capbatch.domain: the statistics file's exact format, the checks that refuse
broken statistics word for word, what `capbatch info` shows, and the flag at
the threshold itself. Written from the survivors of the domain.py mutation run
(docs/testing.md)."""

from __future__ import annotations

import io
import warnings
import zipfile

import numpy as np
import pytest

from capbatch.domain import DomainCheck


def _check(**changes) -> DomainCheck:
    fields = {
        "pooling": "mean",
        "mean": np.array([0.5, -1.0, 2.0]),
        "basis": np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]),
        "variances": np.array([4.0, 1.0]),
        "residual_variance": 0.25,
        "shrinkage": 0.125,
        "threshold": 3.123456,
        "quantile": 0.99,
        "fit_images": 200,
        "calibration_images": 50,
    }
    return DomainCheck(**{**fields, **changes})


def _refusal(**changes) -> str:
    with pytest.raises(ValueError) as caught:
        _check(**changes)
    return str(caught.value)


def test_the_file_stores_each_field_in_its_type_compressed_and_undated():
    data = _check().to_bytes()
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        dtypes = {name: str(archive[name].dtype) for name in archive.files}
    assert dtypes == {
        "format_version": "int64",
        "method": "<U23",
        "pooling": "<U4",
        "mean": "float32",
        "basis": "float16",
        "variances": "float64",
        "residual_variance": "float64",
        "shrinkage": "float64",
        "threshold": "float64",
        "quantile": "float64",
        "fit_images": "int64",
        "calibration_images": "int64",
    }
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            assert info.compress_type == zipfile.ZIP_DEFLATED
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
    assert _check().to_bytes() == data  # the same statistics, the same bytes
    again = DomainCheck.from_bytes(data)
    assert again.describe() == _check().describe()


def test_broken_statistics_are_refused_word_for_word():
    assert _refusal(variances=np.array([4.0, 0.0])) == "variances must be finite and > 0"
    assert _refusal(residual_variance=float("inf")) == "variances must be finite and > 0"
    assert _refusal(mean=np.array([0.5, np.nan, 2.0])) == "mean and basis must be finite"
    assert _refusal(basis=np.array([[1.0, 0.0], [0.0, np.inf], [0.0, 0.0]])) == (
        "mean and basis must be finite"
    )
    assert _refusal(threshold=0.0) == "threshold must be finite and > 0, got 0.0"
    assert _refusal(threshold=float("inf")) == "threshold must be finite and > 0, got inf"
    assert _refusal(basis=np.array([1.0, 0.0, 0.0])) == (
        "inconsistent shapes: mean (3,), basis (3,), variances (2,)"
    )


def test_info_shows_the_threshold_to_four_places():
    assert _check().describe() == {
        "method": "mahalanobis-ledoit-wolf",
        "pooling": "mean",
        "threshold": 3.1235,
        "quantile": 0.99,
        "fit_images": 200,
        "calibration_images": 50,
        "rank": 2,
    }


def test_an_image_at_the_threshold_is_in_domain_and_overflow_is_quiet():
    check = _check()
    at = check.distances(np.array([[0.5 + 2.0 * 3.0, -1.0, 2.0]]))[0]  # 3 sds along axis 0
    on_the_line = _check(threshold=float(at))
    features = np.full((1, 4, 3), [0.5 + 6.0, -1.0, 2.0])  # mean pooling gives that vector
    assert bool(on_the_line.score(features).in_domain[0]) is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow must not warn mid-run
        huge = check.score(np.full((2, 4, 3), 1e200))
    assert not huge.in_domain.any()
    assert not np.isfinite(huge.distances).any()  # no number where there is none


def _fit_refusal(fit, calibration, **options) -> str:
    from capbatch.domain import fit_domain_check

    with pytest.raises(ValueError) as caught:
        fit_domain_check(fit, calibration, **options)
    return str(caught.value)


def test_fitting_takes_the_smallest_inputs_and_refuses_one_less_word_for_word():
    from capbatch.domain import fit_domain_check

    rng = np.random.default_rng(0)
    two = rng.normal(size=(2, 2))
    check = fit_domain_check(two, rng.normal(size=(1, 2)), rank=5)  # 2 vectors, 2 dims, 1 held out
    assert check.describe()["rank"] == 1 and check.describe()["fit_images"] == 2
    assert _fit_refusal(two[:1], two) == (
        "need at least 2 fit vectors (n, P >= 2), got shape (1, 2)"
    )
    assert _fit_refusal(rng.normal(size=(4, 1)), rng.normal(size=(2, 1))) == (
        "need at least 2 fit vectors (n, P >= 2), got shape (4, 1)"
    )
    assert _fit_refusal(two, np.zeros((0, 2))) == "calibration must be (m >= 1, 2), got (0, 2)"
    assert _fit_refusal(two, two, quantile=0.0) == "quantile must be in (0, 1), got 0.0"
    assert _fit_refusal(two, np.array([[np.nan, 0.0]])) == "pooled features hold NaN or infinity"
    assert _fit_refusal(np.ones((3, 2)), two) == (
        "the fit vectors are all identical: nothing to describe"
    )


def test_a_statistics_file_that_cannot_be_read_is_one_line_naming_it(tmp_path):
    from capbatch.errors import BundleError

    with pytest.raises(BundleError) as caught:
        DomainCheck.load(tmp_path / "domain_stats.npz")
    assert str(caught.value) == "domain statistics domain_stats.npz: No such file or directory"
