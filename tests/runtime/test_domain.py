"""capbatch.domain: the statistic, its file and its place in a bundle (numpy only, fast)."""

from __future__ import annotations

import json
import re
import zipfile

import numpy as np
import pytest

from capbatch.domain import (
    MANIFEST_KEY,
    STATS_FILE,
    DomainCheck,
    fit_domain_check,
    ledoit_wolf_shrinkage,
)
from capbatch.errors import BundleError
from capbatch.manifest import FORMAT, FORMAT_VERSION, read_manifest, sha256_file

# chi-square quantiles (scipy.stats.chi2.ppf), so the known answers need no scipy.
CHI2_99 = {4: 13.2767, 8: 20.0902}


def gaussian(rng: np.random.Generator, n: int, variances: np.ndarray, rotation: np.ndarray):
    """n samples of N(1, R diag(variances) R^T)."""
    return 1.0 + (rng.standard_normal((n, len(variances))) * np.sqrt(variances)) @ rotation.T


def random_rotation(rng: np.random.Generator, p: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((p, p)))
    return q


def fitted(rank: int = 6, seed: int = 0) -> DomainCheck:
    rng = np.random.default_rng(seed)
    rotation = random_rotation(rng, 8)
    variances = np.array([50.0, 20.0, 10.0, 5.0, 2.0, 1.0, 0.5, 0.1])
    fit = gaussian(rng, 4000, variances, rotation)
    calibration = gaussian(rng, 4000, variances, rotation)
    return fit_domain_check(fit, calibration, rank=rank)


def test_ledoit_wolf_shrinkage_matches_scikit_learn():
    covariance = pytest.importorskip("sklearn.covariance")
    rng = np.random.default_rng(3)
    for n, p in ((50, 10), (30, 80), (500, 40)):
        data = rng.standard_normal((n, p)) @ rng.standard_normal((p, p))
        centered = data - data.mean(axis=0)
        expected = covariance.ledoit_wolf_shrinkage(centered, assume_centered=True)
        assert ledoit_wolf_shrinkage(centered) == pytest.approx(expected, rel=1e-9)


def test_gaussian_distances_and_threshold_have_the_known_answer():
    """Full rank on a known Gaussian: distances are the true Mahalanobis distances and
    the 99th-percentile threshold is sqrt(chi2_99(p))."""
    rng = np.random.default_rng(1)
    p = 8
    rotation = random_rotation(rng, p)
    variances = np.array([50.0, 20.0, 10.0, 5.0, 2.0, 1.0, 0.5, 0.1])
    fit = gaussian(rng, 20000, variances, rotation)
    calibration = gaussian(rng, 20000, variances, rotation)
    check = fit_domain_check(fit, calibration, rank=p)
    assert check.shrinkage < 0.01  # plenty of samples: almost no shrinkage needed
    assert check.threshold == pytest.approx(np.sqrt(CHI2_99[p]), rel=0.02)

    probes = gaussian(rng, 200, variances, rotation)
    true = np.sqrt((((probes - 1.0) @ rotation) ** 2 / variances).sum(axis=1))
    np.testing.assert_allclose(check.distances(probes), true, rtol=0.03)

    # 5 standard deviations along the narrowest direction: far out, although the
    # point moved by only 1.6 units while the widest direction spans +-14.
    narrow = 1.0 + 5 * np.sqrt(0.1) * rotation[:, -1]
    assert check.distances(narrow[None])[0] == pytest.approx(5.0, rel=0.05)
    assert check.distances(narrow[None])[0] > check.threshold


def test_low_rank_equals_full_rank_when_the_rest_is_isotropic():
    """A spiked covariance (3 large directions, the rest equal): the low-rank form is exact."""
    rng = np.random.default_rng(2)
    p = 30
    rotation = random_rotation(rng, p)
    variances = np.concatenate([[100.0, 40.0, 10.0], np.ones(p - 3)])
    fit = gaussian(rng, 6000, variances, rotation)
    calibration = gaussian(rng, 2000, variances, rotation)
    low = fit_domain_check(fit, calibration, rank=3)
    full = fit_domain_check(fit, calibration, rank=p)
    probes = gaussian(rng, 100, variances, rotation) + rng.normal(0, 3, (100, p))
    np.testing.assert_allclose(low.distances(probes), full.distances(probes), rtol=0.05)
    assert low.basis.shape == (p, 3)
    assert low.residual_variance == pytest.approx(1.0, rel=0.1)


