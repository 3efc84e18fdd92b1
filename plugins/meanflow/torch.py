"""MeanFlow loss in PyTorch."""

from __future__ import annotations

import torch

from toolkit.backends.torch.jvp import jvp
from toolkit.backends.torch.ops import (average_velocity_loss, expand, full_precision, interpolate, squared_error,
                                        with_null_labels)
from toolkit.dropout import dropout_arguments


def has_framework_dropout(model) -> bool:
    """Whether ``model`` has active ``torch.nn.Dropout`` layers, whose masks come from the
    framework's generator (a third-party backbone's; the built-in ones hash per-example seeds)."""
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

    def target(self, model, z, t, r, y, v, averaged: int | None = None, joint: bool | None = None,
               draws: dict | None = None):
        """``(u, sg(u_tgt))``: the prediction with its graph, and the MeanFlow target.

        Only the leading ``averaged`` pairs (all by default) can have r < t, so only they need
        the JVP: elsewhere the target is v. Eager: a normal forward for the prediction and the
        JVP without a graph (the authors' JAX recipe: SPEC.md section 2a). Under
        ``torch.compile``, with ``joint=True``, or with ``torch.nn.Dropout`` layers (whose masks
        only one call can share): one JVP whose primal output is the prediction, as the
        authors' PyTorch code (Gsunshine/py-meanflow at 1f6d72d, meanflow/models/meanflow.py:55).
        The built-in backbones' dropout masks follow the examples' seeds in ``draws``, so the
        two calls of the eager path see the same masks. The JVP runs in full precision under
        bf16 autocast, as the authors' (the same file, line 54).
        """
        draws = draws or {}
        n = len(t) if averaged is None else averaged
        head = lambda a: None if a is None else a[:n]  # noqa: E731
        tail = lambda a: None if a is None else a[n:]  # noqa: E731
        head_masks, tail_masks = dropout_arguments(draws, slice(0, n)), dropout_arguments(draws, slice(n, None))
        fn = lambda z_, t_, r_: model(z_, t_, r_, head(y), **head_masks)  # noqa: E731
        tangents = (v[:n], torch.ones_like(t[:n]), torch.zeros_like(r[:n]))
        if joint is None:
            joint = torch.compiler.is_compiling() or has_framework_dropout(model)
        if joint:
            with full_precision(z):
                u, dudt = jvp(fn, (z[:n], t[:n], r[:n]), tangents)
            if n < len(t):
                u = torch.cat([u, model(z[n:], t[n:], r[n:], tail(y), **tail_masks)])
            return u, torch.cat([(v[:n] - expand(t[:n] - r[:n], v) * dudt).detach(), v[n:]])
        u = model(z, t, r, y, **dropout_arguments(draws))
        if n == 0:
            return u, v
        with torch.no_grad(), full_precision(z):
            _, dudt = jvp(fn, (z[:n], t[:n], r[:n]), tangents)
            return u, torch.cat([v[:n] - expand(t[:n] - r[:n], v) * dudt, v[n:]])

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
