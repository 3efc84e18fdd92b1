"""Sliced Wasserstein-2 distance between samples and reference data (NumPy, any backend)."""

from __future__ import annotations

import attrs
import numpy as np

from toolkit.config import positive
from toolkit.hookspecs import hookimpl


@attrs.frozen
class SlicedWassersteinOptions:
    """Sliced Wasserstein-2 distance over random 1-D projections (lower is better)."""

    projections: int = attrs.field(default=256, validator=positive)


class SlicedWasserstein:
    """``sqrt(mean_theta W2(theta . samples, theta . reference)^2)`` over random unit directions,
    each 1-D W2 computed exactly from quantiles."""

    higher_is_better = False

    def __init__(self, options: SlicedWassersteinOptions):
        self.options = options

    def __call__(self, samples: np.ndarray, reference: np.ndarray, seed: int = 0) -> float:
        a = np.asarray(samples, np.float64).reshape(len(samples), -1)
        b = np.asarray(reference, np.float64).reshape(len(reference), -1)
        if a.shape[1] != b.shape[1]:
            raise ValueError(f"samples have {a.shape[1]} dimensions, reference {b.shape[1]}")
        directions = np.random.default_rng(seed).standard_normal((a.shape[1], self.options.projections))
        directions /= np.linalg.norm(directions, axis=0, keepdims=True)
        levels = (np.arange(max(len(a), len(b))) + 0.5) / max(len(a), len(b))
        qa = _quantiles(np.sort(a @ directions, axis=0), levels)
        qb = _quantiles(np.sort(b @ directions, axis=0), levels)
        return float(np.sqrt(np.mean((qa - qb) ** 2)))


def _quantiles(sorted_columns: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Linear interpolation of each sorted column at ``levels`` (midpoint plotting positions:
    with as many levels as rows this returns the rows themselves)."""
    n = len(sorted_columns)
    position = np.clip(levels * n - 0.5, 0, n - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, n - 1)
    weight = (position - low)[:, None]
    return (1 - weight) * sorted_columns[low] + weight * sorted_columns[high]


@hookimpl
def register_metrics(register):
    register("sliced_wasserstein", {"*": SlicedWasserstein}, options=SlicedWassersteinOptions)
