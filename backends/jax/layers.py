"""JAX building blocks of the built-in backbones (one example at a time): the time embedding and
seeded dropout."""

from __future__ import annotations

import math

import jax.numpy as jnp

from toolkit.backends.masks import DROPOUT_HASH, keep_threshold


def sinusoidal_embedding(t, dim: int, max_period: float = 10000.0):
    """() -> (dim,): ``[cos(t f), sin(t f)]`` with ``f_i = max_period^(-i / (dim/2))``."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.result_type(t)) / half)
    angles = t * freqs
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def _mix(h):
    h = h ^ (h >> 16)
    h = h * jnp.uint32(DROPOUT_HASH[1])
    h = h ^ (h >> 13)
    h = h * jnp.uint32(DROPOUT_HASH[2])
    return h ^ (h >> 16)


def dropout(h, rate: float, seed, site: int):
    """Inverted dropout of one example's ``h``, its mask a pure function of the example's
    integer ``seed``, the layer's ``site`` number and the element's position: the masks of the
    torch backend (see :data:`DROPOUT_HASH`), so the two backends drop the same units and a JVP
    sees the mask of its primal. ``seed`` None or rate 0: no dropout."""
    if seed is None or rate == 0:
        return h
    base = _mix(seed.astype(jnp.uint32) + jnp.uint32(site) * jnp.uint32(DROPOUT_HASH[0]))
    position = jnp.arange(h.size, dtype=jnp.uint32).reshape(h.shape)
    bits = _mix((position * jnp.uint32(DROPOUT_HASH[0])) ^ base)
    keep = (bits >> 8) < jnp.uint32(keep_threshold(rate))
    return h * keep.astype(h.dtype) / (1 - rate)
