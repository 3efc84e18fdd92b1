"""Time distributions and the time grids of samplers, in NumPy (shared by every backend)."""

from __future__ import annotations

from typing import Literal

import attrs
import numpy as np

from toolkit.config import positive


@attrs.frozen
class TimeDistribution:
    """A distribution over (0, 1).

    ``uniform``: U(0, 1). ``logit_normal``: ``sigmoid(N(mu, sigma))`` (MeanFlow's ImageNet
    setting is mu = -0.4, sigma = 1.0: Gsunshine/meanflow at d70cb55, configs/default.py:52-54).
    """

    distribution: Literal["uniform", "logit_normal"] = "uniform"
    mu: float = 0.0
    sigma: float = attrs.field(default=1.0, validator=positive)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.distribution == "uniform":
            return rng.random(n)
        return 1.0 / (1.0 + np.exp(-rng.normal(self.mu, self.sigma, n)))


def time_grid(nfe: int) -> list[float]:
    """``nfe + 1`` times from 1 (noise) down to 0 (data), as Python floats."""
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    return [1.0 - i / nfe for i in range(nfe)] + [0.0]
