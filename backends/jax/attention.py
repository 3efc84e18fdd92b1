"""Multi-head attention for one example, with its JVP from JAX's autodiff.

Written out rather than ``jax.nn.dot_product_attention``, which computes the softmax in
float32 even when x64 is on (SPEC.md section 7): the explicit form keeps float64 parity
with the torch backend. XLA fuses it on its own.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def attention(q, k, v):
    """(tokens, heads, head_dim) x3 -> (tokens, heads, head_dim)."""
    scores = jnp.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
    return jnp.einsum("hqk,khd->qhd", jax.nn.softmax(scores, axis=-1), v)
