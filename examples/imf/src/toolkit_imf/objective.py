"""iMF's loss, written once against the running backend's op table (the formulas are in
:mod:`toolkit_imf.plugin`)."""

from __future__ import annotations

from toolkit.api import dropout_arguments


def rows_of(a, rows: slice):
    return None if a is None else a[rows]


class ImprovedMeanFlow:
    def __init__(self, options, spec, ops):
        self.options, self.spec, self.ops = options, spec, ops

    def guidance(self, t, draws):
        """``(own, tangent, null, scale)``: the conditions of the prediction (the drawn omega and
        interval), of the velocity that serves as tangent and guided target (omega inside the
        interval, else 1, on [0, 1]), of the unguided null-class velocity, and the weight
        ``1 - 1/w`` of the guidance term (0 where the label was dropped)."""
        ops = self.ops
        omega, t_min, t_max = draws["omega"], draws["t_min"], draws["t_max"]
        w = ops.where((t >= t_min) & (t <= t_max), omega, ops.ones_like(omega))
        whole = lambda w_: ops.stack([1 - 1 / w_, ops.zeros_like(w_), ops.ones_like(w_)], 1)  # noqa: E731
        scale = ops.where(draws["drop"], ops.zeros_like(w), 1 - 1 / w)
        return ops.stack([1 - 1 / omega, t_min, t_max], 1), whole(w), whole(ops.ones_like(w)), scale

    def regression(self, model, x, y, draws, noise):
        """``(V, sg(v_g))``: the compound function, with its gradient through u only, and its target."""
        ops = self.ops
        t, r, drop = draws["t"], draws["r"], draws["drop"]
        z, v = ops.interpolate(x, noise, t)
        y = ops.with_null_labels(y, drop, self.spec.num_classes)
        n = self.options.averaged(len(t))  # the leading pairs, where r may be below t
        net = ops.batched(model)
        if self.options.guidance is None:
            own = None
            v_model = ops.without_gradient(net, z[:n], t[:n], t[:n], rows_of(y, slice(0, n)), None) if n else None
            target = v
        else:
            own, tangent, null, scale = self.guidance(t, draws)
            v_model = ops.without_gradient(net, z, t, t, y, tangent)
            v_null = ops.without_gradient(net, z, t, t, ops.full_like(y, self.spec.num_classes), null)
            target = v + ops.expand(scale, v) * (v_model - v_null)

        def network(rows):
            y_, own_, masks = rows_of(y, rows), rows_of(own, rows), dropout_arguments(draws, rows)
            return lambda z_, t_, r_: net(z_, t_, r_, y_, own_, **masks)

        if n == 0:
            return network(slice(None))(z, t, r), target
        u, dudt = ops.prediction_and_jvp(network, (z, t, r), (v_model[:n], ops.ones_like(t[:n]), ops.zeros_like(r[:n])),
                                         n, model=model)
        step = ops.expand(t[:n] - r[:n], v) * dudt
        return u + (ops.concatenate([step, ops.zeros_like(v[n:])]) if n < len(t) else step), target

    def loss(self, model, x, y, draws, noise):
        prediction, target = self.regression(model, x, y, draws, noise)
        error = self.ops.squared_error(prediction, target)
        return self.ops.average_velocity_loss(error, draws, self.options.weight_power, self.options.weight_eps)
