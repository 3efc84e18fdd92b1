"""What each kind of component provides. Backend-agnostic: nothing here imports a framework.

Time convention, one for the whole toolkit (that of both authors' codes, Gsunshine/meanflow and
Gsunshine/py-meanflow):

* the linear path puts **data at t = 0 and noise at t = 1**: ``z_t = (1 - t) x + t e``,
  ``e ~ N(0, I)``; the conditional velocity is ``v = e - x``;
* a network is ``u(z, t, r, y)`` with ``r <= t``: the *average* velocity over ``[r, t]``;
  ``u(z, t, t)`` is the instantaneous velocity. Arguments are passed by these names;
* sampling runs from t = 1 to t = 0: ``z_r = z_t - (t - r) u(z_t, t, r)``.

Shapes: ``B`` is the batch, ``S`` the data shape of one example (``(2,)`` for 2-D points,
``(C, H, W)`` for images). Labels ``y`` are integers in ``[0, num_classes)``; the
index ``num_classes`` is the *null class* used for classifier-free guidance, and
``y=None`` means unconditional.

Each component is constructed as ``Implementation(options, ...)`` where ``options`` is
an instance of the attrs class it registered (or None). Classes here are
``typing.Protocol`` s: an implementation needs the members, not the base class.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import attrs
import numpy as np

from toolkit.errors import UsageError


@attrs.frozen
class DataSpec:
    """What a backbone needs to know about the data and its inputs."""

    shape: tuple[int, ...]
    num_classes: int = 0  # 0: unconditional
    #: names of the scalars, besides t and r, that the network is conditioned on per example
    #: (e.g. a guidance scale); declared by the objective (``ObjectiveOptions.conditions``) and
    #: added by :meth:`toolkit.config.Config.network_spec`. Empty for most objectives.
    conditions: tuple[str, ...] = ()

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    def condition_row(self, conditions: Mapping[str, float] | None) -> tuple[float, ...] | None:
        """The values of ``conditions`` in the order of :attr:`conditions` (None when the network
        takes none); a missing or unknown name is an error naming both lists."""
        given = dict(conditions or {})
        if set(given) != set(self.conditions):
            expected = ", ".join(self.conditions) or "no conditions"
            raise UsageError(f"the network is conditioned on {expected} (declared by its objective), "
                             f"but was given {', '.join(sorted(given)) or 'none'}; sample it with a sampler "
                             f"that sets exactly these (`toolkit plugins` lists the samplers)")
        return tuple(float(given[name]) for name in self.conditions) if self.conditions else None


@attrs.frozen
class Batch:
    """NumPy arrays of one batch: ``x`` (B, *S) float, ``y`` (B,) int64 or None."""

    x: np.ndarray
    y: np.ndarray | None = None


class Dataset(Protocol):
    """``Dataset(options)``: yields NumPy batches; each backend engine converts them."""

    spec: DataSpec

    def batches(self, batch_size: int, seed: int, start: int = 0) -> Iterator[Batch]:
        """An endless stream of training batches from batch number ``start`` on. Batch ``i``
        depends only on ``(seed, batch_size, i)``, so a resumed run continues the stream
        exactly where a killed one stopped."""

    def reference(self, n: int, seed: int) -> Batch:
        """``n`` held-out examples for evaluation (never the training stream)."""

    # Optional: data sets of latents (a VAE's encoding of images) also provide
    #   decode(x) -> np.ndarray (B, C, H, W) images in [-1, 1]
    # for samples shaped like their examples; evaluation decodes before drawing pictures and
    # before a metric with ``needs_images``.


class Backbone(Protocol):
    """The network ``u(x, t, r, y, conditions)``.

    * torch: ``Backbone(options, spec)`` is a ``torch.nn.Module`` called on a batch:
      ``x`` (B, *S), ``t`` (B,), ``r`` (B,), ``y`` (B,) or None, ``conditions`` (B, K) or
      None -> (B, *S).
    * jax: ``Backbone(options, spec, *, key)`` is an ``equinox.Module`` called on ONE
      example: ``x`` S, ``t`` (), ``r`` (), ``y`` () or None, ``conditions`` (K,) or None -> S;
      batch with ``jax.vmap``.

    ``conditions`` holds the ``K = len(spec.conditions)`` extra scalars an objective conditions
    the network on (``spec.conditions`` names them, in this order); it is None exactly when
    ``spec.conditions`` is empty. The built-in backbones embed each like a time.

    Parameter names (the torch ``state_dict`` keys and the dotted equinox pytree paths)
    are the same in both backends, so weights move between them by name.
    """

    def __call__(self, x: Any, t: Any, r: Any, y: Any = None, conditions: Any = None) -> Any: ...


class ObjectiveOptions(Protocol):
    """The backend-agnostic half of an objective: its options and its random draws.

    Everything random that defines a training example, except the Gaussian noise, is
    drawn here in NumPy, so both backends can be fed identical draws.
    """

    def draw(self, rng: np.random.Generator, batch_size: int, step: int,
             spec: DataSpec) -> dict[str, np.ndarray]:
        """Per-example draws, e.g. ``{"t": (B,), "r": (B,), "drop": (B,) bool}``."""

    # Optional:
    #   conditions: tuple[str, ...] -- names of extra scalars the objective feeds its network
    #     (the ``conditions`` argument of a Backbone); the engines build the network with them in
    #     ``spec.conditions``, and a sampler of such a network passes their values by name.


class Objective(Protocol):
    """``Objective(options, spec, ops)``: maps a batch to a scalar loss.

    ``ops`` is the running backend's op table (:class:`toolkit.ops.Ops`): an objective written
    against it alone is registered once, under ``"*"``, and runs on every backend. One
    registered per backend may use its framework directly and ignore ``ops``.

    ``loss(model, x, y, draws, noise)`` with ``x`` and ``noise`` (B, *S) backend arrays,
    ``y`` (B,) or None, ``draws`` the output of ``options.draw`` as backend arrays.
    Returns ``(loss, parts)``: a scalar and a dict of scalars to log. Pure: the same
    inputs give the same loss, which is what the parity harness relies on.
    """

    def loss(self, model: Any, x: Any, y: Any, draws: Mapping[str, Any], noise: Any) -> tuple[Any, dict]: ...

    # Optional: objectives that regress the network onto a target also provide
    #   regression(model, x, y, draws, noise) -> (prediction, target)
    # both (B, *S), the target already stop-gradient; the parity harness compares both.


class Schedule(Protocol):
    """``Schedule(options)``: changes an objective's draws as training proceeds (NumPy, so one
    implementation serves every backend; a pure function of the step, so a resumed run
    continues it exactly).

    Objectives multiply their per-example loss by ``draws["weight"]`` when it is present.
    """

    def calibrate(self, draws: Mapping[str, np.ndarray]) -> None:
        """Called once before training with a large sample (2^16) of the objective's draws at
        step 0, e.g. to normalise weights; raise ``UsageError`` if the draws lack what the
        schedule needs."""

    def apply(self, draws: Mapping[str, np.ndarray], step: int, total_steps: int,
              rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The draws to train on at ``step`` (from 0) of ``total_steps``."""


