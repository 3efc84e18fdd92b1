"""The JAX/Equinox training engine: jit-compiled pure functions of (model, opt_state, batch, noise)."""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import Callable, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from toolkit.backends.jax.ops import OPS
from toolkit.backends.jax.sharding import data_sharding
from toolkit.backends.jax.weights import load_named_arrays, named_arrays
from toolkit.interfaces import in_numerics


class JaxEngine:
    #: the op table objectives are written against (toolkit/ops.py)
    ops = OPS

    def __init__(self, config, registry, spec):
        self.x64 = config.run.dtype == "float64"
        # bf16: JAX has no autocast; its counterpart is the precision of every matrix product
        # and convolution (bfloat16 inputs, float32 accumulation) on GPUs and TPUs. XLA's CPU
        # backend ignores it and computes in float32.
        self.matmul_precision = "bfloat16" if config.run.mixed_precision == "bf16" else config.run.matmul_precision
        self._build(config, registry, spec)

    @contextlib.contextmanager
    def numerics(self):
        """x64 and the matrix-product precision are JAX's process-wide settings (and part of
        every compiled program's cache key): this engine's, for the duration of each call."""
        with jax.enable_x64(self.x64), jax.default_matmul_precision(self.matmul_precision):
            yield

    @in_numerics
    def _build(self, config, registry, spec):
        self.config, self.spec = config, config.network_spec(spec)
        spec = self.spec
        self.dtype = jnp.dtype(config.run.dtype)
        #: the batch split over every device when JAX sees several (backends/jax/sharding.py), else a
        #: no-op; first, as it may join other hosts, which must happen before any computation
        self.sharding = data_sharding(config.run.batch_size)
        self.is_main, self.data_parallel = self.sharding.is_main, self.sharding.info()
        model_key = jax.random.PRNGKey(config.run.seed)
        backbone = registry.load("backbone", config.model.name, "jax")
        model = backbone(config.model.options, spec, key=model_key)
        self.model = jax.tree_util.tree_map(
            lambda a: a.astype(self.dtype) if eqx.is_inexact_array(a) else a, model)
        objective = registry.load("objective", config.objective.name, "jax")
        self.objective = objective(config.objective.options, spec, self.ops)
        o = config.optimizer
        # torch.optim.AdamW and optax.adamw agree when every hyper-parameter is given.
        self.tx = optax.inject_hyperparams(optax.adamw)(
            learning_rate=o.lr, b1=o.betas[0], b2=o.betas[1], eps=o.eps, weight_decay=o.weight_decay)
        self.opt_state = self.tx.init(eqx.filter(self.model, eqx.is_inexact_array))
        self.model, self.opt_state = self.sharding.replicate((self.model, self.opt_state))
        #: one averaged copy of the model per ``ema.decays`` entry, in that order: copies, not
        #: the model itself, because the update below donates the model's buffers
        self.ema_models = [_copy(self.model) for _ in config.ema.decays]
        # Donation: the step and the averaging write their results into the buffers of the
        # state they replace, instead of holding old and new weights and AdamW moments at once
        # (4 x the parameters more: 10 GiB for DiT-XL/2).
        self._ema = _jit(_update_averages, donate="all-except-first")
        # Compiled once each (op by op, a conv net's gradient takes minutes on the CPU). The
        # gradient and the update are separate programs so that ``gradients`` (parity) and
        # ``train_step`` share one compilation of the loss.
        self._grads = _jit(self._loss_and_grads)
        self._update = _jit(self._make_update(o.grad_clip), donate="all")
        self._call = eqx.filter_jit(lambda m, z, t, r, y, c: jax.vmap(m)(z, t, r, y, c))
        self._regression = eqx.filter_jit(lambda m, x, y, draws, noise: self.objective.regression(m, x, y, draws, noise))
        self._jvp = eqx.filter_jit(lambda m, x, t, r, y, c, v: jax.jvp(
            lambda x_, t_, r_: jax.vmap(m)(x_, t_, r_, y, c), (x, t, r), (v, jnp.ones_like(t), jnp.zeros_like(r))))

    def _loss_and_grads(self, model, x, y, draws, noise):
        loss_fn = lambda m: self.objective.loss(m, x, y, draws, noise)  # noqa: E731
        return eqx.filter_value_and_grad(loss_fn, has_aux=True)(model)

    def _make_update(self, clip):
        def update(model, opt_state, grads, loss, lr):
            grad_norm = optax.tree.norm(grads)
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            if clip is not None:  # the same rule as torch.nn.utils.clip_grad_norm_
                scale = jnp.minimum(1.0, clip / (grad_norm + 1e-6))
                grads = jax.tree_util.tree_map(lambda g: g * scale, grads)
            opt_state.hyperparams["learning_rate"] = lr
            updates, new_state = self.tx.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
            # Decided on the device, so the host need not read the loss back every step: a
            # non-finite step leaves the weights and AdamW's state (count included) as they were.
            keep = lambda new, old: jnp.where(finite, new, old) if eqx.is_array(new) else new  # noqa: E731
            model = jax.tree_util.tree_map(keep, eqx.apply_updates(model, updates), model)
            # the loss goes back out because ``donate="all"`` hands its buffer to the program
            return model, jax.tree_util.tree_map(keep, new_state, opt_state), loss, grad_norm

        return update

    @in_numerics
    def array(self, array):
        if array is None:
            return None
        return jnp.asarray(array, dtype=self.dtype if np.issubdtype(array.dtype, np.floating) else None)

    @in_numerics
    def gradients(self, batch, draws, noise):
        (loss, parts), grads = self._grads(self.model, *self.sharding.shard(
            self.array(batch.x), self.array(batch.y), {k: self.array(v) for k, v in draws.items()}, self.array(noise)))
        return float(loss), {k: float(v) for k, v in parts.items()}, named_arrays(grads)

    @in_numerics
    def regression(self, batch, draws, noise):
        if not hasattr(self.objective, "regression"):
            return None
        prediction, target = self._regression(self.model, *self.sharding.shard(
            self.array(batch.x), self.array(batch.y), {k: self.array(v) for k, v in draws.items()}, self.array(noise)))
        return np.asarray(prediction), np.asarray(target)

    @in_numerics
    def predict(self, x, t, r, y=None, conditions=None):
        return np.asarray(self._call(self.model, *(self.array(a) for a in (x, t, r, y, conditions))))

    @in_numerics
    def jvp(self, x, t, r, y, v, conditions=None):
        u, dudt = self._jvp(self.model, *(self.array(a) for a in (x, t, r, y, conditions, v)))
        return np.asarray(u), np.asarray(dudt)

    @in_numerics
    def train_step(self, batch, draws, lr, noise):
        (loss, parts), grads = self._grads(self.model, *self.sharding.shard(
            self.array(batch.x), self.array(batch.y), {k: self.array(v) for k, v in draws.items()}, self.array(noise)))
        self.model, self.opt_state, loss, grad_norm = self._update(self.model, self.opt_state, grads, loss,
                                                                   jnp.asarray(lr, self.dtype))
        return {"loss": loss, "grad_norm": grad_norm, **parts}  # on the device: nothing here waits for the step

    @in_numerics
    def sample(self, sampler, noise, y):
        def model_fn(z, t, r, labels, conditions=None):
            batch, row = (z.shape[0],), self.spec.condition_row(conditions)
            return self._call(self.model, z, jnp.full(batch, t, self.dtype), jnp.full(batch, r, self.dtype),
                              labels, None if row is None else jnp.tile(jnp.asarray(row, self.dtype), (z.shape[0], 1)))

        return np.asarray(sampler.sample(model_fn, self.array(noise), self.array(y)))

    @in_numerics
    def update_ema(self, decays):
        self.ema_models = self._ema(self.model, self.ema_models, jnp.asarray(decays, self.dtype))

    @in_numerics
    def ema_arrays(self):
        return [named_arrays(average) for average in self.ema_models]

    @in_numerics
    def load_ema_arrays(self, averages):
        self.ema_models = self.sharding.replicate(
            [load_named_arrays(average, arrays) for average, arrays in zip(self.ema_models, averages)])

    @in_numerics
    def optimizer_arrays(self):
        return self._optimizer_arrays(copy=True)

    def _optimizer_arrays(self, copy: bool) -> dict[str, np.ndarray]:
        # AdamW's moments under the parameter names, as torch's exp_avg / exp_avg_sq.
        adam = _adam_state(self.opt_state)
        if int(adam.count) == 0:
            return {}
        return {"step": np.asarray(float(adam.count)),
                **{f"mu.{k}": v for k, v in named_arrays(adam.mu, copy).items()},
                **{f"nu.{k}": v for k, v in named_arrays(adam.nu, copy).items()}}

    @in_numerics
    def load_optimizer_arrays(self, arrays):
        if not arrays:
            return
        adam = _adam_state(self.opt_state)
        count = jnp.asarray(int(np.asarray(arrays["step"]).reshape(-1)[0]), adam.count.dtype)
        restored = adam._replace(count=count, **{
            m: load_named_arrays(getattr(adam, m), {k[len(m) + 1:]: v for k, v in arrays.items()
                                                    if k.startswith(m + ".")}) for m in ("mu", "nu")})
        inner = jax.tree_util.tree_map(lambda node: restored if isinstance(node, optax.ScaleByAdamState) else node,
                                       self.opt_state.inner_state, is_leaf=_is_adam)
        # a count of its own: one buffer in two places cannot be donated
        self.opt_state = self.sharding.replicate(self.opt_state._replace(count=jnp.array(count, copy=True),
                                                                         inner_state=inner))

    @in_numerics
    def state_arrays(self):
        return named_arrays(self.model)

    @in_numerics
    def load_state_arrays(self, arrays):
        self.model = self.sharding.replicate(load_named_arrays(self.model, arrays))

    @in_numerics
    def array_views(self):
        return (named_arrays(self.model, copy=False), [named_arrays(a, copy=False) for a in self.ema_models],
                self._optimizer_arrays(copy=False))


