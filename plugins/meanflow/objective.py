"""The MeanFlow loss, written once against a backend's op table (:mod:`toolkit.ops`)."""

from __future__ import annotations

from toolkit.dropout import dropout_arguments


def rows_of(a, rows: slice):
    return None if a is None else a[rows]


class MeanFlow:
    """``E || u(z_t, t, r) - sg(u_tgt) ||^2``, adaptively weighted, with

        u_tgt = v - (t - r) (v . d_z u + d_t u)

    the bracket being one JVP of the network along ``(v, 1, 0)`` for ``(z, t, r)``."""

    def __init__(self, options, spec, ops):
        self.options, self.spec, self.ops = options, spec, ops

    def guided_velocity(self, model, z, v, t, y, drop):
        """The velocity of the target, with classifier-free guidance folded in where it applies:
        ``omega v + kappa u(z, t, t | y) + (1 - omega - kappa) u(z, t, t | null)``."""
        g, ops = self.options.guidance, self.ops
        if not (g.active and self.spec.conditional and y is not None):
            return v
        net = ops.batched(model)
        u_cond = ops.without_gradient(net, z, t, t, y)
        u_null = ops.without_gradient(net, z, t, t, ops.full_like(y, self.spec.num_classes))
        guided = g.omega * v + g.kappa * u_cond + (1 - g.omega - g.kappa) * u_null
        applies = (t >= g.t_min) & (t <= g.t_max) & ~drop
        return ops.where(ops.expand(applies, v), guided, v)

    def target(self, model, z, t, r, y, v, averaged: int | None = None, draws: dict | None = None,
               joint: bool | None = None):
        """``(u, sg(u_tgt))``: the prediction with its graph, and the MeanFlow target. Only the
        leading ``averaged`` pairs (all by default) can have r < t, so only they take the JVP;
        elsewhere the target is v. The network sees each example's dropout seeds from ``draws``,
        so the prediction and the JVP share the masks. ``joint``: see
        :meth:`toolkit.ops.Ops.prediction_and_jvp`."""
        ops, draws = self.ops, draws or {}
        n = len(t) if averaged is None else averaged
        net = ops.batched(model)

        def network(rows):
            y_, masks = rows_of(y, rows), dropout_arguments(draws, rows)
            return lambda z_, t_, r_: net(z_, t_, r_, y_, **masks)

        if n == 0:
            return network(slice(None))(z, t, r), v
        u, dudt = ops.prediction_and_jvp(network, (z, t, r), (v[:n], ops.ones_like(t[:n]), ops.zeros_like(r[:n])),
                                         n, model=model, joint=joint)
        target = v[:n] - ops.expand(t[:n] - r[:n], v) * dudt
        return u, ops.concatenate([target, v[n:]]) if n < len(t) else target

    def regression(self, model, x, y, draws, noise):
        ops = self.ops
        t, r, drop = draws["t"], draws["r"], draws["drop"]
        z, v = ops.interpolate(x, noise, t)
        v = self.guided_velocity(model, z, v, t, y, drop)
        return self.target(model, z, t, r, ops.with_null_labels(y, drop, self.spec.num_classes), v,
                           averaged=self.options.averaged(len(t)), draws=draws)

    def loss(self, model, x, y, draws, noise):
        u, u_tgt = self.regression(model, x, y, draws, noise)
        error = self.ops.squared_error(u, u_tgt)
        return self.ops.average_velocity_loss(error, draws, self.options.weight_power, self.options.weight_eps)
