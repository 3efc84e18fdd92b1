"""SplitMeanFlow loss in JAX."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from toolkit.backends.jax.ops import (average_velocity_loss, batched, expand, interpolate, per_example_sum,
                                      with_null_labels)



class SplitMeanFlow:
    def __init__(self, options, spec):
        self.options, self.spec = options, spec

    def target(self, model, z, t, r, y, v, lam):
        """sg(lam u(z_s, r, s) + (1 - lam) u(z_t, s, t)), and v where r = t."""
        s = r + lam * (t - r)
        u_st = batched(model)(z, t, s, y)
        z_s = z - expand(t - s, z) * u_st
        u_rs = batched(model)(z_s, s, r, y)
        lam_ = expand(lam, z)
        return jax.lax.stop_gradient(jnp.where(expand(r == t, z), v, lam_ * u_rs + (1 - lam_) * u_st))

    def loss(self, model, x, y, draws, noise):
        o = self.options
        t, r, drop = draws["t"], draws["r"], draws["drop"]
        z, v = interpolate(x, noise, t)
        y = with_null_labels(y, drop, self.spec.num_classes)
        u_tgt = self.target(model, z, t, r, y, v, draws["lam"])
        error = per_example_sum((batched(model)(z, t, r, y) - u_tgt) ** 2)
        return average_velocity_loss(error, draws, o.weight_power, o.weight_eps)
