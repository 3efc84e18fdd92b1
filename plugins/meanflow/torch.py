"""MeanFlow loss in PyTorch."""

from __future__ import annotations

import torch

from toolkit.backends.torch.jvp import jvp
from toolkit.backends.torch.ops import (average_velocity_loss, expand, interpolate, per_example_sum,
                                        with_null_labels)


class MeanFlow:
    def __init__(self, options, spec):
        self.options, self.spec = options, spec

    def guided_velocity(self, model, z, v, t, y, drop):
        """The velocity of the target, with classifier-free guidance folded in where it applies."""
        g = self.options.guidance
        if not (g.active and self.spec.conditional and y is not None):
            return v
        with torch.no_grad():
            u_cond = model(z, t, t, y)
            u_null = model(z, t, t, torch.full_like(y, self.spec.num_classes))
        guided = g.omega * v + g.kappa * u_cond + (1 - g.omega - g.kappa) * u_null
        applies = (t >= g.t_min) & (t <= g.t_max) & ~drop
        return torch.where(expand(applies, v), guided, v)

    def target(self, model, z, t, r, y, v):
        """``(u, sg(u_tgt))``: the prediction with its graph, and the MeanFlow target.

        The prediction is a normal forward; the JVP runs without a graph (the authors'
        eager recipe: SPEC.md section 2a), replaying the same random state so that
        dropout masks agree.
        """
        state = torch.get_rng_state()
        u = model(z, t, r, y)
        torch.set_rng_state(state)
        with torch.no_grad():
            _, dudt = jvp(lambda z_, t_, r_: model(z_, t_, r_, y), (z, t, r),
                          (v, torch.ones_like(t), torch.zeros_like(r)), self.options.jvp)
            return u, v - expand(t - r, v) * dudt

    def loss(self, model, x, y, draws, noise):
        o = self.options
        t, r, drop = draws["t"], draws["r"], draws["drop"]
        z, v = interpolate(x, noise, t)
        v = self.guided_velocity(model, z, v, t, y, drop)
        u, u_tgt = self.target(model, z, t, r, with_null_labels(y, drop, self.spec.num_classes), v)
        error = per_example_sum((u - u_tgt) ** 2)
        return average_velocity_loss(error, draws, o.weight_power, o.weight_eps)