def test_fit_is_deterministic_and_score_returns_typed_arrays():
    check = fitted(rank=4)
    assert fitted(rank=4).to_bytes() == check.to_bytes()
    features = np.random.default_rng(9).standard_normal((2, 5, 8))  # (B, L, D)
    scores = check.score(features)
    assert scores.distances.shape == (2,) and scores.distances.dtype == np.float32
    assert scores.in_domain.shape == (2,) and scores.in_domain.dtype == bool
    with pytest.raises(ValueError, match="batch, regions, dim"):
        check.score(features[0])


def test_score_pools_regions_and_flags_outliers():
    rng = np.random.default_rng(5)
    regions = 7
    rotation = random_rotation(rng, 4)
    variances = np.array([4.0, 2.0, 1.0, 0.5])
    # Each image: its own vector, repeated over regions plus region noise that averages out.
    def images(n, shift=0.0):
        base = gaussian(rng, n, variances, rotation) + shift
        return base[:, None, :] + rng.normal(0, 0.01, (n, regions, 4))

    fit_images, calibration_images = images(3000), images(3000)
    check = fit_domain_check(fit_images.mean(1), calibration_images.mean(1), rank=4)
    assert check.threshold == pytest.approx(np.sqrt(CHI2_99[4]), rel=0.05)
    inside = check.score(images(500))
    assert 0.97 <= inside.in_domain.mean() <= 1.0
    outside = check.score(images(50, shift=20.0))
    assert not outside.in_domain.any()
    broken = images(2)
    broken[1, 0, 0] = np.nan
    scores = check.score(broken)
    assert np.isnan(scores.distances[1]) and not scores.in_domain[1]


def test_stats_file_round_trip_is_exact_and_byte_stable(tmp_path):
    check = fitted()
    path = check.save(tmp_path / STATS_FILE)
    again = check.save(tmp_path / "again.npz")
    assert path.read_bytes() == again.read_bytes()  # no timestamps: same stats, same hash
    loaded = DomainCheck.load(path)
    assert loaded.describe() == check.describe()
    for name in ("mean", "basis", "variances"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(check, name))
    probes = np.random.default_rng(4).normal(0, 5, (20, 8))
    np.testing.assert_array_equal(loaded.distances(probes), check.distances(probes))
    with np.load(path, allow_pickle=False) as data:  # plain arrays, nothing pickled
        assert {"mean", "basis", "threshold", "pooling"} <= set(data.files)


def rewrite_member(path, name: str, array: np.ndarray | None) -> None:
    """Replace (or drop, with None) one array of an .npz file."""
    with np.load(path, allow_pickle=True) as data:
        arrays = {k: data[k] for k in data.files}
    if array is None:
        arrays.pop(name)
    else:
        arrays[name] = array
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("threshold", None, "missing arrays ['threshold']"),
        ("method", np.array("isolation-forest"), "method 'isolation-forest'"),
        ("format_version", np.array(2), "format_version 2"),
        ("pooling", np.array("median"), "unknown pooling 'median'"),
        ("variances", np.array([1.0, -1.0, 1.0, 1.0, 1.0, 1.0]), "variances must be finite"),
        ("basis", np.ones((8, 5)), "inconsistent shapes"),
        ("mean", np.array([{"a": 1}], dtype=object), "Object arrays cannot be loaded"),
    ],
)
def test_load_refuses_broken_stats_files(tmp_path, name, value, message):
    path = fitted().save(tmp_path / STATS_FILE)
    rewrite_member(path, name, value)
    with pytest.raises(BundleError, match="domain statistics domain_stats.npz") as info:
        DomainCheck.load(path)
    assert message in str(info.value)


def test_load_refuses_a_file_that_is_not_a_zip(tmp_path):
    path = tmp_path / STATS_FILE
    path.write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="domain statistics"):
        DomainCheck.load(path)


def test_fit_refuses_bad_inputs():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="at least 2 fit vectors"):
        fit_domain_check(rng.normal(size=(1, 4)), rng.normal(size=(5, 4)))
    with pytest.raises(ValueError, match="calibration must be"):
        fit_domain_check(rng.normal(size=(10, 4)), rng.normal(size=(5, 3)))
    with pytest.raises(ValueError, match="quantile"):
        fit_domain_check(rng.normal(size=(10, 4)), rng.normal(size=(5, 4)), quantile=1.0)
    bad = rng.normal(size=(10, 4))
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        fit_domain_check(bad, rng.normal(size=(5, 4)))


