"""Equinox weights by name: dotted pytree paths that match the torch ``state_dict`` keys."""

from __future__ import annotations

from typing import Mapping

import equinox as eqx
import jax
import numpy as np


def _name(path) -> str:
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        else:
            parts.append(str(key))
    return ".".join(parts)


def named_arrays(model, copy: bool = True) -> dict[str, np.ndarray]:
    """Every floating-point array of ``model`` by its dotted path. ``copy``: NumPy copies; else
    views of the buffers where JAX allows it (on the CPU), which must be gone before the next
    step: a live view of a buffer that the step donates blocks the donation."""
    leaves = jax.tree_util.tree_flatten_with_path(eqx.filter(model, eqx.is_inexact_array))[0]
    return {_name(path): np.array(leaf, copy=True) if copy else np.asarray(leaf) for path, leaf in leaves}


def load_named_arrays(model, arrays: Mapping[str, np.ndarray]):
    """``model`` with every floating-point array replaced from ``arrays`` (reshaped to fit,
    e.g. a torch conv bias (C,) into equinox's (C, 1, 1))."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    missing = sorted(_name(path) for path, _ in leaves if _name(path) not in arrays)
    if missing:
        raise ValueError(f"weights missing for: {', '.join(missing)}")
    new = []
    for path, leaf in leaves:
        value = np.asarray(arrays[_name(path)])
        if value.size != leaf.size:
            raise ValueError(f"{_name(path)}: got shape {value.shape}, expected {leaf.shape}")
        new.append(jax.numpy.array(value.reshape(leaf.shape), dtype=leaf.dtype, copy=True))  # never alias
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, new), static)
