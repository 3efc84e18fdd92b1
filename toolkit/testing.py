"""The toolkit's pytest plugin: backend fixtures and the shared checks.

A project turns it on for itself, in its top ``conftest.py``::

    pytest_plugins = ["toolkit.testing"]

(it is not loaded by merely installing the toolkit, so other projects' tests, their own
``backend`` fixtures included, are left alone). Turned on, a test suite gets:

* the ``backend`` fixture: a test that takes it runs once per registered backend, and fails
  (never skips) when that backend's framework is missing;
* :class:`ComponentChecks`: the behavioural and cross-backend parity checks of the toolkit's
  own suite, for any registered component. A plugin package tests its components with one
  line in a test module::

      class TestMyPlugin(ComponentChecks): components = ["objective imf", "sampler imf"]

  (or ``distribution = "my-plugin"`` for every component the distribution registers). Each
  check runs on every example the component registered (``register(..., examples=[...])``),
  completed by :data:`toolkit.parity.BASE_CONFIG`, in every backend it claims, in float64.

What is checked, per kind (the contract of :mod:`toolkit.interfaces`):

* backbone: output shape, finite, depends on t, on r and on the label; deterministic; the
  JVP along (v, 1, 0) equals a central finite difference; weights survive a round trip by name.
* objective: on Gaussian data, with its exact field and the posterior-mean example of each
  z_t, the target equals the prediction (or the loss is 0): the check for an error written
  alike in every backend;
  finite loss, parts and gradients named like the weights, some non-zero; pure
  (same inputs, same loss; ``gradients`` changes no weight); ``train_step`` reports that loss
  and the gradient norm and moves the weights; ``regression`` (if provided) returns a
  prediction and a target of the data's shape. (Whether training converges is objective
  specific: MeanFlow's loss has a moving target and an adaptive weight, so it is tested per
  objective, against closed forms, in the toolkit's own suite.)
* sampler: exact on a constant velocity field; ``nfe`` network evaluations without guidance;
  a sampler of average velocities chains its (t, r) calls from 1 to 0 and carries the noise
  exactly to its image under the flow of Gaussian data, given that flow's exact field (an ODE
  sampler: its times start at 1 and stay in [0, 1]).
* schedule: the draws keep their keys and shapes, stay finite, and depend only on the rng.
* dataset (no backend): batches and held-out examples of the spec's shape, finite, with labels
  in range (or none); batch i a function of (seed, i) only; no held-out example among the
  first 1,024 training examples. A data set's examples give its ``data`` section.
* every kind but datasets: ``toolkit parity`` on each example, float64 (1e-10 relative).
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any, ClassVar, Sequence

import attrs
import numpy as np
import pytest

from toolkit.interfaces import Batch

# -- arrays in and out of a backend --------------------------------------------------------------


def to_backend(backend: str, array):
    """A NumPy array as ``backend``'s array (None stays None)."""
    if array is None:
        return None
    if backend == "torch":
        import torch

        return torch.from_numpy(np.ascontiguousarray(array))
    import jax.numpy as jnp

    return jnp.asarray(array)


def to_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach()
    return np.asarray(array)


@contextlib.contextmanager
def float64(backend: str):
    """float64 arrays for the duration (JAX needs x64 switched on; torch keeps NumPy's dtype)."""
    if backend == "jax":
        import jax

        with jax.enable_x64(True):
            yield
    else:
        yield


# -- fixtures ---------------------------------------------------------------------------------------


def _backends() -> list[str]:
    from toolkit.registry import get_registry

    return get_registry().backend_names()


