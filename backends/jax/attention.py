"""Multi-head attention for one example, with its JVP from JAX's autodiff.

Written out rather than ``jax.nn.dot_product_attention``, which computes the softmax in
float32 even when x64 is on: the explicit form keeps float64 parity
with the torch backend. Two details make it fast on XLA's CPU backend (measured with a
batch of 64 x 256 tokens x 4 heads: forward 7.7x and JVP 2x faster than the plain
``softmax(q k^T) v``): the row maximum subtracted for stability is under stop-gradient
(softmax does not depend on it, so this is exact and spares its derivative), and the
normalisation divides the (tokens, head_dim) output instead of the (tokens, tokens) weights.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def attention(q, k, v):
    """(tokens, heads, head_dim) x3 -> (tokens, heads, head_dim)."""
    q, k, v = (a.transpose(1, 0, 2) for a in (q, k, v))
    scores = (q / math.sqrt(q.shape[-1])) @ k.transpose(0, 2, 1)
    weights = jnp.exp(scores - jax.lax.stop_gradient(scores.max(-1, keepdims=True)))
    return ((weights @ v) / weights.sum(-1, keepdims=True)).transpose(1, 0, 2)
