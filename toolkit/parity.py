"""Cross-backend parity: the same weights and inputs must give the same numbers.

Engines of two backends are built from one config, one at a time; the reference's initial
weights are copied into the other by name, and both are fed identical NumPy inputs (fixed seed): the backbone output (with labels
and unconditional), the JVP along (v, 1, 0), the objective's loss and logged parts, the
gradient of every parameter, every weight after one optimiser step, and the sampler's
output. Each quantity is compared entry by entry; a failing row names its leaf. The harness
only talks to engines (:class:`toolkit.interfaces.Engine`), so any pair of backends works.

What counts as agreement:

* **float64**: the difference, relative to the reference's largest magnitude, is at most
  :data:`FLOAT64_TOLERANCE`. The weights after AdamW's first step are compared net of what the
  gradients' own difference explains (:func:`adam_first_step_difference`).
* **float32**: the tolerance is derived, not tuned. Each backend also runs the same inputs,
  from the same weights, in float64; ``|a32 - a64|`` is then that backend's own float32
  rounding error, entry by entry. By the triangle inequality
  ``|a32 - b32| <= |a32 - a64| + |b32 - b64| + |a64 - b64|``, and the float64 check holds
  the last term to 1e-10 of the scale, so two correct implementations can never differ by more
  than their own rounding errors plus one float32 epsilon of the quantity's scale. That is the
  check, on any CPU, BLAS or instruction set; what exceeds it is a difference that float32
  rounding cannot explain (a 1e-4 error in a loss, a 1% learning rate are far outside it).
"""

from __future__ import annotations

import copy
import gc
from typing import Mapping

import attrs
import numpy as np

from toolkit.config import Config, config_from_dict, to_dict
from toolkit.dropout import with_dropout_seeds
from toolkit.interfaces import Batch
from toolkit.train import CALIBRATION_DRAWS, data_spec

#: float64: relative to the reference's largest magnitude. float64 rounding of these small
#: computations stays below 1e-14 (the worst measured over `parity --all` is 8.5e-16), so this
#: leaves four orders of magnitude and still catches any real difference.
FLOAT64_TOLERANCE = 1e-10
#: float32: what exceeds both backends' own rounding errors may be at most one float32
#: epsilon of the quantity's scale (it covers the float64 disagreement, itself below 1e-10).
FLOAT32_FLOOR = float(np.finfo(np.float32).eps)
DTYPES = ("float64", "float32")

Quantities = dict[tuple[str, str], np.ndarray]
#: a quantity one engine did not produce: compared, it differs from anything in size
MISSING = np.full(0, np.nan)


@attrs.frozen
class ParityRow:
    """One compared quantity. ``max_rel`` is the largest difference relative to the reference's
    largest magnitude; ``rounding`` the largest part of it that rounding explains (float32: the
    two backends' own errors against float64; the first AdamW step: the gradients'
    difference); ``excess`` the largest relative difference beyond that, which passes when it
    is at most ``tol``."""

    component: str
    quantity: str
    max_abs: float
    max_rel: float
    rounding: float
    excess: float
    tol: float
    ok: bool

    def as_dict(self) -> dict:
        return attrs.asdict(self)

    def describe(self) -> str:
        beyond = f", {self.excess:.2e} beyond rounding" if self.rounding else ""
        return (f"{self.component}: {self.quantity} (differs by {self.max_rel:.2e} relative{beyond}; "
                f"tolerance {self.tol:.1e})")


def compare(reference, other, explained=None) -> tuple[float, float, float, float]:
    """(max abs difference, max relative difference, max relative ``explained``, max relative
    difference beyond ``explained``), relative to the largest magnitude of ``reference``.
    ``explained`` is an allowance per entry, or one for all (none without it). Sizes that
    differ, or a NaN anywhere, compare as infinitely apart."""
    reference, other = np.asarray(reference, np.float64).reshape(-1), np.asarray(other, np.float64).reshape(-1)
    if reference.size != other.size:
        return (float("inf"),) * 4
    if not reference.size:
        return (0.0,) * 4
    difference = np.abs(reference - other)
    allowance = np.zeros(1) if explained is None else np.asarray(explained, np.float64).reshape(-1)
    error = float(np.max(difference))
    if not np.isfinite(error):
        return (float("inf"),) * 4
    scale = float(np.max(np.abs(reference)))
    scale = scale if scale > 0 else 1.0
    return (error, error / scale, float(np.max(allowance)) / scale,
            float(np.max(np.maximum(difference - allowance, 0.0))) / scale)


