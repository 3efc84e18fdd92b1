"""The flow-matching loss, written once against a backend's op table (:mod:`toolkit.ops`)."""

from __future__ import annotations

from toolkit.dropout import dropout_arguments


class FlowMatching:
    """``E || u(z_t, t, t) - v ||^2`` with ``z_t = (1 - t) x + t e`` and ``v = e - x``."""

    def __init__(self, options, spec, ops):
        self.options, self.spec, self.ops = options, spec, ops

    def regression(self, model, x, y, draws, noise):
        ops, t = self.ops, draws["t"]
        z, v = ops.interpolate(x, noise, t)
        y = ops.with_null_labels(y, draws["drop"], self.spec.num_classes)
        return ops.batched(model)(z, t, t, y, **dropout_arguments(draws)), v

    def loss(self, model, x, y, draws, noise):
        u, v = self.regression(model, x, y, draws, noise)
        error = self.ops.squared_error(u, v)
        weighted = error * draws["weight"] if "weight" in draws else error
        return weighted.mean(), {"mse": self.ops.stop_gradient(error).mean()}