def pytest_generate_tests(metafunc):
    explicit = any("backend" in (m.args[0] if isinstance(m.args[0], (list, tuple)) else m.args[0].split(","))
                   for m in metafunc.definition.iter_markers("parametrize"))
    if "backend" in metafunc.fixturenames and "component_case" not in metafunc.fixturenames and not explicit:
        metafunc.parametrize("backend", _backends(), indirect=True)
    cls = metafunc.cls
    if cls is None or not issubclass(cls, ComponentChecks) or "component_case" not in metafunc.fixturenames:
        return
    kinds = getattr(metafunc.function, "kinds", None)
    cases, ids = [], []
    for component in cls.selected():
        if kinds is not None and component.kind not in kinds:
            continue
        configs = _example_configs(component)
        backends = (_backends() if "backend" in metafunc.fixturenames else [None])
        for number, data in enumerate(configs, 1):
            for backend in backends:
                if backend is not None and not component.supports(backend):
                    continue
                cases.append((component, number, data, backend))
                ids.append("-".join(filter(None, [component.kind, component.name, str(number), backend])))
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize(("component_case", "backend"), [((c, n, d), b) for c, n, d, b in cases], ids=ids,
                             indirect=["backend"])
    else:
        metafunc.parametrize("component_case", [(c, n, d) for c, n, d, _ in cases], ids=ids)


def pytest_collection_modifyitems(config, items):
    """A shared check for a kind that a ComponentChecks class selects nothing of (the backbone
    checks of an objective package) is not a test of that class: deselected, not reported as
    skipped, so that a skip in the report always means something did not run."""
    inapplicable = [item for item in items if _checks_nothing(item)]
    if inapplicable:
        config.hook.pytest_deselected(items=inapplicable)
        items[:] = [item for item in items if item not in inapplicable]


def _checks_nothing(item) -> bool:
    cls = getattr(item, "cls", None)
    skip = item.get_closest_marker("skip")
    return (cls is not None and issubclass(cls, ComponentChecks) and skip is not None
            and str(skip.kwargs.get("reason", "")).startswith("got empty parameter set"))


@pytest.fixture
def backend(request) -> str:
    """The backend under test. A backend whose framework is missing fails here: never a silent skip."""
    name = request.param
    importlib.import_module({"torch": "torch", "jax": "jax"}.get(name, "toolkit"))
    return name


# -- the shared checks ------------------------------------------------------------------------------


def for_kinds(*kinds: str):
    """Run the decorated check only on components of these kinds."""

    def mark(function):
        function.kinds = kinds
        return function

    return mark


def example_engine(backend: str, sections: dict, *, seed: int = 0, scale: float = 0.05):
    """``(engine, config, spec)``: a float64 engine of ``backend`` for the small run of
    :data:`toolkit.parity.BASE_CONFIG` with ``sections`` in place of its own (e.g.
    ``{"objective": {"name": "imf"}}``), every weight perturbed by ``scale`` standard normals
    from ``seed`` (so zero-initialised layers such as adaLN-Zero take part)."""
    from toolkit.parity import BASE_CONFIG

    return _engine((None, 0, {**BASE_CONFIG, **sections}), backend, seed, scale=scale)


#: kinds with shared checks that no backend changes (NumPy in, NumPy out)
BACKEND_FREE_KINDS = ("dataset",)


def _example_configs(component) -> list[dict]:
    """The small runs a component's checks use: its examples completed by
    :data:`toolkit.parity.BASE_CONFIG` (a data set's in the ``data`` section)."""
    import copy

    from toolkit.parity import BASE_CONFIG, example_configs

    if component.kind != "dataset":
        return example_configs(component)
    return [{**copy.deepcopy(BASE_CONFIG), "data": {**copy.deepcopy(dict(example.get("data", {}))),
                                                   "name": component.name}}
            for example in component.examples or ({},)]


def _example_config(case):
    """``(registry, config)`` of a component's example run."""
    from toolkit.config import config_from_dict
    from toolkit.registry import get_registry

    component, number, data = case
    registry = get_registry()
    return registry, config_from_dict(data, f"example {number} of {component.kind} {component.name}",
                                      registry=registry)


def _dataset(case):
    """The data set of an example config."""
    registry, config = _example_config(case)
    component = case[0]
    return registry.load("dataset", component.name, registry.backends_of(component)[0])(config.data.options)


def _check_batch(batch, n: int, spec, what: str) -> None:
    assert batch.x.shape == (n, *spec.shape), f"{what}: x has shape {batch.x.shape}, expected {(n, *spec.shape)}"
    assert np.isfinite(batch.x).all(), f"{what}: x is not finite"
    if spec.conditional:
        assert batch.y is not None and batch.y.shape == (n,), f"{what}: expected {n} labels"
        assert np.issubdtype(batch.y.dtype, np.integer), f"{what}: labels of dtype {batch.y.dtype}, expected integers"
        assert 0 <= batch.y.min() and batch.y.max() < spec.num_classes, \
            f"{what}: labels outside [0, {spec.num_classes})"
    else:
        assert batch.y is None, f"{what}: labels given, but the spec has no classes"