def adam_first_step_difference(grads_a: Mapping[str, np.ndarray], grads_b: Mapping[str, np.ndarray], lr: float,
                               eps: float, clip: float | None = None) -> dict[str, np.ndarray]:
    """Per parameter, how far apart AdamW's first step puts the two backends' weights because
    their gradients differ: ``lr |f(g_a) - f(g_b)|`` with ``f(g) = g / (|g| + eps)``, the
    bias-corrected first update (clipped gradients when ``clip``). An entry of ``|g|`` near
    ``eps`` turns a tiny difference of its gradient into a large change of its update (a sign
    flip near zero moves the weight by up to ``2 lr``), so the optimiser's check measures only
    the error beyond this: the gradients themselves are checked on their own rows."""

    def clipped(grads):
        if clip is None:
            return {k: np.asarray(v, np.float64) for k, v in grads.items()}
        norm = np.sqrt(sum(float(np.sum(np.square(np.asarray(v, np.float64)))) for v in grads.values()))
        factor = min(1.0, clip / (norm + 1e-6))  # torch's clip_grad_norm_ and optax's clipping
        return {k: np.asarray(v, np.float64) * factor for k, v in grads.items()}

    def update(g):
        return g / (np.abs(g) + eps)

    a, b = clipped(grads_a), clipped(grads_b)
    return {name: lr * np.abs(update(a[name]) - update(b[name])) for name in a.keys() & b.keys()
            if np.shape(a[name]) == np.shape(b[name])}


def with_dtype(config: Config, dtype: str, registry) -> Config:
    data = to_dict(config)
    data["run"]["dtype"] = dtype
    return config_from_dict(data, "<parity>", registry=registry)


@attrs.frozen
class _Inputs:
    """What every engine of one comparison is fed: NumPy arrays, drawn once."""

    batch: Batch
    t: np.ndarray
    r: np.ndarray
    v: np.ndarray
    noise: np.ndarray
    conditions: np.ndarray | None
    draws: dict
    lr: float


def _inputs(config: Config, registry, spec, backend: str, batch_size: int, seed: int) -> _Inputs:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size, *spec.shape))
    y = rng.integers(0, spec.num_classes, batch_size) if spec.conditional else None
    t = rng.random(batch_size)
    r = t * rng.random(batch_size)
    v, noise = rng.standard_normal(x.shape), rng.standard_normal(x.shape)
    draw = config.objective.options.draw
    draws = draw(rng, batch_size, 0, spec)
    if config.schedule is not None:  # NumPy, in the core: every engine gets the scheduled draws
        schedule = registry.load("schedule", config.schedule.name, backend)(config.schedule.options)
        schedule.calibrate(draw(np.random.default_rng([seed, 4]), CALIBRATION_DRAWS, 0, spec))
        draws = schedule.apply(draws, 0, 2, rng)
    draws = with_dropout_seeds(draws, config, seed, 0, batch_size)
    # the extra inputs an objective conditions the network on (spec.conditions), if any
    names = config.network_spec(spec).conditions
    conditions = np.random.default_rng([seed, 5]).random((batch_size, len(names))) if names else None
    return _Inputs(Batch(x, y), t, r, v, noise, conditions, draws, config.optimizer.lr)


def _measure(engine, config: Config, inputs: _Inputs, sampler, spec) -> tuple[Quantities, dict[str, np.ndarray]]:
    """Every compared quantity of one engine, keyed by (component, quantity), in table order;
    and the gradients by parameter name (the optimiser's check needs them)."""
    found: Quantities = {}
    x, y, c = inputs.batch.x, inputs.batch.y, inputs.conditions
    t, r = inputs.t, inputs.r
    model = f"backbone {config.model.name}"
    found[model, "output"] = engine.predict(x, t, r, y, c)
    if spec.conditional:
        found[model, "output (null class)"] = engine.predict(x, t, r, None, c)
    found[model, "jvp primal"], found[model, "jvp tangent"] = engine.jvp(x, t, r, y, inputs.v, c)

    objective = f"objective {config.objective.name}"
    pair = engine.regression(inputs.batch, inputs.draws, inputs.noise)
    if pair is not None:
        found[objective, "prediction"], found[objective, "target"] = pair
    loss, parts, grads = engine.gradients(inputs.batch, inputs.draws, inputs.noise)
    found[objective, "loss"] = np.asarray(loss)
    for part in sorted(parts):
        found[objective, f"part {part}"] = np.asarray(parts[part])
    for name in sorted(grads):
        found[objective, f"grad {name}"] = grads[name]

    engine.train_step(inputs.batch, inputs.draws, inputs.lr, noise=inputs.noise)
    for name, weight in sorted(engine.state_arrays().items()):
        found["optimizer adamw", f"weight after one step {name}"] = weight
    found[f"sampler {config.sampler.name}", f"samples ({sampler.nfe} NFE)"] = engine.sample(sampler, inputs.noise, y)
    return found, grads