#: ``model_fn(z, t, r, y, conditions=None)``: the backbone on a batch at scalar times ``t`` >=
#: ``r``; ``y=None`` asks for the unconditional (null-class) prediction; ``conditions`` maps each
#: name of ``spec.conditions`` to one value for the whole batch (required when the network has
#: conditions, an error when it has none).
ModelFn = Callable[..., Any]


class Sampler(Protocol):
    """``Sampler(options)``: noise at t=1 -> data at t=0.

    Written with array arithmetic only, so one implementation serves every backend
    (registered under ``"*"``). ``nfe`` is the number of network evaluations per
    sample (guidance doubles the calls but not ``nfe``).
    """

    nfe: int

    def sample(self, model_fn: ModelFn, noise: Any, y: Any = None) -> Any: ...


class Metric(Protocol):
    """``Metric(options)``: a number comparing samples with reference data (lower is better
    unless ``higher_is_better``). NumPy in, float out."""

    higher_is_better: bool

    def __call__(self, samples: np.ndarray, reference: np.ndarray, seed: int = 0) -> float: ...

    # Optional members:
    #   fit(dataset) -> None: called once with the run's Dataset before the first __call__, by
    #     metrics that learn something from the data (a classifier's feature space).
    #   features(x) -> np.ndarray (N, D) and score(sample_features, reference_features) -> float,
    #     with __call__(s, r) == score(features(s), features(r)): evaluation then computes
    #     features chunk by chunk, so 50,000 decoded images never sit in memory at once.
    #   needs_images = True: the inputs must be images (N, C, H, W) in [-1, 1]; evaluation
    #     decodes latent samples with the data set's ``decode`` first.
    #   fixed_reference = True: the metric compares with a reference of its own (FID against
    #     the statistics of a whole training set); evaluation passes ``reference=None``.


