"""iMF's loss in JAX (the formulas are in :mod:`toolkit_imf.plugin`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from toolkit.backends.jax.ops import (average_velocity_loss, batched, expand, interpolate, squared_error,
                                      with_null_labels)
from toolkit.dropout import dropout_arguments


class ImprovedMeanFlow:
    def __init__(self, options, spec):
        self.options, self.spec = options, spec

    def guidance(self, t, draws):
        """``(own, tangent, null, scale)``, as the torch implementation's."""
        omega, t_min, t_max = draws["omega"], draws["t_min"], draws["t_max"]
        w = jnp.where((t >= t_min) & (t <= t_max), omega, jnp.ones_like(omega))
        whole = lambda w_: jnp.stack([1 - 1 / w_, jnp.zeros_like(w_), jnp.ones_like(w_)], 1)  # noqa: E731
        scale = jnp.where(draws["drop"], jnp.zeros_like(w), 1 - 1 / w)
        return jnp.stack([1 - 1 / omega, t_min, t_max], 1), whole(w), whole(jnp.ones_like(w)), scale

    def regression(self, model, x, y, draws, noise):
        """``(V, sg(v_g))``: the compound function, with its gradient through u only, and its target."""
        t, r, drop = draws["t"], draws["r"], draws["drop"]
        z, v = interpolate(x, noise, t)
        y = with_null_labels(y, drop, self.spec.num_classes)
        n = self.options.averaged(len(t))  # the leading pairs, where r may be below t
        head = lambda a: None if a is None else a[:n]  # noqa: E731
        tail = lambda a: None if a is None else a[n:]  # noqa: E731
        if self.options.guidance is None:
            own = None
            v_model = batched(model)(z[:n], t[:n], t[:n], head(y), None) if n else None
            target = v
        else:
            own, tangent, null, scale = self.guidance(t, draws)
            v_model = batched(model)(z, t, t, y, tangent)
            v_null = batched(model)(z, t, t, jnp.full_like(y, self.spec.num_classes), null)
            target = v + expand(scale, v) * (v_model - v_null)
        v_model, target = jax.lax.stop_gradient((v_model, target))
        if n == 0:
            return batched(model)(z, t, r, y, own, **dropout_arguments(draws)), target
        # the JVP's primal output is the prediction itself (with its gradient); the derivative is not
        seeds = dropout_arguments(draws, slice(0, n))
        u, dudt = jax.jvp(lambda z_, t_, r_: batched(model)(z_, t_, r_, head(y), head(own), **seeds), (z[:n], t[:n], r[:n]),
                          (v_model[:n], jnp.ones_like(t[:n]), jnp.zeros_like(r[:n])))
        prediction = u + expand(t[:n] - r[:n], v) * jax.lax.stop_gradient(dudt)
        if n < len(t):
            prediction = jnp.concatenate([prediction, batched(model)(z[n:], t[n:], r[n:], tail(y), tail(own),
                                                                   **dropout_arguments(draws, slice(n, None)))])
        return prediction, target

    def loss(self, model, x, y, draws, noise):
        prediction, target = self.regression(model, x, y, draws, noise)
        error = squared_error(prediction, target)
        return average_velocity_loss(error, draws, self.options.weight_power, self.options.weight_eps)
