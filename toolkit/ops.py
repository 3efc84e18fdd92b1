"""The op table: what an objective may ask of a backend, under the same names in every backend.

An objective is written once against an :class:`Ops` and runs on every backend: each backend
subclasses :class:`Ops` with its framework's primitives (the abstract methods below), and the
pieces the MeanFlow family shares (the linear path, null labels, the adaptive-weight loss) are
written here once, from those primitives. An objective receives its backend's table as the
third argument of its constructor, ``Objective(options, spec, ops)``; a component registered
per backend may ignore it and use its framework directly.

Arrays are batches: axis 0 is the example. Times run from data (t = 0) to noise (t = 1) on the
linear path ``z_t = (1 - t) x + t e``.

How a backend takes a derivative is its own affair: torch picks between a JVP without a graph
beside a normal forward (eager) and one JVP whose primal output is the prediction (under
``torch.compile`` or with framework dropout layers), takes it through dual tensors under DDP,
and keeps it out of bf16 autocast; JAX has one form. The objective only says what it needs:
:meth:`Ops.prediction_and_jvp`.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Mapping, Sequence

Array = Any  #: a torch.Tensor or a jax.Array, batch first
#: ``network(rows)``: the network on the batch rows ``rows`` (a slice), as a function of the
#: arrays it differentiates, e.g. ``lambda z, t, r: model(z, t, r, y[rows])``
RowNetwork = Callable[[slice], Callable[..., Array]]


class Ops(abc.ABC):
    """A backend's op table. Subclasses implement the abstract primitives; everything else is
    written once here."""

    #: the backend's name, as in ``--backend``
    name: str = ""

    # -- primitives: one per framework ---------------------------------------------------

    @abc.abstractmethod
    def batched(self, model) -> Callable[..., Array]:
        """``model`` as a function of a batch ``(z, t, r, y, *conditions, **dropout_seeds)``
        (torch modules take batches; an equinox backbone takes one example and is vmapped)."""

    @abc.abstractmethod
    def stop_gradient(self, x: Array) -> Array:
        """``x`` as a constant: no gradient flows through it."""

    @abc.abstractmethod
    def without_gradient(self, fn: Callable[..., Array], *args, **kwargs) -> Array:
        """``fn(*args, **kwargs)`` as a constant, computed without recording a graph where the
        framework records one (a target's forward passes)."""

    @abc.abstractmethod
    def prediction_and_jvp(self, network: RowNetwork, primals: Sequence[Array], tangents: Sequence[Array],
                           n: int, *, model=None, joint: bool | None = None) -> tuple[Array, Array]:
        """``(u, du)``: ``u = network(all rows)(*primals)`` with its gradient, and, as a
        constant, the JVP ``du`` of ``network(leading n rows)`` at the leading ``n`` rows of
        ``primals`` along ``tangents`` (which have ``n`` rows). ``1 <= n <= batch``.

        ``joint`` True asks for one call whose primal output is the prediction on those rows
        (torch's choice under ``torch.compile``, and JAX's only form); None lets the backend
        choose. ``model`` lets torch see framework dropout layers, whose masks only one call
        can share."""

    @abc.abstractmethod
    def where(self, condition: Array, x: Array, y: Array) -> Array:
        """Elementwise ``x`` where ``condition``, else ``y`` (broadcasting)."""

    @abc.abstractmethod
    def concatenate(self, arrays: Sequence[Array]) -> Array:
        """The arrays joined along the batch axis."""

    @abc.abstractmethod
    def stack(self, arrays: Sequence[Array], axis: int = 0) -> Array:
        """The arrays stacked along a new ``axis``."""

    @abc.abstractmethod
    def full_like(self, x: Array, value) -> Array:
        """An array of ``x``'s shape, dtype and device filled with ``value``."""

    @abc.abstractmethod
    def cast(self, x: Array, like: Array) -> Array:
        """``x`` in ``like``'s dtype."""

    @abc.abstractmethod
    def maximum(self, x: Array, value: float) -> Array:
        """Elementwise ``max(x, value)``."""

    # -- written once --------------------------------------------------------------------

    def ones_like(self, x: Array) -> Array:
        return self.full_like(x, 1)

    def zeros_like(self, x: Array) -> Array:
        return self.full_like(x, 0)

    def expand(self, t: Array, like: Array) -> Array:
        """(B,) -> (B, 1, ..., 1), broadcastable against ``like``."""
        return t.reshape(-1, *([1] * (like.ndim - 1)))

    def per_example_sum(self, x: Array) -> Array:
        """(B, ...) -> (B,): the sum over every non-batch axis."""
        return x.reshape(x.shape[0], -1).sum(1)

    def interpolate(self, x: Array, noise: Array, t: Array) -> tuple[Array, Array]:
        """The linear path: ``z_t = (1 - t) x + t e`` and its conditional velocity ``v = e - x``."""
        t_ = self.expand(t, x)
        return (1 - t_) * x + t_ * noise, noise - x

    def with_null_labels(self, y: Array | None, drop: Array, num_classes: int) -> Array | None:
        """Labels with the dropped ones replaced by the null class ``num_classes``."""
        if y is None:
            return None
        return self.where(drop, self.full_like(y, num_classes), y)

    def squared_error(self, prediction: Array, target: Array) -> Array:
        """(B,): each example's ``||prediction - target||^2``, in the target's precision: under
        bf16 autocast the network returns bfloat16 and the loss stays float32, as in the
        authors' code (Gsunshine/py-meanflow at 1f6d72d, meanflow/models/meanflow.py:54-65)."""
        return self.per_example_sum((self.cast(prediction, target) - target) ** 2)

    def adaptive_weight(self, error: Array, power: float, eps: float) -> Array:
        """MeanFlow's adaptive weight ``sg(1 / (error + eps)^power)``; power 0 gives plain MSE."""
        return 1.0 / (self.stop_gradient(error) + eps) ** power

    def masked_mean(self, values: Array, mask: Array) -> Array:
        """The mean of ``values`` where ``mask``; 0 where the mask is empty."""
        mask = self.cast(mask, values)
        return (values * mask).sum() / self.maximum(mask.sum(), 1)

    def average_velocity_loss(self, error: Array, draws: Mapping[str, Array], power: float,
                              eps: float) -> tuple[Array, dict[str, Array]]:
        """The batch loss of the MeanFlow family from each example's squared error: the
        adaptive weight, a schedule's per-example ``draws["weight"]`` if any, and the parts to
        log (the error where r = t, the flow-matching part, and where r < t)."""
        weighted = self.adaptive_weight(error, power, eps) * error
        if "weight" in draws:
            weighted = weighted * draws["weight"]
        error = self.stop_gradient(error)
        t, r = draws["t"], draws["r"]
        return weighted.mean(), {"mse": error.mean(), "mse_r_eq_t": self.masked_mean(error, r == t),
                                 "mse_r_lt_t": self.masked_mean(error, r < t)}


def backend_ops(backend: str, registry=None) -> Ops:
    """The op table of ``backend`` (its engine's ``ops``)."""
    from toolkit.registry import get_registry

    return (registry or get_registry()).load("backend", backend, backend).ops