class Engine(Protocol):
    """``Engine(config, registry, spec)``: one backend's model, optimiser and step.

    The training loop itself (:mod:`toolkit.train`) is backend-agnostic and drives an
    engine through these calls, so logging, checkpoints and evaluation are written once.

    An engine leaves process-wide framework state as it found it: its dtype, matrix-product
    precision and seed apply for the duration of each of its calls (:func:`in_numerics`), so
    engines of different dtypes live side by side in one process (the parity harness, tests).
    """

    def train_step(self, batch: Batch, draws: Mapping[str, np.ndarray], lr: float,
                   noise: np.ndarray) -> Mapping[str, Any]:
        """One optimiser step at learning rate ``lr``; returns ``loss``, ``grad_norm`` (the
        global norm before clipping) and the objective's parts as scalars that ``float()``
        reads: 0-d arrays of the framework, left on the device, so that the step does not wait
        for the device (the loop reads them only where it logs, evaluates or checkpoints).
        When the loss or the gradient norm is not finite the step changes nothing (weights,
        optimiser state, its step count), decided on the device without reading either back;
        the loop raises :class:`~toolkit.errors.DivergenceError` when it reads them. ``noise``
        (B, *S) is drawn by the caller, in NumPy like every other random input, so a step is a
        pure function of its inputs and a resumed run needs no framework RNG state."""

    def gradients(self, batch: Batch, draws: Mapping[str, np.ndarray],
                  noise: np.ndarray) -> tuple[float, dict[str, float], dict[str, np.ndarray]]:
        """``(loss, parts, {parameter name: gradient})`` without changing any state."""

    def regression(self, batch: Batch, draws: Mapping[str, np.ndarray],
                   noise: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The objective's ``(prediction, target)`` without gradient, or None when the objective
        does not provide ``regression``."""

    spec: DataSpec
    """The network's spec: the data's, with the objective's ``conditions`` (``Config.network_spec``)."""

    def predict(self, x: np.ndarray, t: np.ndarray, r: np.ndarray, y: np.ndarray | None = None,
                conditions: np.ndarray | None = None) -> np.ndarray:
        """The backbone on a batch, without gradient; ``conditions`` (B, K) as the Backbone's."""

    def jvp(self, x, t, r, y, v, conditions=None) -> tuple[np.ndarray, np.ndarray]:
        """``(u, du)``: the backbone and its derivative along (x, t, r) -> (v, 1, 0)."""

    def sample(self, sampler: Sampler, noise: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        """Run ``sampler`` on the current weights; NumPy in, NumPy out."""

    def update_ema(self, decays: Sequence[float]) -> None:
        """Move each average of the weights towards them: ``a += (1 - decay) (w - a)``, with
        ``decays[k]`` for the k-th of ``config.ema.decays`` (the loop applies the warm-up)."""

    def ema_arrays(self) -> list[dict[str, np.ndarray]]:
        """The averaged weights, one dict per ``config.ema.decays`` entry, named as
        :meth:`state_arrays`."""

    def load_ema_arrays(self, averages: Sequence[Mapping[str, np.ndarray]]) -> None:
        """Restore what :meth:`ema_arrays` returned (any backend's)."""

    def optimizer_arrays(self) -> dict[str, np.ndarray]:
        """AdamW's state as named NumPy copies: ``step``, ``mu.<parameter>`` and
        ``nu.<parameter>`` (first and second moments); empty before the first step. The names
        are the same in every backend, so optimiser state moves between them too."""

    def load_optimizer_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`optimizer_arrays` returned (any backend's)."""

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Named NumPy copies of the weights (never views), names shared across backends."""

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Replace the weights with ``arrays`` (as produced by any backend's ``state_arrays``)."""

    # Optional, for data parallelism over several devices or processes (the loop assumes one
    # process without them):
    #   is_main: bool          -- False in every process but one of a multi-process run (torchrun,
    #                             JAX hosts): those train (train_step must then return the global
    #                             batch's values on every process) but write and evaluate nothing
    #   data_parallel: dict    -- recorded in run.json: "processes", "devices", "per_device_batch"
    #   close() -> None        -- called on every process when training ends (leave a process group)
    # ``run.batch_size`` is always the global batch, and every process is given all of it.
    #
    # Optional, for memory:
    #   array_views() -> (weights, averages, optimizer)
    #       what state_arrays(), ema_arrays() and optimizer_arrays() return, but sharing the
    #       engine's memory where it can (NumPy views of CPU buffers), valid until its next call.
    #       Checkpoints are written from them, so a write adds no copy of the state to the
    #       run's memory; without it they are written from those copies, all held at once.


def in_numerics(method):
    """Run an engine method inside ``self.numerics()``: the context manager that sets the
    framework's process-wide numerical state (dtype switches, matrix-product precision) to the
    engine's and restores what was there before. Every public method of an engine wears it."""

    @functools.wraps(method)
    def scoped(self, *args, **kwargs):
        with self.numerics():
            return method(self, *args, **kwargs)

    return scoped
