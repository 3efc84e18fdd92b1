"""The op table of the JAX backend (:class:`toolkit.ops.Ops`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from toolkit.ops import Ops


class JaxOps(Ops):
    name = "jax"

    def batched(self, model):
        """A one-example equinox backbone, called on a batch."""
        return jax.vmap(model)

    def stop_gradient(self, x):
        return jax.lax.stop_gradient(x)

    def without_gradient(self, fn, *args, **kwargs):
        return jax.lax.stop_gradient(fn(*args, **kwargs))

    def prediction_and_jvp(self, network, primals, tangents, n, *, model=None, joint=None):
        """Always joint: ``jax.jvp``'s primal output is the prediction on the leading rows."""
        u, du = jax.jvp(network(slice(0, n)), tuple(p[:n] for p in primals), tuple(tangents))
        if n < len(primals[0]):
            u = jnp.concatenate([u, network(slice(n, None))(*(p[n:] for p in primals))])
        return u, jax.lax.stop_gradient(du)

    def where(self, condition, x, y):
        return jnp.where(condition, x, y)

    def concatenate(self, arrays):
        return jnp.concatenate(list(arrays))

    def stack(self, arrays, axis=0):
        return jnp.stack(list(arrays), axis)

    def full_like(self, x, value):
        return jnp.full_like(x, value)

    def cast(self, x, like):
        return x.astype(like.dtype)

    def maximum(self, x, value):
        return jnp.maximum(x, value)


OPS = JaxOps()
