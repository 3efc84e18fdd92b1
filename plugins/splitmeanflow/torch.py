"""SplitMeanFlow loss in PyTorch."""

from __future__ import annotations

import torch

from toolkit.backends.torch.ops import (average_velocity_loss, expand, interpolate, squared_error,
                                        with_null_labels)
from toolkit.dropout import dropout_arguments



class SplitMeanFlow:
    def __init__(self, options, spec):
        self.options, self.spec = options, spec

    @torch.no_grad()
    def target(self, model, z, t, r, y, v, lam, averaged: int | None = None):
        """sg(lam u(z_s, r, s) + (1 - lam) u(z_t, s, t)), and v where r = t. Only the leading
        ``averaged`` pairs (all by default) can have r < t and take the extra forward passes,
        which run without dropout (a target, as the guidance target of MeanFlow)."""
        n = len(t) if averaged is None else averaged
        z_, t_, r_, v_, lam_ = z[:n], t[:n], r[:n], v[:n], expand(lam[:n], z)
        y_ = None if y is None else y[:n]
        s = r_ + lam[:n] * (t_ - r_)
        u_st = model(z_, t_, s, y_)
        u_rs = model(z_ - expand(t_ - s, z) * u_st, s, r_, y_)
        split = torch.where(expand(r_ == t_, z), v_, lam_ * u_rs + (1 - lam_) * u_st)
        return torch.cat([split, v[n:]])

    def regression(self, model, x, y, draws, noise):
        t, r = draws["t"], draws["r"]
        z, v = interpolate(x, noise, t)
        y = with_null_labels(y, draws["drop"], self.spec.num_classes)
        u_tgt = self.target(model, z, t, r, y, v, draws["lam"], averaged=self.options.averaged(len(t)))
        return model(z, t, r, y, **dropout_arguments(draws)), u_tgt

    def loss(self, model, x, y, draws, noise):
        u, u_tgt = self.regression(model, x, y, draws, noise)
        error = squared_error(u, u_tgt)
        return average_velocity_loss(error, draws, self.options.weight_power, self.options.weight_eps)
