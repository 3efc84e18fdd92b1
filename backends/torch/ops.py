"""The op table of the PyTorch backend (:class:`toolkit.ops.Ops`)."""

from __future__ import annotations

import torch

from toolkit.backends.torch.jvp import jvp
from toolkit.ops import Ops


def full_precision(like: torch.Tensor):
    """A region that autocast does not reach, on ``like``'s device. The authors take the JVP
    and the loss outside autocast (Gsunshine/py-meanflow at 1f6d72d,
    meanflow/models/meanflow.py:54), so ``mixed_precision: bf16`` speeds up the prediction's
    forward and backward only; the target, whose error is amplified by ``t - r``, stays float32."""
    return torch.autocast(like.device.type, enabled=False)


def has_framework_dropout(model) -> bool:
    """Whether ``model`` has active ``torch.nn.Dropout`` layers, whose masks come from the
    framework's generator (a third-party backbone's; the built-in ones hash per-example seeds)."""
    return isinstance(model, torch.nn.Module) and model.training and any(
        isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


class TorchOps(Ops):
    name = "torch"

    def batched(self, model):
        return model

    def stop_gradient(self, x):
        return x.detach()

    def without_gradient(self, fn, *args, **kwargs):
        with torch.no_grad():
            return fn(*args, **kwargs)

    def prediction_and_jvp(self, network, primals, tangents, n, *, model=None, joint=None):
        """Eager: a normal forward for the prediction and the JVP without a graph (the authors'
        JAX recipe, whose jvp output is stop-gradiented: Gsunshine/meanflow at d70cb55,
        meanflow.py). Under ``torch.compile``, with ``joint=True``, or with ``torch.nn.Dropout``
        layers (whose masks only one call can share): one JVP whose primal output is the
        prediction, as the authors' PyTorch code (Gsunshine/py-meanflow at 1f6d72d,
        meanflow/models/meanflow.py:55). The JVP runs in full precision under bf16 autocast
        (the same file, line 54)."""
        head = tuple(p[:n] for p in primals)
        if joint is None:
            joint = torch.compiler.is_compiling() or has_framework_dropout(model)
        if joint:
            with full_precision(primals[0]):
                u, du = jvp(network(slice(0, n)), head, tangents)
            if n < len(primals[0]):
                u = torch.cat([u, network(slice(n, None))(*(p[n:] for p in primals))])
            return u, du.detach()
        u = network(slice(None))(*primals)
        with torch.no_grad(), full_precision(primals[0]):
            _, du = jvp(network(slice(0, n)), head, tangents)
        return u, du

    def where(self, condition, x, y):
        return torch.where(condition, x, y)

    def concatenate(self, arrays):
        return torch.cat(list(arrays))

    def stack(self, arrays, axis=0):
        return torch.stack(list(arrays), axis)

    def full_like(self, x, value):
        return torch.full_like(x, value)

    def cast(self, x, like):
        return x.to(like.dtype)

    def maximum(self, x, value):
        return x.clamp(min=value)


OPS = TorchOps()
