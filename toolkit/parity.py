"""Cross-backend parity: the same weights and inputs must give the same numbers.

Two engines are built from one config, the reference's weights are copied into the other by
name, and both are fed identical NumPy inputs (fixed seed): the backbone output (with labels
and unconditional), the JVP along (v, 1, 0), the objective's loss and logged parts, the
gradient of every parameter, every weight after one optimiser step, and the sampler's
output. Each quantity is compared leaf by leaf; a failing row names its leaf. The harness
only talks to engines (:class:`toolkit.interfaces.Engine`), so any pair of backends works.

Default tolerances (relative to the largest magnitude of the reference): float64 1e-10,
float32 1e-5, with the overrides in :data:`OVERRIDES`, each with its reason.
"""

from __future__ import annotations

import copy
from typing import Iterator, Mapping

import attrs
import numpy as np

from toolkit.config import Config, config_from_dict, to_dict
from toolkit.interfaces import Batch
from toolkit.train import CALIBRATION_DRAWS, data_spec

TOLERANCES = {"float64": 1e-10, "float32": 1e-5}
#: (component, dtype) -> (tolerance, why). None at present: the one quantity that needed a
#: looser tolerance, the weights after AdamW's first step, is now compared net of what the
#: gradients' own difference explains (:func:`adam_first_step_difference`).
OVERRIDES: dict[tuple[str, str], tuple[float, str]] = {}


@attrs.frozen
class ParityRow:
    component: str
    quantity: str
    max_abs: float
    max_rel: float
    tol: float
    ok: bool

    def as_dict(self) -> dict:
        return attrs.asdict(self)


def compare(reference: np.ndarray, other: np.ndarray, explained: np.ndarray | None = None) -> tuple[float, float]:
    """(max abs error, max unexplained error / max |reference|), the unexplained error being the
    part of each entry's error beyond ``explained`` (the whole error without it)."""
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    if reference.size != other.size:
        return float("inf"), float("inf")
    if not reference.size:
        return 0.0, 0.0
    difference = np.abs(reference.reshape(other.shape) - other)
    unexplained = difference if explained is None else np.maximum(
        difference - np.asarray(explained, np.float64).reshape(other.shape), 0.0)
    error, excess = float(np.max(difference)), float(np.max(unexplained))
    scale = float(np.max(np.abs(reference)))
    return error, excess / scale if scale > 0 else excess


