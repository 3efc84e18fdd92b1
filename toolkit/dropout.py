"""Per-example dropout seeds: what makes a network's dropout masks reproducible.

A backbone with a ``dropout`` option draws its masks from a hash of each example's seed
(``toolkit/backends/masks.py``), so a training step's masks are a pure function of its draws,
like its times and labels: every call of the network on an example (the prediction, the JVP of
the target, a slice of the batch) sees one mask, in torch and in JAX alike. Objectives pass the
seeds with :func:`dropout_arguments`; calls without them (guidance targets, evaluation,
sampling) run the network without dropout, as the authors' guidance target does
(Gsunshine/meanflow at d70cb55, meanflow.py:171-189, ``train=False``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: the key of the per-example seeds in a step's draws
DROPOUT_SEED = "dropout_seed"


def uses_dropout(config) -> bool:
    """Whether the configured backbone drops units (its options have ``dropout > 0``)."""
    return getattr(config.model.options, "dropout", 0.0) > 0


def with_dropout_seeds(draws: dict, config, seed: int, step: int, batch_size: int) -> dict:
    """``draws`` plus one seed per example when the backbone uses dropout. The seeds come from
    their own stream (``[seed, 6, step]``), so turning dropout on changes no other draw."""
    if not uses_dropout(config):
        return draws
    seeds = np.random.default_rng([seed, 6, step]).integers(0, 2 ** 31, batch_size, dtype=np.int64)
    return {**draws, DROPOUT_SEED: seeds}


def dropout_arguments(draws: dict, rows: slice = slice(None)) -> dict[str, Any]:
    """The keyword arguments that give a network call the seeds of the batch rows ``rows``:
    none when the step draws no seeds, so backbones without dropout need not accept them."""
    seeds = draws.get(DROPOUT_SEED)
    return {} if seeds is None else {DROPOUT_SEED: seeds[rows]}
