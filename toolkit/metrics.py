"""Shared arithmetic of metrics (NumPy, float64): the Fréchet distance between Gaussian fits.

The Fréchet (2-Wasserstein) distance between ``N(mu_a, S_a)`` and ``N(mu_b, S_b)`` is::

    d^2 = |mu_a - mu_b|^2 + tr S_a + tr S_b - 2 tr (S_a^1/2 S_b S_a^1/2)^1/2

This is the quantity FID reports (it is the *squared* distance, by convention). Every metric
of the toolkit that compares feature statistics computes it here, once.

How the last trace is computed: write each covariance as ``S = A^T A`` for some matrix ``A``
(a *factor*). The nonzero eigenvalues of ``S_a^1/2 S_b S_a^1/2`` are those of
``S_a S_b = A^T A B^T B``, hence of ``(A B^T)(A B^T)^T``, so the trace is the sum of the
singular values of ``A B^T`` (its nuclear norm). No matrix square root, no complex
round-off (``scipy.linalg.sqrtm`` of the non-symmetric ``S_a S_b`` returns tiny imaginary
parts that callers must discard), and no squaring of the condition number:

* from features (``n`` rows of dimension ``d``), ``A`` is the centred rows over ``sqrt(n - 1)``;
  when ``n > d`` it is first reduced to the ``d x d`` triangle of its QR decomposition
  (same ``A^T A``), so the singular values are of a matrix of size ``min(n, d)``;
* from a covariance matrix, ``A = diag(sqrt(w)) V^T`` from its symmetric eigendecomposition
  ``S = V diag(w) V^T`` (negative round-off eigenvalues clipped to 0).

Identical inputs give 0 up to float64 round-off; the result is clipped at 0 from below.
"""

from __future__ import annotations

import numpy as np


def gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, covariance)`` of ``features`` (N, D), the covariance with the ``N - 1`` divisor."""
    x = _rows(features, "features")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


class RunningMoments:
    """:func:`gaussian_fit` of rows that arrive in batches, without keeping them: the mean and
    the centred sum of squares are merged batch by batch (Chan et al.'s pairwise update), so the
    statistics of 1.28M Inception feature vectors take 2048 x 2048 numbers, not 1.28M x 2048."""

    def __init__(self):
        self.count, self.mean, self.squares = 0, None, None

    def update(self, features: np.ndarray) -> None:
        x = np.asarray(features, np.float64)
        if x.ndim != 2:
            raise ValueError(f"features: expected an (N, D) array, got shape {x.shape}")
        if not len(x):
            return
        mean = x.mean(axis=0)
        centred = x - mean
        squares = centred.T @ centred
        if self.count == 0:
            self.count, self.mean, self.squares = len(x), mean, squares
            return
        if x.shape[1] != self.mean.size:
            raise ValueError(f"features: dimension {x.shape[1]}, earlier batches {self.mean.size}")
        total = self.count + len(x)
        delta = mean - self.mean
        self.squares = self.squares + squares + np.outer(delta, delta) * (self.count * len(x) / total)
        self.mean = self.mean + delta * (len(x) / total)
        self.count = total

    def fit(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, covariance)`` with the ``N - 1`` divisor, as :func:`gaussian_fit`."""
        if self.count < 2:
            raise ValueError(f"features: a covariance needs at least 2 rows, got {self.count}")
        return self.mean.copy(), self.squares / (self.count - 1)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Squared Fréchet distance between Gaussian fits of two sets of feature vectors (N, D)."""
    a, b = _rows(features_a, "features_a"), _rows(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"features_a have dimension {a.shape[1]}, features_b {b.shape[1]}")
    return _frechet(a.mean(axis=0), _factor_of_rows(a), b.mean(axis=0), _factor_of_rows(b))


def frechet_distance_from_moments(mu_a: np.ndarray, sigma_a: np.ndarray,
                                  mu_b: np.ndarray, sigma_b: np.ndarray) -> float:
    """Squared Fréchet distance between ``N(mu_a, sigma_a)`` and ``N(mu_b, sigma_b)``; the
    covariances must be symmetric positive semi-definite (D, D)."""
    mu_a, mu_b = np.asarray(mu_a, np.float64).ravel(), np.asarray(mu_b, np.float64).ravel()
    d = mu_a.size
    if mu_b.size != d or np.shape(sigma_a) != (d, d) or np.shape(sigma_b) != (d, d):
        raise ValueError(f"expected two means of length D and two (D, D) covariances; got means of "
                         f"length {mu_a.size}, {mu_b.size} and covariances {np.shape(sigma_a)}, {np.shape(sigma_b)}")
    return _frechet(mu_a, _factor_of_covariance(sigma_a), mu_b, _factor_of_covariance(sigma_b))


class FrechetReference:
    """Fixed reference moments ``N(mu, sigma)``, factored once: the distance of any number of
    feature sets to them costs one eigendecomposition of ``sigma`` in all (evaluating
    checkpoint after checkpoint against one ``toolkit fid-stats`` file), and a set of N <= D
    features none at all (its covariance factor is its centred rows)."""

    def __init__(self, mu: np.ndarray, sigma: np.ndarray):
        self.mu = np.asarray(mu, np.float64).ravel()
        if np.shape(sigma) != (self.mu.size, self.mu.size):
            raise ValueError(f"expected a mean of length D and a (D, D) covariance; got a mean of length "
                             f"{self.mu.size} and a covariance {np.shape(sigma)}")
        self.factor = _factor_of_covariance(sigma)

    def distance(self, features: np.ndarray) -> float:
        """Squared Fréchet distance between the Gaussian fit of ``features`` (N, D) and the reference."""
        x = _rows(features, "features")
        if x.shape[1] != self.mu.size:
            raise ValueError(f"features have dimension {x.shape[1]}, the reference {self.mu.size}")
        # at most D rows either way; past D, a covariance and its eigendecomposition are cheaper than a QR
        factor = _factor_of_rows(x) if len(x) <= x.shape[1] else _factor_of_covariance(np.cov(x, rowvar=False))
        return _frechet(x.mean(axis=0), factor, self.mu, self.factor)


def _frechet(mu_a: np.ndarray, factor_a: np.ndarray, mu_b: np.ndarray, factor_b: np.ndarray) -> float:
    """The formula, with ``S_a = factor_a^T factor_a`` and ``S_b = factor_b^T factor_b``."""
    difference = mu_a - mu_b
    cross = np.linalg.svd(factor_a @ factor_b.T, compute_uv=False).sum()  # tr (S_a^1/2 S_b S_a^1/2)^1/2
    value = difference @ difference + np.sum(factor_a ** 2) + np.sum(factor_b ** 2) - 2.0 * cross
    if not np.isfinite(value):
        raise ValueError("the Fréchet distance is not finite: the features contain inf or nan")
    return float(max(value, 0.0))


def _rows(features: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"{name}: expected an (N, D) array with N >= 2, got shape {x.shape}")
    return x


def _factor_of_rows(x: np.ndarray) -> np.ndarray:
    """``A`` with ``A^T A`` the sample covariance of the rows of ``x``, at most ``D`` rows."""
    centred = (x - x.mean(axis=0)) / np.sqrt(len(x) - 1)
    if len(x) > x.shape[1]:
        return np.linalg.qr(centred, mode="r")
    return centred


def _factor_of_covariance(sigma: np.ndarray) -> np.ndarray:
    sigma = np.asarray(sigma, np.float64)
    eigenvalues, eigenvectors = np.linalg.eigh((sigma + sigma.T) / 2)
    return np.sqrt(np.clip(eigenvalues, 0.0, None))[:, None] * eigenvectors.T
