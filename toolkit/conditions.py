"""Extra conditioning scalars of a network (``DataSpec.conditions``), for backbone authors."""

from __future__ import annotations

from typing import Any

from toolkit.interfaces import DataSpec


def condition_columns(spec: DataSpec, conditions: Any) -> list:
    """``[conditions[..., i] for each name of spec.conditions]``: one value per example each.

    Array indexing only, so every backend's backbones share it (torch passes (B, K) batches,
    JAX one example's (K,)). A count that does not match ``spec.conditions`` is an error, not
    a silently unconditioned network.
    """
    given = 0 if conditions is None else conditions.shape[-1]
    if given != len(spec.conditions):
        raise ValueError(f"the network is built for {len(spec.conditions)} conditions "
                         f"({', '.join(spec.conditions) or 'none'}), but was called with {given}")
    return [conditions[..., i] for i in range(given)]


def embedded_conditions(embedders, spec: DataSpec, conditions: Any) -> Any:
    """The sum of ``embedders[i]`` applied to condition ``i``: what a backbone adds to its
    conditioning vector (0 when the network takes no conditions)."""
    return sum(embed(column) for embed, column in zip(embedders, condition_columns(spec, conditions)))