def _engine(case, backend: str, seed: int = 0, conditions: tuple[str, ...] = (), scale: float = 0.05):
    """A float64 engine of ``backend`` for an example config, with every weight perturbed (so
    zero-initialised layers such as adaLN-Zero take part), and the example's data spec.
    ``conditions``: build the network as if the objective declared these conditions."""
    from toolkit.config import config_from_dict
    from toolkit.registry import get_registry

    component, number, data = case
    registry = get_registry()
    data = {**data, "run": {**data.get("run", {}), "dtype": "float64"}}
    source = "example config" if component is None else f"example {number} of {component.kind} {component.name}"
    config = config_from_dict(data, source, registry=registry)
    if conditions:
        options = config.objective.options
        declaring = type(f"Conditioned{type(options).__name__}", (type(options),), {"conditions": conditions})
        config = attrs.evolve(config, objective=attrs.evolve(
            config.objective, options=declaring(**{f.name: getattr(options, f.name) for f in attrs.fields(type(options))})))
    spec = registry.load("dataset", config.data.name, backend)(config.data.options).spec
    engine = registry.load("backend", backend, backend)(config, registry, spec)
    rng = np.random.default_rng(seed)
    engine.load_state_arrays({k: v + scale * rng.standard_normal(v.shape) for k, v in engine.state_arrays().items()})
    return engine, config, spec


def _inputs(spec, n: int = 6, seed: int = 1) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.2, 0.9, n)
    return {"x": rng.standard_normal((n, *spec.shape)), "t": t, "r": t * rng.uniform(0.1, 0.9, n),
            "y": rng.integers(0, spec.num_classes, n) if spec.conditional else None,
            "v": rng.standard_normal((n, *spec.shape)), "noise": rng.standard_normal((n, *spec.shape))}


def _rel(a, b) -> float:
    from toolkit.parity import compare

    return compare(a, b)[1]