#: The standard deviation of the noise added to the initial weights (DiT's embedding init scale).
WEIGHT_NOISE = 0.02


def off_initialisation(arrays: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """The initial weights plus ``WEIGHT_NOISE * N(0, 1)``, entry by entry. Zero-initialised
    layers (DiT's adaLN-Zero modulation and output, the U-Net's output convolution) make an
    untrained network output exactly 0 in any backend, and its JVP and most of its gradients
    with it: compared there, a wrong network would pass."""
    rng = np.random.default_rng([seed, 6])
    return {name: value + WEIGHT_NOISE * rng.standard_normal(value.shape).astype(value.dtype)
            if np.issubdtype(value.dtype, np.floating) else value for name, value in arrays.items()}


def run_parity(config: Config, registry, backends: tuple[str, str] = ("torch", "jax"), dtype: str = "float64",
               tol: float | None = None, batch_size: int = 8, seed: int = 0) -> list[ParityRow]:
    """Compare ``backends[1]`` against ``backends[0]`` on the components of ``config``.

    ``tol`` replaces the tolerance: a fixed relative one (no rounding allowance) in either dtype."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    spec = data_spec(config, registry, backends[0])  # a stated shape needs no data file
    inputs = _inputs(config, registry, spec, backends[0], batch_size, seed)
    sampler = registry.load("sampler", config.sampler.name, backends[0])(config.sampler.options)
    weights: dict[str, np.ndarray] = {}

    def measure(backend: str, precision: str) -> tuple[Quantities, dict[str, np.ndarray]]:
        """One engine at a time, dropped after measuring: a paper config's engines are large."""
        engine = registry.load("backend", backend, backend)(with_dtype(config, precision, registry), registry, spec)
        if not weights:  # the first engine built gives every engine its weights
            weights.update(off_initialisation(engine.state_arrays(), seed))
        engine.load_state_arrays(weights)
        try:
            return _measure(engine, config, inputs, sampler, spec)
        finally:
            del engine
            gc.collect()

    (reference, grads_a), (other, grads_b) = (measure(b, dtype) for b in backends)
    explained: dict[tuple[str, str], np.ndarray] = {}
    if tol is None and dtype == "float32":
        exact = [measure(b, "float64")[0] for b in backends]
        for key in reference.keys() | other.keys():
            errors = [_own_error(run.get(key), run64.get(key)) for run, run64 in zip((reference, other), exact)]
            explained[key] = errors[0] + errors[1]
    elif tol is None:
        o = config.optimizer
        for name, value in adam_first_step_difference(grads_a, grads_b, inputs.lr, o.eps, o.grad_clip).items():
            explained["optimizer adamw", f"weight after one step {name}"] = value
    limit = _tolerance(dtype, tol)
    rows = []
    for key in dict.fromkeys([*reference, *other]):  # the union, in table order
        max_abs, max_rel, rounding, excess = compare(reference.get(key, MISSING), other.get(key, MISSING),
                                                     explained.get(key))
        rows.append(ParityRow(*key, max_abs, max_rel, rounding, excess, limit, bool(excess <= limit)))
    return rows


def _tolerance(dtype: str, tol: float | None) -> float:
    return tol if tol is not None else FLOAT32_FLOOR if dtype == "float32" else FLOAT64_TOLERANCE


def _own_error(low: np.ndarray | None, exact: np.ndarray | None):
    """``|low - exact|`` entry by entry (0 where either is missing: that row fails on its own)."""
    if low is None or exact is None or np.size(low) != np.size(exact):
        return 0.0
    return np.abs(np.asarray(low, np.float64).reshape(-1) - np.asarray(exact, np.float64).reshape(-1))


#: The small run that completes every component's examples (``register(..., examples=)``): a
#: class-conditional MeanFlow MLP on 2-D data with label dropout and guidance, so that the JVP,
#: the null class and the guided target all take part.
BASE_CONFIG = {
    "run": {"name": "parity", "steps": 2, "batch_size": 8},
    "data": {"name": "synthetic", "shape": [2], "num_classes": 4},
    "model": {"name": "mlp", "hidden": 32, "depth": 2, "time_embed_dim": 16},
    "objective": {"name": "meanflow", "ratio": 0.5, "weight_power": 0.75, "label_dropout": 0.25,
                  "guidance": {"omega": 0.5, "kappa": 0.3, "t_min": 0.1, "t_max": 0.9}},
    "sampler": {"name": "meanflow", "nfe": 2},
    "optimizer": {"lr": 1e-3, "weight_decay": 0.01},
}
#: component kind -> its config section, for the kinds whose numbers depend on the backend.
SECTIONS = {"backbone": "model", "objective": "objective", "sampler": "sampler", "schedule": "schedule"}
#: component kind -> the harness rows (by their first word) that speak for it.
_ROWS_OF = {"backbone": ("backbone", "optimizer"), "objective": ("objective",), "sampler": ("sampler",),
            "schedule": ("objective",)}


def example_configs(component) -> list[dict]:
    """The component's examples completed by :data:`BASE_CONFIG` (one with default options if it
    registered none). A section an example gives replaces the base's when it names another
    component, and is merged into it otherwise."""
    section = SECTIONS[component.kind]
    configs = []
    for example in component.examples or ({},):
        data = copy.deepcopy(BASE_CONFIG)
        for key, value in example.items():
            base = data.get(key)
            if key != section and isinstance(value, Mapping) and isinstance(base, Mapping) \
                    and value.get("name", base.get("name")) == base.get("name"):
                data[key] = {**base, **copy.deepcopy(value)}
            else:
                data[key] = copy.deepcopy(value)
        data[section] = {**(data.get(section) if section in example else {}), "name": component.name}
        configs.append(data)
    return configs


def parity_components(registry, backends: tuple[str, str]) -> list:
    """Every registered component whose numbers depend on the backend and that claims both."""
    return [c for c in registry.components() if c.kind in SECTIONS and all(c.supports(b) for b in backends)]


def run_parity_component(component, registry, backends: tuple[str, str] = ("torch", "jax"),
                         dtype: str = "float64", tol: float | None = None) -> list[ParityRow]:
    """Parity of one component over its examples; rows are labelled ``<kind> <name>``. A
    component that cannot even be built gives one failing row with the error, not an exception."""
    label = f"{component.kind} {component.name}"
    configs = example_configs(component)
    rows = []
    for number, data in enumerate(configs, 1):
        where = f" [example {number}]" if len(configs) > 1 else ""
        try:
            config = config_from_dict(data, f"example {number} of {label} (plugin {component.plugin.name})",
                                      registry=registry)
            found = run_parity(config, registry, backends, dtype, tol)
        except Exception as error:  # a third party's component may raise anything
            inf = float("inf")
            rows.append(ParityRow(label + where, f"error: {type(error).__name__}: {error}", inf, inf, 0.0, inf,
                                  _tolerance(dtype, tol), False))
            continue
        rows += [attrs.evolve(row, component=label + where) for row in found
                 if row.component.split()[0] in _ROWS_OF[component.kind]]
    return rows


def run_parity_all(registry, backends: tuple[str, str] = ("torch", "jax"), dtype: str = "float64",
                   tol: float | None = None) -> list[ParityRow]:
    return [row for component in parity_components(registry, backends)
            for row in run_parity_component(component, registry, backends, dtype, tol)]


def format_table(rows: list[ParityRow]) -> str:
    header = ("component", "quantity", "max abs", "max rel", "rounding", "excess", "tol", "pass")
    cells = [header] + [(r.component, r.quantity, f"{r.max_abs:.2e}", f"{r.max_rel:.2e}",
                         f"{r.rounding:.2e}" if r.rounding else "-", f"{r.excess:.2e}", f"{r.tol:.1e}",
                         "ok" if r.ok else "FAIL") for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)
