"""``synthetic``: standard-normal arrays of any shape with uniform random labels.

Nothing to download and nothing to learn: it exists so that a backbone, objective or
sampler can be run (parity checks, shared tests, benchmarks, smoke runs of a paper config)
on data of exactly the shape a real data set would have.
"""

from __future__ import annotations

from typing import Iterator

import attrs
import numpy as np

from toolkit.config import check, non_negative
from toolkit.hookspecs import hookimpl
from toolkit.interfaces import Batch, DataSpec


@attrs.frozen
class SyntheticOptions:
    """Random N(0, I) data of a given shape, e.g. [4, 32, 32] for SD-VAE latents."""

    shape: tuple[int, ...] = attrs.field(default=(2,), validator=check(
        lambda s: len(s) > 0 and all(n > 0 for n in s), "a non-empty list of sizes > 0"))
    num_classes: int = attrs.field(default=0, validator=non_negative)


class Synthetic:
    def __init__(self, options: SyntheticOptions):
        self.options = options
        self.spec = DataSpec(tuple(options.shape), options.num_classes)

    def _batch(self, rng: np.random.Generator, n: int) -> Batch:
        x = rng.standard_normal((n, *self.spec.shape))
        y = rng.integers(0, self.spec.num_classes, n) if self.spec.conditional else None
        return Batch(x, y)

    def batches(self, batch_size: int, seed: int, start: int = 0) -> Iterator[Batch]:
        step = start
        while True:  # batch i from its own generator, so a resumed run gets the same batches
            yield self._batch(np.random.default_rng([seed, 1, step]), batch_size)
            step += 1

    def reference(self, n: int, seed: int) -> Batch:
        return self._batch(np.random.default_rng([seed, 2]), n)


@hookimpl
def register_datasets(register):
    register("synthetic", {"*": Synthetic}, options=SyntheticOptions)
