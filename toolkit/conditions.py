"""What a network is conditioned on besides the data, for backbone authors: its times and the
extra conditioning scalars of ``DataSpec.conditions``."""

from __future__ import annotations

from typing import Any, Literal

from toolkit.interfaces import DataSpec


#: The times a backbone embeds. ``t_and_gap``: t and the gap t - r, as the MeanFlow paper and its
#: official code (Gsunshine/meanflow at d70cb55, meanflow.py:226-227). ``t_and_r``: t and r.
#: ``gap``: the gap alone, as the official iMF network (Lyy-iiis/imeanflow at bf60cd7,
#: models/imfDiT.py:342-344, "We don't explicitly condition on time t, only on h = t - r").
TimeInputs = Literal["t_and_gap", "t_and_r", "gap"]


def network_times(t: Any, r: Any, time_inputs: TimeInputs) -> tuple:
    """``(first, second)``: what a backbone's t-embedder and its second embedder see.

    ``first`` is None for ``gap``: such a network has no t-embedder, so a checkpoint of it holds
    no weight that training never touches.
    """
    if time_inputs == "t_and_gap":
        return t, t - r
    if time_inputs == "t_and_r":
        return t, r
    if time_inputs == "gap":
        return None, t - r
    raise ValueError(f"time_inputs must be one of t_and_gap, t_and_r, gap; got {time_inputs!r}")


def time_input_count(time_inputs: TimeInputs) -> int:
    """How many time embeddings a backbone built for ``time_inputs`` takes (1 or 2)."""
    return 1 if time_inputs == "gap" else 2


def embedded_times(t_embedder, second_embedder, t: Any, r: Any, time_inputs: TimeInputs) -> Any:
    """The sum of the time embeddings a backbone adds to its conditioning vector."""
    first, second = network_times(t, r, time_inputs)
    if first is None:
        return second_embedder(second)
    return t_embedder(first) + second_embedder(second)


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
