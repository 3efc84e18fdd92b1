"""Flow-matching loss in PyTorch."""

from __future__ import annotations

from toolkit.backends.torch.ops import interpolate, squared_error, with_null_labels
from toolkit.dropout import dropout_arguments


class FlowMatching:
    def __init__(self, options, spec):
        self.options, self.spec = options, spec

    def regression(self, model, x, y, draws, noise):
        t = draws["t"]
        z, v = interpolate(x, noise, t)
        return model(z, t, t, with_null_labels(y, draws["drop"], self.spec.num_classes),
                     **dropout_arguments(draws)), v

    def loss(self, model, x, y, draws, noise):
        u, v = self.regression(model, x, y, draws, noise)
        error = squared_error(u, v)
        weighted = error * draws["weight"] if "weight" in draws else error
        return weighted.mean(), {"mse": error.detach().mean()}
