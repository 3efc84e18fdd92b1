"""iMF's loss in PyTorch (the formulas are in :mod:`toolkit_imf.plugin`)."""

from __future__ import annotations

import torch

from toolkit.backends.torch.jvp import jvp
from toolkit.backends.torch.ops import (average_velocity_loss, expand, full_precision, interpolate, squared_error,
                                        with_null_labels)
from toolkit.dropout import dropout_arguments


class ImprovedMeanFlow:
    def __init__(self, options, spec):
        self.options, self.spec = options, spec

    def guidance(self, t, draws):
        """``(own, tangent, null, scale)``: the conditions of the prediction (the drawn omega and
        interval), of the velocity that serves as tangent and guided target (omega inside the
        interval, else 1, on [0, 1]), of the unguided null-class velocity, and the weight
        ``1 - 1/w`` of the guidance term (0 where the label was dropped)."""
        omega, t_min, t_max = draws["omega"], draws["t_min"], draws["t_max"]
        w = torch.where((t >= t_min) & (t <= t_max), omega, torch.ones_like(omega))
        whole = lambda w_: torch.stack([1 - 1 / w_, torch.zeros_like(w_), torch.ones_like(w_)], 1)  # noqa: E731
        scale = torch.where(draws["drop"], torch.zeros_like(w), 1 - 1 / w)
        return torch.stack([1 - 1 / omega, t_min, t_max], 1), whole(w), whole(torch.ones_like(w)), scale

    def regression(self, model, x, y, draws, noise):
        """``(V, sg(v_g))``: the compound function, with its graph through u only, and its target."""
        t, r, drop = draws["t"], draws["r"], draws["drop"]
        z, v = interpolate(x, noise, t)
        y = with_null_labels(y, drop, self.spec.num_classes)
        n = self.options.averaged(len(t))  # the leading pairs, where r may be below t
        with torch.no_grad():
            if self.options.guidance is None:
                own = None
                v_model = model(z[:n], t[:n], t[:n], None if y is None else y[:n]) if n else None
                target = v
            else:
                own, tangent, null, scale = self.guidance(t, draws)
                v_model = model(z, t, t, y, tangent)
                v_null = model(z, t, t, torch.full_like(y, self.spec.num_classes), null)
                target = v + expand(scale, v) * (v_model - v_null)
        u = model(z, t, r, y, own, **dropout_arguments(draws))
        if n == 0:
            return u, target
        head = lambda a: None if a is None else a[:n]  # noqa: E731
        seeds = dropout_arguments(draws, slice(0, n))  # the prediction's masks (toolkit.dropout)
        with torch.no_grad(), full_precision(z):
            _, dudt = jvp(lambda z_, t_, r_: model(z_, t_, r_, head(y), head(own), **seeds), (z[:n], t[:n], r[:n]),
                          (v_model[:n], torch.ones_like(t[:n]), torch.zeros_like(r[:n])))
        step = torch.cat([expand(t[:n] - r[:n], v) * dudt, torch.zeros_like(v[n:])])
        return u + step, target

    def loss(self, model, x, y, draws, noise):
        prediction, target = self.regression(model, x, y, draws, noise)
        error = squared_error(prediction, target)
        return average_velocity_loss(error, draws, self.options.weight_power, self.options.weight_eps)
