"""2-D toy distributions: checkerboard, two moons, eight Gaussians (NumPy, any backend).

Each is a mixture of modes; with ``conditional: true`` the mode index is the class label.
All are scaled to lie roughly in [-3, 3]^2, so unit Gaussian noise covers them.
"""

from __future__ import annotations

from typing import Iterator

import attrs
import numpy as np

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

    def batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        rng = np.random.default_rng([seed, 1])
        while True:
            yield self._batch(rng, batch_size)

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


@hookimpl
def register_datasets(register):
    for name, cls in [("checkerboard", Checkerboard), ("moons", TwoMoons),
                      ("eight_gaussians", EightGaussians)]:
        register(name, {"*": cls}, options=Toy2DOptions, summary=cls.__doc__.splitlines()[0])