def _jit(fun: Callable, donate: Literal["none", "all", "all-except-first"] = "none") -> Callable:
    """``eqx.filter_jit`` without its wait: Equinox blocks until every call's program has run (to
    raise ``eqx.error_if`` errors at the call), and so would make each training step wait for the
    device. As there, the arrays of the arguments are traced, their other leaves are static, and
    ``donate`` hands the arguments' buffers to the program."""
    def run(first, rest, static):
        out = fun(*(_join(arrays, other) for arrays, other in zip((first, *rest), static.value)))
        dynamic, static_out = _split(out)
        return dynamic, _Static(static_out)

    jitted = jax.jit(run, static_argnums=2,
                     donate_argnums={"none": (), "all": (0, 1), "all-except-first": (1,)}[donate])

    def arguments(args):
        dynamic, static = zip(*map(_split, args))
        return dynamic[0], dynamic[1:], _Static(static)

    def call(*args):
        with warnings.catch_warnings():
            # as Equinox: buffers no output can reuse (the gradients) are simply freed
            warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
            out, static_out = jitted(*arguments(args))
        return _join(out, static_out.value)

    call.lower = lambda *args: jitted.lower(*arguments(args))  # the program, as jax.jit's
    return call


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _Static:
    """What a pytree holds besides arrays (its structure, functions, numbers): hashable, so it
    keys ``jax.jit``'s cache as a static argument and leaves a program in its outputs' structure."""

    value: tuple


def _split(tree) -> tuple[list, tuple]:
    """``tree``'s leaves, arrays kept and the others None, and (its structure, the others)."""
    leaves, structure = jax.tree_util.tree_flatten(tree)
    return ([leaf if eqx.is_array(leaf) else None for leaf in leaves],
            (structure, tuple(None if eqx.is_array(leaf) else leaf for leaf in leaves)))


def _join(arrays: list, static: tuple):
    structure, others = static
    return jax.tree_util.tree_unflatten(structure, [a if o is None else o for a, o in zip(arrays, others)])


def _update_averages(model, averages, decays):
    """``a + (1 - decay) (p - a)`` for every weight, as ``torch.lerp`` in the torch engine."""
    return [jax.tree_util.tree_map(lambda a, p: a + (1 - decay) * (p - a) if eqx.is_inexact_array(p) else a,
                                   average, model) for average, decay in zip(averages, decays)]


def _copy(tree):
    """``tree`` with every array copied (the same values in new buffers)."""
    return jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True) if eqx.is_array(a) else a, tree)


def _is_adam(node) -> bool:
    return isinstance(node, optax.ScaleByAdamState)


def _adam_state(opt_state) -> optax.ScaleByAdamState:
    return next(node for node in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_adam) if _is_adam(node))
