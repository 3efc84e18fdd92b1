"""Flow-matching loss in JAX."""

from __future__ import annotations

import jax

from toolkit.backends.jax.ops import batched, per_example_sum, with_null_labels


class FlowMatching:
    def __init__(self, options, spec):
        self.options, self.spec = options, spec

    def loss(self, model, x, y, draws, noise):
        t = draws["t"]
        t_ = t.reshape(-1, *([1] * (x.ndim - 1)))
        z = (1 - t_) * x + t_ * noise
        v = noise - x
        u = batched(model)(z, t, t, with_null_labels(y, draws["drop"], self.spec.num_classes))
        loss = per_example_sum((u - v) ** 2).mean()
        return loss, {"mse": jax.lax.stop_gradient(loss)}
