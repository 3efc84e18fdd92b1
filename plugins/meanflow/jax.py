"""MeanFlow loss in JAX."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from toolkit.backends.jax.ops import (average_velocity_loss, batched, expand, interpolate, squared_error,
                                      with_null_labels)
from toolkit.dropout import dropout_arguments


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

    def target(self, model, z, t, r, y, v, averaged: int | None = None, draws: dict | None = None):
        """``(u, sg(u_tgt))``: the JVP's primal output is the prediction itself. Only the
        leading ``averaged`` pairs (all by default) can have r < t and need the JVP; the rest
        take a plain forward and the target v. Dropout masks follow the seeds in ``draws``."""
        draws = draws or {}
        n = len(t) if averaged is None else averaged
        head = lambda a: None if a is None else a[:n]  # noqa: E731
        tail = lambda a: None if a is None else a[n:]  # noqa: E731
        if n == 0:
            return batched(model)(z, t, r, y, **dropout_arguments(draws)), v
        head_masks, tail_masks = dropout_arguments(draws, slice(0, n)), dropout_arguments(draws, slice(n, None))
        u, dudt = jax.jvp(lambda z_, t_, r_: batched(model)(z_, t_, r_, head(y), **head_masks),
                          (z[:n], t[:n], r[:n]), (v[:n], jnp.ones_like(t[:n]), jnp.zeros_like(r[:n])))
        target = v[:n] - expand(t[:n] - r[:n], v) * dudt
        if n < len(t):
            u = jnp.concatenate([u, batched(model)(z[n:], t[n:], r[n:], tail(y), **tail_masks)])
            target = jnp.concatenate([target, v[n:]])
        return u, jax.lax.stop_gradient(target)

    def regression(self, model, x, y, draws, noise):
        t, r, drop = draws["t"], draws["r"], draws["drop"]
        z, v = interpolate(x, noise, t)
        v = self.guided_velocity(model, z, v, t, y, drop)
        return self.target(model, z, t, r, with_null_labels(y, drop, self.spec.num_classes), v,
                           averaged=self.options.averaged(len(t)), draws=draws)

    def loss(self, model, x, y, draws, noise):
        u, u_tgt = self.regression(model, x, y, draws, noise)
        error = squared_error(u, u_tgt)
        return average_velocity_loss(error, draws, self.options.weight_power, self.options.weight_eps)
