"""Small JAX building blocks shared by the built-in components (one example at a time)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from toolkit.backends.masks import DROPOUT_HASH, keep_threshold


def sinusoidal_embedding(t, dim: int, max_period: float = 10000.0):
    """() -> (dim,): ``[cos(t f), sin(t f)]`` with ``f_i = max_period^(-i / (dim/2))``."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.result_type(t)) / half)
    angles = t * freqs
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def squared_error(prediction, target):
    """(B,): each example's squared error ``||prediction - target||^2``.

    In the target's precision, as the torch backend (where bf16 autocast makes the network's
    output bfloat16).
    """
    return per_example_sum((prediction.astype(target.dtype) - target) ** 2)


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


def per_example_sum(x):
    """(B, ...) -> (B,): the sum over every non-batch dimension."""
    return x.reshape(x.shape[0], -1).sum(1)


def with_null_labels(y, drop, num_classes: int):
    """Labels with the dropped ones replaced by the null class ``num_classes``."""
    if y is None:
        return None
    return jnp.where(drop, num_classes, y)


def batched(model):
    """A one-example equinox backbone, called on a batch ``(x, t, r, y)``."""
    return jax.vmap(model)


def expand(t, like):
    """(B,) -> (B, 1, ..., 1), broadcastable against ``like``."""
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def interpolate(x, noise, t):
    """The linear path: ``z_t = (1 - t) x + t e`` and its conditional velocity ``v = e - x``."""
    t_ = expand(t, x)
    return (1 - t_) * x + t_ * noise, noise - x


def adaptive_weight(error, power: float, eps: float):
    """MeanFlow's adaptive weight ``sg(1 / (error + eps)^power)``; power 0 gives plain MSE."""
    return 1.0 / (jax.lax.stop_gradient(error) + eps) ** power


def masked_mean(values, mask):
    """Mean of ``values`` where ``mask``; 0 where the mask is empty."""
    mask = mask.astype(values.dtype)
    return (values * mask).sum() / jnp.maximum(mask.sum(), 1)


def average_velocity_loss(error, draws, power: float, eps: float):
    """The batch loss of the MeanFlow family from the per-example squared error: the adaptive
    weight, a schedule's per-example ``draws["weight"]`` if any, and the parts to log (the
    error where r = t, the flow-matching part, and where r < t)."""
    weighted = adaptive_weight(error, power, eps) * error
    if "weight" in draws:
        weighted = weighted * draws["weight"]
    error = jax.lax.stop_gradient(error)
    t, r = draws["t"], draws["r"]
    return weighted.mean(), {"mse": error.mean(), "mse_r_eq_t": masked_mean(error, r == t),
                             "mse_r_lt_t": masked_mean(error, r < t)}
