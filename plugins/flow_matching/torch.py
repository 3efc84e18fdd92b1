"""Flow-matching loss in PyTorch."""

from __future__ import annotations

from toolkit.backends.torch.ops import interpolate, per_example_sum, with_null_labels


class FlowMatching:
    def __init__(self, options, spec):
        self.options, self.spec = options, spec

    def regression(self, model, x, y, draws, noise):
        t = draws["t"]
        z, v = interpolate(x, noise, t)
        return model(z, t, t, with_null_labels(y, draws["drop"], self.spec.num_classes)), v

    def loss(self, model, x, y, draws, noise):
        u, v = self.regression(model, x, y, draws, noise)
        error = per_example_sum((u - v) ** 2)
        weighted = error * draws["weight"] if "weight" in draws else error
        return weighted.mean(), {"mse": error.detach().mean()}
