"""Does an image look like the model's training data? A check on pooled encoder features.

A bundle may carry `domain_stats.npz`: the mean and a Ledoit-Wolf shrinkage
covariance of the encoder's pooled features over training images, and a
threshold on the Mahalanobis distance calibrated on held-out in-domain images
(by default their 99th percentile, so about 1 in-domain image in 100 is flagged).
An image further than the threshold is reported as not in domain: its caption
describes something the model never learnt to describe.

The covariance is stored as its top principal directions (float16) plus one
variance for every other direction: the full matrix of the default model's
1506-wide feature is 9 MB, the bundle has to stay small, and the low-rank form
separates held-out scenes from photos at least as well (docs/domain-check.md
has the measurement).

Torch-free (numpy only). The file is read with allow_pickle=False and hashed in
the manifest like every bundle file. `export/domain_stats.py` computes it.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import BundleError
from .manifest import Manifest, read_manifest, sha256_bytes

STATS_FILE = "domain_stats.npz"
MANIFEST_KEY = "domain"
METHOD = "mahalanobis-ledoit-wolf"
FORMAT_VERSION = 1
DEFAULT_QUANTILE = 0.99
DEFAULT_RANK = 128


def _mean_pool(features: np.ndarray) -> np.ndarray:
    return features.mean(axis=1, dtype=np.float64)  # (B, L, D) -> (B, D)


def _mean_max_pool(features: np.ndarray) -> np.ndarray:
    pooled = [features.mean(axis=1, dtype=np.float64), features.max(axis=1).astype(np.float64)]
    return np.concatenate(pooled, axis=1)  # (B, 2D)


# How the (B, L, D) region features become one vector per image. Named in the
# stats file, so a bundle always scores with the pooling it was fitted with.
POOLINGS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": _mean_pool,
    "mean_max": _mean_max_pool,
}
DEFAULT_POOLING = "mean"

# Every array in the stats file: name -> (dtype kind, number of dimensions).
_FIELDS = {
    "format_version": ("i", 0),
    "method": ("U", 0),
    "pooling": ("U", 0),
    "mean": ("f", 1),
    "basis": ("f", 2),
    "variances": ("f", 1),
    "residual_variance": ("f", 0),
    "shrinkage": ("f", 0),
    "threshold": ("f", 0),
    "quantile": ("f", 0),
    "fit_images": ("i", 0),
    "calibration_images": ("i", 0),
}


@dataclass(frozen=True)
class DomainScores:
    distances: np.ndarray  # (B,) float32 Mahalanobis distance of each image's pooled features
    in_domain: np.ndarray  # (B,) bool: distance <= the bundle's threshold


def pool(features: np.ndarray, pooling: str) -> np.ndarray:
    """Encoder features (B, L, D) -> (B, P) float64 vectors the statistics describe."""
    if features.ndim != 3:
        raise ValueError(f"features must be (batch, regions, dim), got shape {features.shape}")
    return POOLINGS[pooling](np.asarray(features))


def ledoit_wolf_shrinkage(centered: np.ndarray) -> float:
    """Ledoit & Wolf (2004) optimal shrinkage of a covariance towards mu * I.

    centered: (n, p) samples minus their mean. Returns the weight in [0, 1] of the
    scaled identity in (1 - s) * S + s * mu * I, S = centered.T @ centered / n,
    mu = trace(S) / p. Computed with the smaller of the two Gram matrices, so
    neither n nor p enters squared and cubed.
    """
    n, p = centered.shape
    gram = centered @ centered.T if n <= p else centered.T @ centered  # same Frobenius norm
    frobenius2 = (gram**2).sum() / n**2  # |S|_F^2
    row_norms2 = (centered**2).sum(axis=1)  # (n,)
    trace = row_norms2.sum() / n
    mu = trace / p
    # d2: squared distance of S from mu * I; b2: the sampling error of S (both / p).
    d2 = (frobenius2 - 2 * mu * trace + p * mu**2) / p
    b2 = ((row_norms2**2).sum() / n - frobenius2) / (n * p)
    b2 = min(b2, d2)
    return 0.0 if d2 <= 0 else float(b2 / d2)


def top_principal_directions(centered: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """The `rank` largest eigenvalues (k,) and eigenvectors (p, k) of S = X^T X / n.

    With fewer samples than dimensions the (n, n) Gram matrix has the same nonzero
    spectrum and is far cheaper to decompose; only directions with positive
    variance are returned, so k <= min(rank, n - 1).
    """
    n, p = centered.shape
    if n < p:
        values, vectors = np.linalg.eigh(centered @ centered.T / n)  # ascending, (n, n)
        vectors = centered.T @ vectors  # (p, n): S's eigenvectors, not yet unit length
    else:
        values, vectors = np.linalg.eigh(centered.T @ centered / n)  # ascending, (p, p)
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    keep = min(rank, int((values > 1e-12 * max(values[0], 0.0)).sum()))
    values, vectors = values[:keep], vectors[:, :keep]
    return values, vectors / np.linalg.norm(vectors, axis=0)


@dataclass(frozen=True, eq=False)  # arrays inside: compare describe() or the bytes
class DomainCheck:
    """Statistics of in-domain pooled features and the threshold that flags the rest."""

    pooling: str
    mean: np.ndarray  # (P,)
    basis: np.ndarray  # (P, k) orthonormal: the top principal directions of the fit images
    variances: np.ndarray  # (k,) shrunk covariance along each basis direction
    residual_variance: float  # shrunk covariance along every direction outside the basis
    shrinkage: float
    threshold: float
    quantile: float
    fit_images: int
    calibration_images: int

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; known: {sorted(POOLINGS)}")
        width, rank = self.basis.shape if self.basis.ndim == 2 else (-1, -1)
        if self.mean.shape != (width,) or self.variances.shape != (rank,):
            raise ValueError(
                f"inconsistent shapes: mean {self.mean.shape}, basis {self.basis.shape}, "
                f"variances {self.variances.shape}"
            )
        positive = np.concatenate([self.variances, [self.residual_variance]])
        if not (np.all(np.isfinite(positive)) and np.all(positive > 0)):
            raise ValueError("variances must be finite and > 0")
        if not (np.all(np.isfinite(self.mean)) and np.all(np.isfinite(self.basis))):
            raise ValueError("mean and basis must be finite")
        if not (np.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"threshold must be finite and > 0, got {self.threshold}")

    # ------------------------------------------------------------------ scoring

    def distances(self, pooled: np.ndarray) -> np.ndarray:
        """(B, P) pooled vectors -> (B,) Mahalanobis distances under the shrunk covariance."""
        centered = (np.asarray(pooled, dtype=np.float64) - self.mean).astype(np.float32)
        basis = self.basis.astype(np.float32)  # exact: the file stores float16
        # einsum, not @: these products are small, and a threaded BLAS call between
        # two encoder runs leaves spinning worker threads on the cores onnxruntime
        # needs (on the loaded 2-core machine, 8-280 ms instead of ~7 ms single-threaded).
        along = np.einsum("bp,pk->bk", centered, basis)  # (B, k) principal coordinates
        # Whatever the basis does not explain, measured against the residual variance.
        # Taken explicitly, not as |x|^2 - |along|^2: the float16 basis is orthonormal
        # only to ~1e-3, and the difference of two large norms would magnify that.
        outside = centered - np.einsum("bk,pk->bp", along, basis)  # (B, P)
        squared = (along.astype(np.float64) ** 2 / self.variances).sum(axis=1)
        squared += (outside.astype(np.float64) ** 2).sum(axis=1) / self.residual_variance
        return np.sqrt(squared)

    def score(self, features: np.ndarray) -> DomainScores:
        """Encoder features (B, L, D) -> distance and in-domain flag per image.

        Cheap next to the encoder: one (B, P) x (P, k) product per batch.
        Non-finite features give a NaN distance, which is not in domain.
        """
        with np.errstate(invalid="ignore", over="ignore"):
            distances = self.distances(pool(features, self.pooling))
        return DomainScores(distances.astype(np.float32), distances <= self.threshold)

    def describe(self) -> dict:
        """What `capbatch info` can show: how the check was fitted and where it cuts."""
        return {
            "method": METHOD,
            "pooling": self.pooling,
            "threshold": round(float(self.threshold), 4),
            "quantile": float(self.quantile),
            "fit_images": int(self.fit_images),
            "calibration_images": int(self.calibration_images),
            "rank": int(self.basis.shape[1]),
        }

    # ------------------------------------------------------------------ file

    def to_bytes(self) -> bytes:
        """The .npz file's bytes; identical statistics give identical bytes (stable hash)."""
        arrays = {
            "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
            "method": np.array(METHOD),
            "pooling": np.array(self.pooling),
            "mean": self.mean.astype(np.float32),
            "basis": self.basis.astype(np.float16),
            "variances": self.variances.astype(np.float64),
            "residual_variance": np.array(self.residual_variance, dtype=np.float64),
            "shrinkage": np.array(self.shrinkage, dtype=np.float64),
            "threshold": np.array(self.threshold, dtype=np.float64),
            "quantile": np.array(self.quantile, dtype=np.float64),
            "fit_images": np.array(self.fit_images, dtype=np.int64),
            "calibration_images": np.array(self.calibration_images, dtype=np.int64),
        }
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, array in arrays.items():
                # A fixed timestamp: np.savez stamps the current time, which changes the hash.
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                member = io.BytesIO()
                np.lib.format.write_array(member, array, allow_pickle=False)
                archive.writestr(info, member.getvalue())
        return buffer.getvalue()

    def save(self, path: Path | str) -> Path:
        from .output.durable import write_file

        return write_file(Path(path), self.to_bytes())

    @classmethod
    def load(cls, path: Path | str) -> DomainCheck:
        """Read a stats file; any problem is one BundleError naming the file."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BundleError(f"domain statistics {path.name}: {exc.strerror or exc}") from None
        return cls.from_bytes(data, path.name)

    @classmethod
    def from_bytes(cls, data: bytes, name: str = STATS_FILE) -> DomainCheck:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
            return cls(**_checked_fields(arrays))
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
            raise BundleError(f"domain statistics {name}: {exc}") from exc

    @classmethod
    def from_bundle(
        cls, bundle_dir: Path | str, manifest: Manifest | None = None
    ) -> DomainCheck | None:
        """The bundle's domain check, or None when the bundle carries no statistics.

        The typed manifest has already checked that the file is a plain name
        listed (and hashed) in `files`; the bytes read here are hashed again and
        are the bytes parsed, so altered statistics cannot slip in between.
        """
        bundle_dir = Path(bundle_dir)
        manifest = manifest if manifest is not None else read_manifest(bundle_dir)
        if manifest.domain is None:
            return None
        name = manifest.domain.file
        path = bundle_dir / name
        if path.is_symlink() or not path.is_file():
            raise BundleError(f"bundle {bundle_dir} failed verification: {name}: missing")
        data = path.read_bytes()
        if sha256_bytes(data) != manifest.files[name]:
            raise BundleError(
                f"bundle {bundle_dir} failed verification: {name}: sha256 mismatch "
                "(modified or corrupt)"
            )
        return cls.from_bytes(data, name)


def _checked_fields(arrays: dict[str, np.ndarray]) -> dict:
    missing = sorted(set(_FIELDS) - set(arrays))
    if missing:
        raise ValueError(f"missing arrays {missing}")
    for name, (kind, ndim) in _FIELDS.items():
        array = arrays[name]
        if array.dtype.kind != kind or array.ndim != ndim:
            raise ValueError(f"{name} is {array.dtype} with {array.ndim} dims")
    version = int(arrays["format_version"])
    if version != FORMAT_VERSION:
        raise ValueError(f"format_version {version}; this capbatch reads {FORMAT_VERSION}")
    if str(arrays["method"]) != METHOD:
        raise ValueError(f"method {str(arrays['method'])!r}; this capbatch reads {METHOD!r}")
    return {
        "pooling": str(arrays["pooling"]),
        "mean": arrays["mean"].astype(np.float64),
        "basis": arrays["basis"].astype(np.float64),
        "variances": arrays["variances"].astype(np.float64),
        "residual_variance": float(arrays["residual_variance"]),
        "shrinkage": float(arrays["shrinkage"]),
        "threshold": float(arrays["threshold"]),
        "quantile": float(arrays["quantile"]),
        "fit_images": int(arrays["fit_images"]),
        "calibration_images": int(arrays["calibration_images"]),
    }


def fit_domain_check(
    fit: np.ndarray,
    calibration: np.ndarray,
    *,
    pooling: str = DEFAULT_POOLING,
    quantile: float = DEFAULT_QUANTILE,
    rank: int = DEFAULT_RANK,
) -> DomainCheck:
    """Pooled vectors of training images (n, P) and held-out in-domain images (m, P) -> check.

    The threshold is the `quantile` of the held-out images' distances: distances of
    the images the statistics were fitted on are biased low, so they cannot set it.
    """
    fit = np.asarray(fit, dtype=np.float64)
    calibration = np.asarray(calibration, dtype=np.float64)
    if fit.ndim != 2 or fit.shape[0] < 2 or fit.shape[1] < 2:
        raise ValueError(f"need at least 2 fit vectors (n, P >= 2), got shape {fit.shape}")
    if calibration.ndim != 2 or calibration.shape[1] != fit.shape[1] or len(calibration) < 1:
        raise ValueError(f"calibration must be (m >= 1, {fit.shape[1]}), got {calibration.shape}")
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    if not (np.all(np.isfinite(fit)) and np.all(np.isfinite(calibration))):
        raise ValueError("pooled features hold NaN or infinity")
    mean = fit.mean(axis=0)
    centered = fit - mean  # (n, P)
    n, width = centered.shape
    trace = (centered**2).sum() / n  # trace(S): total variance
    if not trace > 0:
        raise ValueError("the fit vectors are all identical: nothing to describe")
    shrinkage = ledoit_wolf_shrinkage(centered)
    mu = trace / width
    values, directions = top_principal_directions(centered, max(1, min(int(rank), width - 1)))
    # Shrunk eigenvalues: (1 - s) * lambda + s * mu along the kept directions, and
    # for every other direction their mean, which keeps the estimate's trace (= trace(S)).
    shrunk = (1.0 - shrinkage) * values + shrinkage * mu
    residual = (trace - shrunk.sum()) / (width - len(shrunk))
    # Without shrinkage, directions the fit images never vary along would get variance 0.
    residual = max(residual, 1e-12 * mu)
    # Calibrate with exactly the numbers the file stores and the runtime reads.
    check = DomainCheck(
        pooling=pooling,
        mean=mean.astype(np.float32).astype(np.float64),
        basis=directions.astype(np.float16).astype(np.float64),
        variances=shrunk,
        residual_variance=residual,
        shrinkage=shrinkage,
        threshold=1.0,  # placeholder until the calibration distances are known
        quantile=quantile,
        fit_images=n,
        calibration_images=len(calibration),
    )
    threshold = float(np.quantile(check.distances(calibration), quantile))
    return replace(check, threshold=threshold)