def adam_first_step_difference(grads_a: Mapping[str, np.ndarray], grads_b: Mapping[str, np.ndarray], lr: float,
                               eps: float, clip: float | None = None) -> dict[str, np.ndarray]:
    """Per parameter, how far apart AdamW's first step puts the two backends' weights because
    their gradients differ: ``lr |f(g_a) - f(g_b)|`` with ``f(g) = g / (|g| + eps)``, the
    bias-corrected first update (clipped gradients when ``clip``). An entry of ``|g|`` near
    ``eps`` turns a float32 rounding of its gradient into a large change of its update (a sign
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


def run_parity(config: Config, registry, backends: tuple[str, str] = ("torch", "jax"), dtype: str = "float64",
               tol: float | None = None, batch_size: int = 8, seed: int = 0) -> list[ParityRow]:
    """Compare ``backends[1]`` against ``backends[0]`` on the components of ``config``."""
    tol = TOLERANCES[dtype] if tol is None else tol
    config = with_dtype(config, dtype, registry)
    spec = data_spec(config, registry, backends[0])  # a stated shape needs no data file
    reference, other = (registry.load("backend", b, b)(config, registry, spec) for b in backends)
    other.load_state_arrays(reference.state_arrays())

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size, *spec.shape))
    y = rng.integers(0, spec.num_classes, batch_size) if spec.conditional else None
    t = rng.random(batch_size)
    r = t * rng.random(batch_size)
    v, noise = rng.standard_normal(x.shape), rng.standard_normal(x.shape)
    draw = config.objective.options.draw
    draws = draw(rng, batch_size, 0, spec)
    if config.schedule is not None:  # NumPy, in the core: both engines get the scheduled draws
        schedule = registry.load("schedule", config.schedule.name, backends[0])(config.schedule.options)
        schedule.calibrate(draw(np.random.default_rng([seed, 4]), CALIBRATION_DRAWS, 0, spec))
        draws = schedule.apply(draws, 0, 2, rng)

    rows: list[ParityRow] = []

    def check(component: str, quantity: str, a, b, explained=None):
        max_abs, max_rel = compare(a, b, explained)
        limit = OVERRIDES.get((component, dtype), (tol,))[0] if tol == TOLERANCES[dtype] else tol
        rows.append(ParityRow(component, quantity, max_abs, max_rel, limit, bool(max_rel <= limit)))

    model = f"backbone {config.model.name}"
    # the extra inputs an objective conditions the network on (spec.conditions), if any
    names = reference.spec.conditions
    c = np.random.default_rng([seed, 5]).random((batch_size, len(names))) if names else None
    check(model, "output", reference.predict(x, t, r, y, c), other.predict(x, t, r, y, c))
    if spec.conditional:
        check(model, "output (null class)", reference.predict(x, t, r, None, c), other.predict(x, t, r, None, c))
    (u_a, dudt_a), (u_b, dudt_b) = reference.jvp(x, t, r, y, v, c), other.jvp(x, t, r, y, v, c)
    check(model, "jvp primal", u_a, u_b)
    check(model, "jvp tangent", dudt_a, dudt_b)

    objective = f"objective {config.objective.name}"
    batch = Batch(x, y)
    pairs = reference.regression(batch, draws, noise), other.regression(batch, draws, noise)
    if pairs[0] is not None or pairs[1] is not None:
        (prediction_a, target_a), (prediction_b, target_b) = (p if p is not None else (np.nan, np.nan)
                                                              for p in pairs)
        check(objective, "prediction", prediction_a, prediction_b)
        check(objective, "target", target_a, target_b)
    loss_a, parts_a, grads_a = reference.gradients(batch, draws, noise)
    loss_b, parts_b, grads_b = other.gradients(batch, draws, noise)
    check(objective, "loss", loss_a, loss_b)
    for part in sorted(set(parts_a) | set(parts_b)):
        check(objective, f"part {part}", parts_a.get(part, np.nan), parts_b.get(part, np.nan))
    for name, a, b in _leaves(grads_a, grads_b):
        check(objective, f"grad {name}", a, b)

    lr = config.optimizer.lr
    reference.train_step(batch, draws, lr, noise=noise)
    other.train_step(batch, draws, lr, noise=noise)
    explained = adam_first_step_difference(grads_a, grads_b, lr, config.optimizer.eps, config.optimizer.grad_clip)
    for name, a, b in _leaves(reference.state_arrays(), other.state_arrays()):
        check("optimizer adamw", f"weight after one step {name}", a, b, explained.get(name))

    sampler = registry.load("sampler", config.sampler.name, backends[0])(config.sampler.options)
    check(f"sampler {config.sampler.name}", f"samples ({sampler.nfe} NFE)",
          reference.sample(sampler, noise, y), other.sample(sampler, noise, y))
    return rows


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
            rows.append(ParityRow(label + where, f"error: {type(error).__name__}: {error}", float("inf"),
                                  float("inf"), TOLERANCES[dtype] if tol is None else tol, False))
            continue
        rows += [attrs.evolve(row, component=label + where) for row in found
                 if row.component.split()[0] in _ROWS_OF[component.kind]]
    return rows


def run_parity_all(registry, backends: tuple[str, str] = ("torch", "jax"), dtype: str = "float64",
                   tol: float | None = None) -> list[ParityRow]:
    return [row for component in parity_components(registry, backends)
            for row in run_parity_component(component, registry, backends, dtype, tol)]


def _leaves(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    for name in sorted(set(a) | set(b)):
        yield name, a.get(name, np.full(1, np.nan)), b.get(name, np.full(0, np.nan))


def format_table(rows: list[ParityRow]) -> str:
    header = ("component", "quantity", "max abs", "max rel", "tol", "pass")
    cells = [header] + [(r.component, r.quantity, f"{r.max_abs:.2e}", f"{r.max_rel:.2e}", f"{r.tol:.0e}",
                         "ok" if r.ok else "FAIL") for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)