# --------------------------------------------------------------------------- in a bundle


def fake_bundle(tmp_path, with_stats: bool, entry=None):
    """A manifest the schema accepts (graphs listed, not present: from_bundle needs none)."""
    (tmp_path / "vocab.json").write_text("[]", encoding="utf-8")
    files = {"vocab.json": sha256_file(tmp_path / "vocab.json"),
             "encoder.onnx": "0" * 64, "decoder_step.onnx": "1" * 64}  # fmt: skip
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_id": "fake",
        "preprocess": {"size": 224},
        "special_tokens": {"pad": 0, "start": 1, "end": 2, "unk": 3},
        "max_len": 5,
        "graphs": {
            "encoder": {"file": "encoder.onnx", "inputs": ["images"], "outputs": ["features"]},
            "decoder_step": {"file": "decoder_step.onnx", "inputs": ["a"], "outputs": ["b"]},
        },
        "files": files,
    }
    if with_stats:
        fitted().save(tmp_path / STATS_FILE)
        files[STATS_FILE] = sha256_file(tmp_path / STATS_FILE)
        manifest[MANIFEST_KEY] = {"file": STATS_FILE, "method": "mahalanobis-ledoit-wolf"}
    if entry is not None:
        manifest[MANIFEST_KEY] = entry
    (tmp_path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return read_manifest(tmp_path)


def test_bundle_without_statistics_has_no_check(tmp_path):
    fake_bundle(tmp_path, with_stats=False)
    assert DomainCheck.from_bundle(tmp_path) is None


def test_bundle_with_statistics_loads_them(tmp_path):
    manifest = fake_bundle(tmp_path, with_stats=True)
    check = DomainCheck.from_bundle(tmp_path)
    assert check is not None and check.describe() == fitted().describe()
    assert DomainCheck.from_bundle(tmp_path, manifest).describe() == check.describe()


def test_altered_statistics_are_refused_by_their_hash(tmp_path):
    fake_bundle(tmp_path, with_stats=True)
    path = tmp_path / STATS_FILE
    # A valid stats file with another threshold: only the hash can tell.
    other = fitted(seed=1)
    other.save(path)
    with pytest.raises(BundleError, match="domain_stats.npz: sha256 mismatch"):
        DomainCheck.from_bundle(tmp_path)
    path.unlink()
    with pytest.raises(BundleError, match="domain_stats.npz: missing"):
        DomainCheck.from_bundle(tmp_path)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"file": "../elsewhere.npz", "method": "m"}, "not a plain file name"),
        ({"method": "x"}, "domain has no 'file'"),
        ("domain_stats.npz", "domain must be an object"),
        ({"file": "unlisted.npz", "method": "m"}, "not listed (and hashed)"),
        ({"file": STATS_FILE}, "domain has no 'method'"),
    ],
)
def test_bad_manifest_entries_are_refused(tmp_path, entry, message):
    with pytest.raises(BundleError, match=re.escape(message)):
        fake_bundle(tmp_path, with_stats=True, entry=entry)


def test_stats_file_is_small_zip_of_npy_members(tmp_path):
    path = fitted().save(tmp_path / STATS_FILE)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert all(n.endswith(".npy") for n in names)
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_fit_without_spread_in_some_directions_still_gives_positive_variances():
    rng = np.random.default_rng(0)
    fit = np.zeros((50, 6))
    fit[:, :2] = rng.normal(size=(50, 2))  # four directions never vary (like position features)
    check = fit_domain_check(fit, fit[:10], rank=4)
    assert np.all(check.variances > 0) and check.residual_variance > 0
    # The same step along a direction the fit images took, and along one they never took.
    along, across = np.zeros((1, 6)), np.zeros((1, 6))
    along[0, 0], across[0, 5] = 1.0, 1.0
    assert check.distances(along)[0] < check.threshold < check.distances(across)[0]
    with pytest.raises(ValueError, match="all identical"):
        fit_domain_check(np.ones((10, 3)), np.ones((2, 3)))
