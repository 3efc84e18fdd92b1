"""The SplitMeanFlow loss, written once against a backend's op table (:mod:`toolkit.ops`)."""

from __future__ import annotations

from toolkit.dropout import dropout_arguments


class SplitMeanFlow:
    """``E || u(z_t, t, r) - sg(lam u(z_s, s, r) + (1 - lam) u(z_t, t, s)) ||^2`` for r < t, with
    ``s = r + lam (t - r)`` and ``z_s = z_t - (t - s) u(z_t, t, s)``; the target is v where r = t.
    (The network's arguments are ``(z, t, r)``: the later time first.)"""

    def __init__(self, options, spec, ops):
        self.options, self.spec, self.ops = options, spec, ops

    def target(self, model, z, t, r, y, v, lam, averaged: int | None = None):
        """The split target, without a graph. Only the leading ``averaged`` pairs (all by
        default) can have r < t and take the two extra forward passes, which run without
        dropout (a target, as MeanFlow's guidance target)."""
        ops = self.ops
        n = len(t) if averaged is None else averaged
        if n == 0:
            return v
        net = ops.batched(model)

        def split(z, t, r, y, v, lam):
            s = r + lam * (t - r)
            u_ts = net(z, t, s, y)
            u_sr = net(z - ops.expand(t - s, z) * u_ts, s, r, y)
            lam_ = ops.expand(lam, z)
            return ops.where(ops.expand(r == t, z), v, lam_ * u_sr + (1 - lam_) * u_ts)

        head = ops.without_gradient(split, z[:n], t[:n], r[:n], None if y is None else y[:n], v[:n], lam[:n])
        return ops.concatenate([head, v[n:]]) if n < len(t) else head

    def regression(self, model, x, y, draws, noise):
        ops = self.ops
        t, r = draws["t"], draws["r"]
        z, v = ops.interpolate(x, noise, t)
        y = ops.with_null_labels(y, draws["drop"], self.spec.num_classes)
        u_tgt = self.target(model, z, t, r, y, v, draws["lam"], averaged=self.options.averaged(len(t)))
        return ops.batched(model)(z, t, r, y, **dropout_arguments(draws)), u_tgt

    def loss(self, model, x, y, draws, noise):
        u, u_tgt = self.regression(model, x, y, draws, noise)
        error = self.ops.squared_error(u, u_tgt)
        return self.ops.average_velocity_loss(error, draws, self.options.weight_power, self.options.weight_eps)