class ComponentChecks:
    """Subclass it (the class name must start with ``Test``) and select components with
    ``components = ["<kind> <name>", ...]``, ``distribution = "<dist>"``, or ``components = "all"``
    (every registered component of a backend-dependent kind), less ``exclude``. Selecting
    nothing is an error."""

    components: ClassVar[Sequence[str] | str] = ()
    distribution: ClassVar[str | None] = None
    #: ``["<kind> <name>", ...]`` left out of a ``distribution`` or ``"all"`` selection (say why)
    exclude: ClassVar[Sequence[str]] = ()

    def pytest_generate_tests(self, metafunc):
        """Called by pytest beside the plugin's own hook: only to say the plugin is off."""
        if not metafunc.config.pluginmanager.has_plugin(__name__):
            raise pytest.UsageError(f"{type(self).__name__} needs the toolkit's pytest plugin: add "
                                    f"pytest_plugins = [\"{__name__}\"] to the conftest.py at the top of your tests")

    @classmethod
    def selected(cls) -> list:
        from toolkit.parity import SECTIONS
        from toolkit.registry import get_registry

        registry = get_registry()
        checked = (*SECTIONS, *BACKEND_FREE_KINDS)
        if cls.components == "all":
            found = [c for c in registry.components() if c.kind in SECTIONS]
        else:
            found = [registry.get(*item.split(maxsplit=1)) for item in cls.components]
        if cls.distribution is not None:
            found += [c for c in registry.components()
                      if c.kind in checked and c.plugin.distribution == cls.distribution and c not in found]
        found = [c for c in found if f"{c.kind} {c.name}" not in cls.exclude]
        if not found:
            raise pytest.UsageError(f"{cls.__name__} selects no components: set components = ['<kind> <name>'] "
                                    f"or distribution = '<distribution>' (registered: "
                                    f"{', '.join(f'{c.kind} {c.name}' for c in registry.components())}; "
                                    f"problems: {registry.problems or 'none'})")
        return found

    # -- every kind ------------------------------------------------------------------------------

    @for_kinds("backbone", "objective", "sampler", "schedule")
    def test_parity_float64(self, component_case):
        from toolkit.parity import run_parity_component

        component, number, data = component_case
        single = _single_example(component, data)
        rows = run_parity_component(single, _registry())
        failed = [row.describe() for row in rows if not row.ok]
        assert rows and not failed, "\n".join(failed)

    # -- datasets (no backend: NumPy batches) -----------------------------------------------------

    @for_kinds("dataset")
    def test_dataset_batches_follow_the_spec(self, component_case):
        import itertools

        dataset = _dataset(component_case)
        for i, batch in enumerate(itertools.islice(dataset.batches(8, seed=0), 3)):
            _check_batch(batch, 8, dataset.spec, f"training batch {i}")
        _check_batch(dataset.reference(16, seed=0), 16, dataset.spec, "reference(16)")

    @for_kinds("dataset")
    def test_dataset_batch_i_depends_on_the_seed_and_i_only(self, component_case):
        """What makes a killed run resume on the very batches it would have seen."""
        import itertools

        first = list(itertools.islice(_dataset(component_case).batches(8, seed=3), 4))
        resumed = list(itertools.islice(_dataset(component_case).batches(8, seed=3, start=2), 2))
        for i, (a, b) in enumerate(zip(first[2:], resumed), 2):
            np.testing.assert_array_equal(a.x, b.x, err_msg=f"batch {i} differs when the stream starts at 2")
            assert (a.y is None) == (b.y is None) and (a.y is None or np.array_equal(a.y, b.y))
        other_seed = next(_dataset(component_case).batches(8, seed=4))
        assert not np.array_equal(other_seed.x, first[0].x), "another seed gives the same first batch"

    @for_kinds("dataset")
    def test_dataset_held_out_examples_are_not_training_examples(self, component_case):
        """Evaluation against data the model trained on would flatter it: no held-out example may
        be among the first 1,024 examples of the training stream."""
        import itertools

        dataset = _dataset(component_case)
        held_out = dataset.reference(64, seed=0).x
        rows = lambda x: {row.tobytes() for row in np.ascontiguousarray(x).reshape(len(x), -1)}  # noqa: E731
        training = set().union(*(rows(b.x) for b in itertools.islice(dataset.batches(64, seed=0), 16)))
        shared = rows(held_out) & training
        assert not shared, f"{len(shared)} of 64 held-out examples are in the training stream"

    # -- backbones -------------------------------------------------------------------------------

    @for_kinds("backbone")
    def test_backbone_output(self, component_case, backend):
        engine, _, spec = _engine(component_case, backend)
        a = _inputs(spec)
        u = engine.predict(a["x"], a["t"], a["r"], a["y"])
        assert u.shape == a["x"].shape and np.isfinite(u).all()
        assert np.array_equal(u, engine.predict(a["x"], a["t"], a["r"], a["y"])), "not deterministic"
        assert _rel(u, engine.predict(a["x"], a["t"] + 0.05, a["r"], a["y"])) > 1e-8, "does not depend on t"
        assert _rel(u, engine.predict(a["x"], a["t"], a["r"] * 0.5, a["y"])) > 1e-8, "does not depend on r"
        if spec.conditional:
            assert _rel(u, engine.predict(a["x"], a["t"], a["r"], None)) > 1e-8, "ignores the label"
            other = (a["y"] + 1) % spec.num_classes
            assert _rel(u, engine.predict(a["x"], a["t"], a["r"], other)) > 1e-8, "ignores the label"

    @for_kinds("backbone")
    def test_backbone_takes_conditions(self, component_case, backend):
        """An objective may condition the network on extra scalars (``spec.conditions``, e.g. iMF's
        guidance scale): each must change the output, the JVP stays the derivative, and leaving
        them out is an error."""
        engine, _, spec = _engine(component_case, backend, conditions=("first", "second"))
        a, h = _inputs(spec), 1e-7
        c = np.random.default_rng(3).uniform(0.1, 0.9, (len(a["t"]), 2))
        u = engine.predict(a["x"], a["t"], a["r"], a["y"], c)
        assert u.shape == a["x"].shape and np.isfinite(u).all()
        for i, name in enumerate(("first", "second")):
            moved = c.copy()
            moved[:, i] += 0.05
            assert _rel(u, engine.predict(a["x"], a["t"], a["r"], a["y"], moved)) > 1e-8, f"ignores condition {name}"
        _, du = engine.jvp(a["x"], a["t"], a["r"], a["y"], a["v"], c)
        plus = engine.predict(a["x"] + h * a["v"], a["t"] + h, a["r"], a["y"], c)
        minus = engine.predict(a["x"] - h * a["v"], a["t"] - h, a["r"], a["y"], c)
        assert _rel((plus - minus) / (2 * h), du) < 1e-6
        with pytest.raises(ValueError, match="built for 2 conditions"):
            engine.predict(a["x"], a["t"], a["r"], a["y"])

    @for_kinds("backbone")
    def test_backbone_jvp_is_the_derivative(self, component_case, backend):
        engine, _, spec = _engine(component_case, backend)
        # h small enough that the O(h^2) truncation (large: sinusoidal time embeddings see 1000 t)
        # stays far below the tolerance, large enough that float64 rounding does too.
        a, h = _inputs(spec), 1e-7
        u, du = engine.jvp(a["x"], a["t"], a["r"], a["y"], a["v"])
        assert _rel(engine.predict(a["x"], a["t"], a["r"], a["y"]), u) < 1e-12
        plus = engine.predict(a["x"] + h * a["v"], a["t"] + h, a["r"], a["y"])
        minus = engine.predict(a["x"] - h * a["v"], a["t"] - h, a["r"], a["y"])
        assert _rel((plus - minus) / (2 * h), du) < 1e-6

    @for_kinds("backbone")
    def test_backbone_weights_round_trip_by_name(self, component_case, backend):
        engine, _, spec = _engine(component_case, backend)
        fresh, _, _ = _engine(component_case, backend, seed=7)
        fresh.load_state_arrays(engine.state_arrays())
        a = _inputs(spec)
        assert np.array_equal(fresh.predict(a["x"], a["t"], a["r"], a["y"]),
                              engine.predict(a["x"], a["t"], a["r"], a["y"]))

    # -- objectives ------------------------------------------------------------------------------

    @for_kinds("objective", "schedule")
    def test_objective_loss_and_gradients(self, component_case, backend):
        engine, config, spec = _engine(component_case, backend)
        a = _inputs(spec, n=8)
        batch, draws = Batch(a["x"], a["y"]), _draws(config, spec, component_case)
        before = engine.state_arrays()
        loss, parts, grads = engine.gradients(batch, draws, a["noise"])
        assert np.isfinite(loss) and all(np.isfinite(v) for v in parts.values())
        assert grads and set(grads) <= set(before), "gradients must be named like the weights"
        assert all(np.isfinite(g).all() for g in grads.values())
        assert any(np.abs(g).max() > 0 for g in grads.values()), "every gradient is zero"
        assert all(np.array_equal(before[k], v) for k, v in engine.state_arrays().items()), "gradients() moved weights"
        assert engine.gradients(batch, draws, a["noise"])[0] == loss, "the loss is not a pure function"
        pair = engine.regression(batch, draws, a["noise"])
        if pair is not None:
            assert pair[0].shape == pair[1].shape == a["x"].shape
            assert np.isfinite(pair[0]).all() and np.isfinite(pair[1]).all()

    @for_kinds("objective", "schedule")
    def test_train_step_reports_and_applies_the_gradient(self, component_case, backend):
        engine, config, spec = _engine(component_case, backend)
        a = _inputs(spec, n=8)
        batch, draws = Batch(a["x"], a["y"]), _draws(config, spec, component_case)
        loss, parts, grads = engine.gradients(batch, draws, a["noise"])
        before = engine.state_arrays()
        values = {k: float(v) for k, v in engine.train_step(batch, draws, 1e-3, noise=a["noise"]).items()}
        assert _rel(loss, values["loss"]) < 1e-12, "train_step must report the loss of the weights it started from"
        norm = np.sqrt(sum(float((g ** 2).sum()) for g in grads.values()))
        assert _rel(norm, values["grad_norm"]) < 1e-10, "grad_norm is the global norm before clipping"
        assert set(parts) <= set(values)
        after = engine.state_arrays()
        moved = [k for k in grads if np.abs(grads[k]).max() > 0 and not np.array_equal(before[k], after[k])]
        assert moved and all(np.isfinite(v).all() for v in after.values())

    @for_kinds("objective")
    def test_objective_target_is_the_exact_field(self, component_case, backend):
        """Gaussian data N(m, s^2) has its flow in closed form (:func:`_gaussian_field`). Fed the
        posterior means ``x = E[x | z_t]``, ``noise = E[e | z_t]`` (which put the example at
        z_t with conditional velocity equal to the marginal one), a regression objective's
        target equals its prediction by the exact field on every row, and a loss is 0. A sign
        or tangent error written alike in every backend, which parity cannot see, breaks it
        (the flow is curved, so the field changes along it)."""
        from toolkit.ops import backend_ops

        component = component_case[0]
        registry, config = _example_config(component_case)
        spec = config.network_spec(registry.load("dataset", config.data.name, backend)(config.data.options).spec)
        objective = registry.load("objective", component.name, backend)(config.objective.options, spec,
                                                                         backend_ops(backend))
        n, m, s, rng = 32, 1.5, 0.5, np.random.default_rng(5)
        draws = config.objective.options.draw(rng, n, 0, spec)
        t = draws["t"].reshape(-1, *([1] * len(spec.shape)))
        z = (1 - t) * (m + s * rng.standard_normal((n, *spec.shape))) + t * rng.standard_normal((n, *spec.shape))
        variance = (1 - t) ** 2 * s ** 2 + t ** 2
        x = m + (1 - t) * s ** 2 / variance * (z - (1 - t) * m)  # E[x | z_t]
        noise = t / variance * (z - (1 - t) * m)  # E[e | z_t]: (1 - t) x + t noise = z_t
        y = rng.integers(0, spec.num_classes, n) if spec.conditional else None
        with float64(backend):
            convert = lambda a: None if a is None else to_backend(backend, a)  # noqa: E731
            args = (_gaussian_field(backend, m, s), convert(x), convert(y), {k: convert(v) for k, v in draws.items()},
                    convert(noise))
            if hasattr(objective, "regression"):
                prediction, target = (to_numpy(a) for a in objective.regression(*args))
                np.testing.assert_allclose(prediction, target, rtol=1e-9, atol=1e-9 * np.abs(target).max(),
                                           err_msg="prediction and target differ for the exact field")
            else:
                loss = float(to_numpy(objective.loss(*args)[0]))
                assert abs(loss) < 1e-12, f"loss {loss} for the exact field, expected 0"

    # -- samplers --------------------------------------------------------------------------------

    @for_kinds("sampler")
    def test_sampler_is_exact_on_a_constant_field(self, component_case, backend):
        registry, config = _example_config(component_case)
        sampler = registry.load("sampler", component_case[0].name, backend)(config.sampler.options)
        rng = np.random.default_rng(0)
        noise, velocity = rng.standard_normal((5, 3)), rng.standard_normal(3)
        calls = []
        with float64(backend):
            c = to_backend(backend, velocity)

            def constant_field(z, t, r, y, conditions=None):  # a field that ignores its conditions
                assert 0.0 <= r <= t <= 1.0, f"called at t={t}, r={r}: times must satisfy 0 <= r <= t <= 1"
                calls.append((t, r))
                return z * 0 + c

            out = to_numpy(sampler.sample(constant_field, to_backend(backend, noise), None))
        # Any consistent sampler moves a point by exactly the velocity over the unit interval.
        np.testing.assert_allclose(out, noise - velocity, rtol=1e-12, atol=1e-12)
        assert len(calls) == sampler.nfe, f"{len(calls)} network evaluations, nfe says {sampler.nfe}"

    @for_kinds("sampler")
    def test_sampler_follows_the_exact_field(self, component_case, backend):
        """A sampler that asks for average velocities (calls with r < t) must chain its calls
        from t = 1 to r = 0 and, with the exact average field of Gaussian data, carry the noise
        exactly to its image under the flow, ``m + s e``, at any number of steps (a step that
        evaluates the field at a stale point or moves by another gap does not). An ODE sampler
        (calls with r = t) must start at t = 1 and stay in [0, 1]."""
        registry, config = _example_config(component_case)
        sampler = registry.load("sampler", component_case[0].name, backend)(config.sampler.options)
        m, s, noise = 1.5, 0.5, np.random.default_rng(0).standard_normal((5, 3))
        field, calls = _gaussian_field(backend, m, s), []
        with float64(backend):
            def recorded(z, t, r, y, conditions=None):
                calls.append((float(t), float(r)))
                full = lambda a: z[:, :1] * 0 + a  # noqa: E731  (a scalar time for every row)
                return field(z, full(t), full(r))

            out = to_numpy(sampler.sample(recorded, to_backend(backend, noise), None))
        if all(t == r for t, r in calls):
            assert calls[0][0] == 1.0 and all(0.0 <= t <= 1.0 for t, _ in calls), f"ODE sampler's times: {calls}"
            return
        assert calls[0][0] == 1.0 and calls[-1][1] == 0.0, f"calls {calls} do not run from t = 1 to r = 0"
        assert all(a[1] == b[0] for a, b in zip(calls, calls[1:])), f"calls {calls} do not chain (r = next t)"
        np.testing.assert_allclose(out, m + s * noise, rtol=1e-10, atol=1e-10,
                                   err_msg="the exact average field does not carry the noise to m + s e")

    # -- schedules -------------------------------------------------------------------------------

    @for_kinds("schedule")
    def test_schedule_keeps_the_draws_well_formed(self, component_case):
        from toolkit.train import CALIBRATION_DRAWS

        component = component_case[0]
        registry, config = _example_config(component_case)
        spec = registry.load("dataset", config.data.name, registry.backend_names()[0])(config.data.options).spec
        draw = config.objective.options.draw
        schedule = registry.load("schedule", component.name, registry.backend_names()[0])(config.schedule.options)
        schedule.calibrate(draw(np.random.default_rng(4), CALIBRATION_DRAWS, 0, spec))
        draws = draw(np.random.default_rng(0), 64, 0, spec)
        for step in (0, 50, 99):
            out = schedule.apply(draws, step, 100, np.random.default_rng(1))
            again = schedule.apply(draws, step, 100, np.random.default_rng(1))
            assert set(out) >= set(draws)
            for key, value in out.items():
                assert value.shape == (64,) and np.array_equal(value, again[key])
                if np.issubdtype(value.dtype, np.floating):
                    assert np.isfinite(value).all()
            if "weight" in out:
                assert (out["weight"] >= 0).all()


