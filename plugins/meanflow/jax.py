"""MeanFlow loss in JAX."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from toolkit.backends.jax.ops import (average_velocity_loss, batched, expand, interpolate, per_example_sum,
                                      with_null_labels)



class MeanFlow:
    def __init__(self, options, spec):
        self.options, self.spec = options, spec

    def guided_velocity(self, model, z, v, t, y, drop):
        """The velocity of the target, with classifier-free guidance folded in where it applies."""
        g = self.options.guidance
        if not (g.active and self.spec.conditional and y is not None):
            return v
        u_cond = batched(model)(z, t, t, y)
        u_null = batched(model)(z, t, t, jnp.full_like(y, self.spec.num_classes))
        guided = jax.lax.stop_gradient(g.omega * v + g.kappa * u_cond + (1 - g.omega - g.kappa) * u_null)
        applies = (t >= g.t_min) & (t <= g.t_max) & ~drop
        return jnp.where(expand(applies, v), guided, v)

    def target(self, model, z, t, r, y, v):
        """``(u, sg(u_tgt))``: the JVP's primal output is the prediction itself."""
        u, dudt = jax.jvp(lambda z_, t_, r_: batched(model)(z_, t_, r_, y), (z, t, r),
                          (v, jnp.ones_like(t), jnp.zeros_like(r)))
        return u, jax.lax.stop_gradient(v - expand(t - r, v) * dudt)

    def loss(self, model, x, y, draws, noise):
        o = self.options
        t, r, drop = draws["t"], draws["r"], draws["drop"]
        z, v = interpolate(x, noise, t)
        v = self.guided_velocity(model, z, v, t, y, drop)
        u, u_tgt = self.target(model, z, t, r, with_null_labels(y, drop, self.spec.num_classes), v)
        error = per_example_sum((u - u_tgt) ** 2)
        return average_velocity_loss(error, draws, o.weight_power, o.weight_eps)
