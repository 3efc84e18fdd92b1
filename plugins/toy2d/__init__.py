"""2-D toy distributions: checkerboard, two moons, eight Gaussians (NumPy, any backend).

Each is a mixture of modes; with ``conditional: true`` the mode index is the class label.
All are scaled to lie roughly in [-3, 3]^2, so unit Gaussian noise covers them.
"""

from __future__ import annotations

from typing import Iterator

import attrs
import numpy as np

from toolkit.config import non_negative
from toolkit.hookspecs import hookimpl
from toolkit.interfaces import Batch, DataSpec


@attrs.frozen
class Toy2DOptions:
    """A 2-D toy distribution; ``conditional`` labels each point with its mode."""

    conditional: bool = False


class Toy2D:
    """Infinite data: every batch is a fresh draw, held-out data a separate stream."""

    num_modes: int

    def __init__(self, options: Toy2DOptions):
        self.options = options
        self.spec = DataSpec((2,), self.num_modes if options.conditional else 0)

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _batch(self, rng, n) -> Batch:
        x, mode = self.draw(rng, n)
        return Batch(x, mode.astype(np.int64) if self.options.conditional else None)

    def batches(self, batch_size: int, seed: int, start: int = 0) -> Iterator[Batch]:
        step = start
        while True:  # batch i from its own generator, so a resumed run gets the same batches
            yield self._batch(np.random.default_rng([seed, 1, step]), batch_size)
            step += 1

    def reference(self, n: int, seed: int) -> Batch:
        return self._batch(np.random.default_rng([seed, 2]), n)


class Checkerboard(Toy2D):
    """The 8 dark squares of a 4x4 board on [-2, 2]^2."""

    num_modes = 8

    def draw(self, rng, n):
        mode = rng.integers(0, 8, n)
        row = mode // 2
        col = 2 * (mode % 2) + row % 2
        x = np.stack([col, row], axis=1) + rng.random((n, 2)) - 2.0
        return x, mode


class TwoMoons(Toy2D):
    """Two interleaved half circles with Gaussian jitter (std 0.05 before scaling)."""

    num_modes = 2

    def draw(self, rng, n):
        mode = rng.integers(0, 2, n)
        angle = np.pi * rng.random(n)
        upper = np.stack([np.cos(angle), np.sin(angle)], axis=1)
        lower = np.stack([1.0 - np.cos(angle), 0.5 - np.sin(angle)], axis=1)
        x = np.where(mode[:, None] == 0, upper, lower) + 0.05 * rng.standard_normal((n, 2))
        return 1.5 * (x - np.array([0.5, 0.25])), mode


class EightGaussians(Toy2D):
    """Eight Gaussians (std 0.15) evenly spaced on the circle of radius 2."""

    num_modes = 8

    def draw(self, rng, n):
        mode = rng.integers(0, 8, n)
        angle = mode * np.pi / 4
        x = 2.0 * np.stack([np.cos(angle), np.sin(angle)], axis=1) + 0.15 * rng.standard_normal((n, 2))
        return x, mode


@attrs.frozen
class GaussianOptions:
    """An isotropic 2-D Gaussian N(mean, std^2 I): its velocity fields are known in closed form."""

    mean: float = 1.5
    std: float = attrs.field(default=0.5, validator=non_negative)


class Gaussian(Toy2D):
    """An isotropic 2-D Gaussian N(mean, std^2 I), whose flows are analytic (see ``exact_average_velocity``)."""

    num_modes = 1

    def __init__(self, options: GaussianOptions):
        self.options = options
        self.spec = DataSpec((2,), 0)

    def _batch(self, rng, n) -> Batch:
        return Batch(self.options.mean + self.options.std * rng.standard_normal((n, 2)))


def exact_average_velocity(z, t, r, mean: float, std: float, xp):
    """The average velocity u(z, r, t) of the linear-path flow for data N(mean, std^2 I).

    The flow is affine: ``z_t = mu_t + sigma_t e`` with ``mu_t = (1 - t) mean`` and
    ``sigma_t^2 = (1 - t)^2 std^2 + t^2``, so ``z_r = mu_r + sigma_r / sigma_t (z - mu_t)`` and
    ``u = (z_t - z_r) / (t - r)``; at r = t it is the instantaneous velocity
    ``-mean + sigma_t' (z - mu_t) / sigma_t``. ``t`` and ``r`` broadcast against ``z``; ``xp`` is
    the array namespace (numpy, torch or jax.numpy).
    """
    sigma_t = xp.sqrt((1 - t) ** 2 * std**2 + t**2)
    sigma_r = xp.sqrt((1 - r) ** 2 * std**2 + r**2)
    centred = z - (1 - t) * mean
    gap = t - r
    safe_gap = xp.where(gap > 0, gap, xp.ones_like(gap))
    average = (centred + (r - t) * mean - sigma_r / sigma_t * centred) / safe_gap
    instantaneous = -mean + (t - (1 - t) * std**2) / sigma_t**2 * centred
    return xp.where(gap > 0, average, instantaneous)


@hookimpl
def register_datasets(register):
    register("gaussian", {"*": Gaussian}, options=GaussianOptions)
    for name, cls in [("checkerboard", Checkerboard), ("moons", TwoMoons),
                      ("eight_gaussians", EightGaussians)]:
        register(name, {"*": cls}, options=Toy2DOptions, summary=cls.__doc__.splitlines()[0])