def _registry():
    from toolkit.registry import get_registry

    return get_registry()


def _single_example(component, data):
    """``component`` with only the example ``data`` (already completed by the base config)."""
    import attrs

    return attrs.evolve(component, examples=(data,))


def _gaussian_field(backend: str, m: float, s: float):
    """The exact average velocity of data N(m, s^2 I) on the linear path
    (:func:`toolkit.plugins.toy2d.exact_average_velocity`) as a network of ``backend`` that
    ignores labels, conditions and dropout seeds: on a batch with times of shape (B,) (torch)
    or broadcastable against it, or on one example with scalar times (JAX's vmap)."""
    from toolkit.plugins.toy2d import exact_average_velocity

    if backend == "jax":
        import jax.numpy as xp
    else:
        import torch as xp

    def field(z, t, r, y=None, conditions=None, **seeds):
        if t.ndim == 1 and z.ndim > 1:  # one time per example of a batch
            t, r = (a.reshape(-1, *([1] * (z.ndim - 1))) for a in (t, r))
        return exact_average_velocity(z, t, r, m, s, xp)

    return field


def _draws(config, spec, case):
    """The objective's draws for one batch of 8, through the schedule when the config has one."""
    from toolkit.registry import get_registry
    from toolkit.train import CALIBRATION_DRAWS

    draw = config.objective.options.draw
    draws = draw(np.random.default_rng(2), 8, 0, spec)
    if config.schedule is not None:
        registry = get_registry()
        schedule = registry.load("schedule", config.schedule.name, registry.backend_names()[0])(config.schedule.options)
        schedule.calibrate(draw(np.random.default_rng(4), CALIBRATION_DRAWS, 0, spec))
        draws = schedule.apply(draws, 0, 2, np.random.default_rng(3))
    return draws
