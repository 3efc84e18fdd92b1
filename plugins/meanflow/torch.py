"""MeanFlow loss in PyTorch."""

from __future__ import annotations

import torch

from toolkit.backends.torch.jvp import jvp
from toolkit.backends.torch.ops import (average_velocity_loss, expand, interpolate, per_example_sum,
                                        with_null_labels)


def has_dropout(model: torch.nn.Module) -> bool:
    return isinstance(model, torch.nn.Module) and model.training and any(
        isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


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

    def target(self, model, z, t, r, y, v, averaged: int | None = None, joint: bool | None = None):
        """``(u, sg(u_tgt))``: the prediction with its graph, and the MeanFlow target.

        Only the leading ``averaged`` pairs (all by default) can have r < t, so only they need
        the JVP: elsewhere the target is v. Eager (the authors' recipe, SPEC.md section 2a):
        a normal forward for the prediction and the JVP without a graph, replaying the random
        state so that dropout masks agree. Under ``torch.compile`` (or ``joint=True``): one
        JVP whose primal output is the prediction, which compiles to a single graph.
        """
        n = len(t) if averaged is None else averaged
        head = lambda a: None if a is None else a[:n]  # noqa: E731
        tail = lambda a: None if a is None else a[n:]  # noqa: E731
        fn = lambda z_, t_, r_: model(z_, t_, r_, head(y))  # noqa: E731
        tangents = (v[:n], torch.ones_like(t[:n]), torch.zeros_like(r[:n]))
        if torch.compiler.is_compiling() if joint is None else joint:
            u, dudt = jvp(fn, (z[:n], t[:n], r[:n]), tangents)
            if n < len(t):
                u = torch.cat([u, model(z[n:], t[n:], r[n:], tail(y))])
            return u, torch.cat([(v[:n] - expand(t[:n] - r[:n], v) * dudt).detach(), v[n:]])
        state = torch.get_rng_state() if has_dropout(model) else None
        u = model(z, t, r, y)
        if state is not None:
            torch.set_rng_state(state)
        if n == 0:
            return u, v
        with torch.no_grad():
            _, dudt = jvp(fn, (z[:n], t[:n], r[:n]), tangents)
            return u, torch.cat([v[:n] - expand(t[:n] - r[:n], v) * dudt, v[n:]])

    def regression(self, model, x, y, draws, noise):
        t, r, drop = draws["t"], draws["r"], draws["drop"]
        z, v = interpolate(x, noise, t)
        v = self.guided_velocity(model, z, v, t, y, drop)
        return self.target(model, z, t, r, with_null_labels(y, drop, self.spec.num_classes), v,
                           averaged=self.options.averaged(len(t)))

    def loss(self, model, x, y, draws, noise):
        u, u_tgt = self.regression(model, x, y, draws, noise)
        error = per_example_sum((u - u_tgt) ** 2)
        return average_velocity_loss(error, draws, self.options.weight_power, self.options.weight_eps)
