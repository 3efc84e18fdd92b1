"""The MLP backbone in JAX/Equinox (one example; batch with ``jax.vmap``)."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from toolkit.backends.jax.layers import sinusoidal_embedding
from toolkit.conditions import condition_columns, network_times, time_input_count


class MLP(eqx.Module):
    layers: list
    class_embedding: eqx.nn.Embedding | None
    options: object = eqx.field(static=True)
    spec: object = eqx.field(static=True)

    def __init__(self, options, spec, *, key):
        self.options, self.spec = options, spec
        dim = math.prod(spec.shape)
        # the data, an embedding per time and per condition, and the label's
        width = dim + (time_input_count(options.time_inputs) + len(spec.conditions) + spec.conditional) * options.time_embed_dim
        keys = jax.random.split(key, options.depth + 2)
        self.class_embedding = (eqx.nn.Embedding(spec.num_classes + 1, options.time_embed_dim, key=keys[-1])
                                if spec.conditional else None)
        sizes = [width] + [options.hidden] * options.depth + [dim]
        self.layers = [eqx.nn.Linear(a, b, key=k) for a, b, k in zip(sizes[:-1], sizes[1:], keys)]

    def __call__(self, x, t, r, y=None, conditions=None, *, key=None):
        o = self.options
        parts = [x.reshape(-1),
                 *(sinusoidal_embedding(time * o.time_scale, o.time_embed_dim)
                   for time in network_times(t, r, o.time_inputs) if time is not None)]
        parts += [sinusoidal_embedding(column * o.time_scale, o.time_embed_dim)
                  for column in condition_columns(self.spec, conditions)]
        if self.class_embedding is not None:
            parts.append(self.class_embedding(self.spec.num_classes if y is None else y))
        h = jnp.concatenate(parts)
        for layer in self.layers[:-1]:
            h = jax.nn.silu(layer(h))
        return self.layers[-1](h).reshape(x.shape)
