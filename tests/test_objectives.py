"""The objectives' math, proved against closed forms, once per backend (float64)."""

from __future__ import annotations

import attrs
import numpy as np
import pytest

from backend_arrays import build_backbone, call_backbone, exact_model, float64, namespace, to_backend, to_numpy
from toolkit.interfaces import DataSpec
from toolkit.plugins.flow_matching import FlowMatchingOptions
from toolkit.plugins.meanflow import Guidance, MeanFlowOptions
from toolkit.plugins.mlp import MLPOptions
from toolkit.plugins.samplers import MeanFlowSampler, MeanFlowSamplerOptions
from toolkit.plugins.splitmeanflow import SplitMeanFlowOptions
from toolkit.plugins.toy2d import exact_average_velocity
from toolkit.ops import backend_ops
from toolkit.registry import get_registry

MEAN, STD = 1.5, 0.5
SPEC = DataSpec((2,))


def objective(backend, name, options, spec=SPEC):
    return get_registry().load("objective", name, backend)(options, spec, backend_ops(backend))


def batch(n=64, seed=0, std=STD, ratio=0.75, spec=SPEC):
    rng = np.random.default_rng(seed)
    x = MEAN + std * rng.standard_normal((n, 2))
    draws = MeanFlowOptions(ratio=ratio, label_dropout=0.2).draw(rng, n, 0, spec)
    y = rng.integers(0, spec.num_classes, n) if spec.conditional else None
    return x, y, draws, rng.standard_normal((n, 2))


def marginal_velocity(z, t):
    return exact_average_velocity(z, t[:, None], t[:, None], MEAN, STD, np)


def test_meanflow_target_of_the_exact_field_is_the_field(backend):
    """With the marginal velocity, u_tgt = v - (t - r)(v d_z u + d_t u) reproduces u exactly."""
    x, _, draws, noise = batch()
    t, r = draws["t"], draws["r"]
    z = (1 - t[:, None]) * x + t[:, None] * noise
    with float64(backend):
        mf = objective(backend, "meanflow", MeanFlowOptions())
        u, u_tgt = mf.target(exact_model(backend, MEAN, STD), *(to_backend(backend, a) for a in
                             (z, t, r)), None, to_backend(backend, marginal_velocity(z, t)))
        expected = exact_average_velocity(z, t[:, None], r[:, None], MEAN, STD, np)
        np.testing.assert_allclose(to_numpy(u), expected, rtol=1e-12)
        np.testing.assert_allclose(to_numpy(u_tgt), expected, rtol=1e-9, atol=1e-12)
        assert (r < t).sum() > 20


def test_meanflow_loss_of_the_exact_field_is_zero(backend):
    """For point-mass data the conditional velocity is the marginal one, so the loss vanishes."""
    x, _, draws, noise = batch(std=0.0)
    with float64(backend):
        mf = objective(backend, "meanflow", MeanFlowOptions(weight_power=0.0))
        loss, parts = mf.loss(exact_model(backend, MEAN, 0.0), to_backend(backend, x), None,
                              {k: to_backend(backend, v) for k, v in draws.items()}, to_backend(backend, noise))
        assert float(loss) < 1e-24 and float(parts["mse_r_lt_t"]) < 1e-24


def test_meanflow_at_r_equal_t_is_flow_matching(backend):
    spec = DataSpec((2,), 4)
    x, y, draws, noise = batch(ratio=0.0, spec=spec)
    assert (draws["r"] == draws["t"]).all()
    with float64(backend):
        model = build_backbone(backend, "mlp", MLPOptions(hidden=16, depth=2, time_embed_dim=8), spec)
        args = [to_backend(backend, a) for a in (x, y)] + [{k: to_backend(backend, v) for k, v in draws.items()},
                                                           to_backend(backend, noise)]
        mf, _ = objective(backend, "meanflow", MeanFlowOptions(weight_power=0.0), spec).loss(model, *args)
        fm, _ = objective(backend, "flow_matching", FlowMatchingOptions(), spec).loss(model, *args)
        assert float(to_numpy(mf)) == pytest.approx(float(to_numpy(fm)), rel=1e-14)


def test_jvp_equals_a_central_finite_difference(backend):
    """The bracket of the target is the derivative along (z, t, r) -> (v, 1, 0)."""
    x, _, draws, noise = batch(n=16)
    t, r = draws["t"], draws["r"]
    z, v = (1 - t[:, None]) * x + t[:, None] * noise, noise - x
    with float64(backend):
        # time_scale 1 keeps the third derivative small enough for a finite difference at h = 1e-5
        model = build_backbone(backend, "mlp", MLPOptions(hidden=16, depth=2, time_embed_dim=8, time_scale=1.0), SPEC)
        mf = objective(backend, "meanflow", MeanFlowOptions())
        _, u_tgt = mf.target(model, *(to_backend(backend, a) for a in (z, t, r)), None, to_backend(backend, v))
        keep = t > r
        dudt = (v - to_numpy(u_tgt))[keep] / (t - r)[keep, None]

        def f(h):
            return to_numpy(call_backbone(backend, model, *(to_backend(backend, a) for a in (z + h * v, t + h, r))))

        h = 1e-5
        finite_difference = (f(h) - f(-h)) / (2 * h)
        np.testing.assert_allclose(dudt, finite_difference[keep], rtol=1e-6, atol=1e-8)


def test_torch_jvp_modes_agree():
    import torch

    from toolkit.backends.torch.jvp import jvp

    model = build_backbone("torch", "mlp", MLPOptions(hidden=16, depth=2), SPEC)
    z, t, r = torch.randn(8, 2, dtype=torch.float64), torch.rand(8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64)
    tangents = (torch.randn(8, 2, dtype=torch.float64), torch.ones(8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64))
    a = jvp(model, (z, t, r), tangents, "func")
    b = jvp(model, (z, t, r), tangents, "forward_ad")
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_meanflow_weight_and_stop_gradient(backend):
    """loss = mean(w * ||u - sg(u_tgt)||^2) with w = sg(1 / (||.||^2 + c)^p): the gradient is that
    of a regression on a constant target with constant weights."""
    p, c = 0.75, 1e-2
    x, _, draws, noise = batch(n=32)
    with float64(backend):
        model = build_backbone(backend, "mlp", MLPOptions(hidden=16, depth=2, time_embed_dim=8), SPEC)
        mf = objective(backend, "meanflow", MeanFlowOptions(ratio=0.75, weight_power=p, weight_eps=c))
        args = [to_backend(backend, x), None, {k: to_backend(backend, v) for k, v in draws.items()},
                to_backend(backend, noise)]
        t, r = draws["t"], draws["r"]
        z, v = (1 - t[:, None]) * x + t[:, None] * noise, noise - x
        _, target = mf.target(model, *(to_backend(backend, a) for a in (z, t, r)), None, to_backend(backend, v))
        target = to_numpy(target)
        u = to_numpy(call_backbone(backend, model, *(to_backend(backend, a) for a in (z, t, r))))
        error = ((u - target) ** 2).sum(1)
        weight = 1 / (error + c) ** p

        def reference(m):
            out = call_backbone(backend, m, *(to_backend(backend, a) for a in (z, t, r)))
            return ((to_backend(backend, weight) * ((out - to_backend(backend, target)) ** 2).sum(1))).mean()

        loss_grads = gradients(backend, model, lambda m: mf.loss(m, *args)[0])
        reference_grads = gradients(backend, model, reference)
        assert float(loss_grads[0]) == pytest.approx(float((weight * error).mean()), rel=1e-12)
        for name in reference_grads[1]:
            np.testing.assert_allclose(loss_grads[1][name], reference_grads[1][name], rtol=1e-10, atol=1e-14)


def gradients(backend, model, fn):
    """(value, {parameter name: gradient})."""
    if backend == "torch":
        model.zero_grad()
        value = fn(model)
        value.backward()
        return value.item(), {k: p.grad.numpy().copy() for k, p in model.named_parameters()}
    import equinox as eqx

    from toolkit.backends.jax.weights import named_arrays

    value, grads = eqx.filter_value_and_grad(fn)(model)
    return float(value), named_arrays(grads)


def test_guidance_is_folded_into_the_target(backend):
    """Inside the interval the velocity becomes omega v + kappa u_y + (1 - omega - kappa) u_null."""
    spec = DataSpec((2,), 3)
    x, y, draws, noise = batch(n=32, spec=spec)
    g = Guidance(omega=0.2, kappa=0.5, t_min=0.1, t_max=0.9)
    t = draws["t"]
    with float64(backend):
        model = build_backbone(backend, "mlp", MLPOptions(hidden=16, depth=2, time_embed_dim=8), spec)
        mf = objective(backend, "meanflow", MeanFlowOptions(guidance=g), spec)
        z, v = (1 - t[:, None]) * x + t[:, None] * noise, noise - x
        got = to_numpy(mf.guided_velocity(model, *(to_backend(backend, a) for a in (z, v, t, y, draws["drop"]))))
        u_y = to_numpy(call_backbone(backend, model, *(to_backend(backend, a) for a in (z, t, t, y))))
        u_null = to_numpy(call_backbone(backend, model, *(to_backend(backend, a) for a in (z, t, t, np.full_like(y, 3)))))
        applies = (t >= 0.1) & (t <= 0.9) & ~draws["drop"]
        expected = np.where(applies[:, None], 0.2 * v + 0.5 * u_y + 0.3 * u_null, v)
        np.testing.assert_allclose(got, expected, rtol=1e-12)
        assert 0 < applies.sum() < len(t)
    assert g.effective_scale == pytest.approx(0.4)


@pytest.mark.parametrize("options", [MeanFlowOptions(), SplitMeanFlowOptions()], ids=["meanflow", "splitmeanflow"])
def test_null_labels_are_one_block_of_the_r_equals_t_pairs(options):
    """The authors' layout (Gsunshine/meanflow meanflow.py:191-200): as many examples lose their
    label as independent drops would give, all at the r = t end of the batch, so no pair with
    r < t trains the unconditional model; ``independent`` drops any example."""
    spec, n, p = DataSpec((2,), 10), 64, options.label_dropout
    counts, averaged_dropped = [], 0
    for seed in range(400):
        draws = options.draw(np.random.default_rng(seed), n, 0, spec)
        k = int(draws["drop"].sum())
        assert draws["drop"][n - k:].all() and not (draws["drop"] & (draws["r"] < draws["t"])).any()
        counts.append(k)
        loose = attrs.evolve(options, label_dropout_layout="independent").draw(np.random.default_rng(seed), n, 0, spec)
        assert int(loose["drop"].sum()) == k  # the same number of null labels, and the same times
        assert np.array_equal(loose["t"], draws["t"]) and np.array_equal(loose["r"], draws["r"])
        averaged_dropped += int((loose["drop"] & (loose["r"] < loose["t"])).sum())
    # Binomial(n, p) null labels per batch: the mean within 4 standard errors
    assert abs(np.mean(counts) - n * p) < 4 * np.sqrt(n * p * (1 - p) / len(counts))
    assert averaged_dropped > 0.5 * 400 * n * p * options.ratio  # independent drops do reach r < t


def test_the_objective_gives_the_null_label_to_exactly_the_drawn_rows(backend):
    """The backends take the layout from the draws: the prediction of a pair with r < t sees its
    class, the dropped block the null class."""
    spec = DataSpec((2,), 3)
    x, y, draws, noise = batch(n=32, spec=spec)
    draws = {**draws, "drop": np.arange(32) >= 28}
    t, r = draws["t"], draws["r"]
    with float64(backend):
        model = build_backbone(backend, "mlp", MLPOptions(hidden=16, depth=2, time_embed_dim=8), spec)
        mf = objective(backend, "meanflow", MeanFlowOptions(), spec)
        u, _ = mf.regression(model, to_backend(backend, x), to_backend(backend, y),
                             {k: to_backend(backend, v) for k, v in draws.items()}, to_backend(backend, noise))
        z = (1 - t[:, None]) * x + t[:, None] * noise
        labels = np.where(draws["drop"], 3, y)
        expected = to_numpy(call_backbone(backend, model, *(to_backend(backend, a) for a in (z, t, r, labels))))
        np.testing.assert_allclose(to_numpy(u), expected, rtol=1e-12, atol=1e-14)


def test_one_step_of_the_exact_field_maps_noise_to_data(backend):
    noise = np.random.default_rng(0).standard_normal((256, 2))
    with float64(backend):
        model = exact_model(backend, MEAN, STD)
        xp = namespace(backend)

        def model_fn(z, t, r, y):
            times = [xp.full((z.shape[0],), time, dtype=z.dtype) for time in (t, r)]
            return call_backbone(backend, model, z, *times)

        for options in [MeanFlowSamplerOptions(), MeanFlowSamplerOptions(nfe=3, time_grid=(1.0, 0.6, 0.25, 0.0))]:
            out = to_numpy(MeanFlowSampler(options).sample(model_fn, to_backend(backend, noise)))
            np.testing.assert_allclose(out, MEAN + STD * noise, rtol=1e-12)


def test_interval_splitting_holds_for_the_exact_field():
    """(t - r) u(z_t, r, t) = (s - r) u(z_s, r, s) + (t - s) u(z_t, s, t) along the exact flow."""
    rng = np.random.default_rng(0)
    n = 1000
    t = rng.random(n)
    r = t * rng.random(n)
    s = r + rng.random(n) * (t - r)
    z = rng.standard_normal((n, 2)) * 2
    u = lambda z, t, r: exact_average_velocity(z, t[:, None], r[:, None], MEAN, STD, np)  # noqa: E731
    u_st = u(z, t, s)
    z_s = z - (t - s)[:, None] * u_st
    split = (s - r)[:, None] * u(z_s, s, r) + (t - s)[:, None] * u_st
    np.testing.assert_allclose(split, (t - r)[:, None] * u(z, t, r), rtol=1e-10, atol=1e-12)


def test_splitmeanflow_target_of_the_exact_field_is_the_field(backend):
    x, _, draws, noise = batch()
    t, r = draws["t"], draws["r"]
    lam = np.random.default_rng(1).random(len(t))
    z, v = (1 - t[:, None]) * x + t[:, None] * noise, noise - x
    with float64(backend):
        smf = objective(backend, "splitmeanflow", SplitMeanFlowOptions())
        got = to_numpy(smf.target(exact_model(backend, MEAN, STD), *(to_backend(backend, a) for a in (z, t, r)),
                                  None, *(to_backend(backend, a) for a in (v, lam))))
    expected = exact_average_velocity(z, t[:, None], r[:, None], MEAN, STD, np)
    keep = r < t
    np.testing.assert_allclose(got[keep], expected[keep], rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(got[~keep], v[~keep])  # the boundary condition: flow matching
    assert 20 < keep.sum() < len(t)


def test_splitmeanflow_loss_of_the_exact_field_is_zero(backend):
    options = SplitMeanFlowOptions(ratio=0.75)
    rng = np.random.default_rng(3)
    x, noise = np.full((64, 2), MEAN), rng.standard_normal((64, 2))
    draws = options.draw(rng, 64, 0, SPEC)
    with float64(backend):
        loss, parts = objective(backend, "splitmeanflow", options).loss(
            exact_model(backend, MEAN, 0.0), to_backend(backend, x), None,
            {k: to_backend(backend, v) for k, v in draws.items()}, to_backend(backend, noise))
        assert float(to_numpy(loss)) < 1e-24 and float(to_numpy(parts["mse_r_lt_t"])) < 1e-24


@pytest.mark.parametrize("name, options", [("flow_matching", FlowMatchingOptions()),
                                           ("meanflow", MeanFlowOptions(weight_power=0.5)),
                                           ("splitmeanflow", SplitMeanFlowOptions())])
def test_objectives_multiply_in_a_schedule_weight(backend, name, options):
    x, _, _, noise = batch(n=32)
    draws = options.draw(np.random.default_rng(4), 32, 0, SPEC)
    weight = np.random.default_rng(5).random(32)
    with float64(backend):
        model = build_backbone(backend, "mlp", MLPOptions(hidden=16, depth=2, time_embed_dim=8), SPEC)
        loss_fn = objective(backend, name, options)

        def loss(extra):
            d = {k: to_backend(backend, v) for k, v in {**draws, **extra}.items()}
            return float(to_numpy(loss_fn.loss(model, to_backend(backend, x), None, d, to_backend(backend, noise))[0]))

        ones, halves = loss({"weight": np.ones(32)}), loss({"weight": np.full(32, 0.5)})
        assert ones == pytest.approx(loss({}), rel=1e-14) and halves == pytest.approx(ones / 2, rel=1e-14)
        assert loss({"weight": weight}) != pytest.approx(ones, rel=1e-3)


@pytest.mark.parametrize("name, steps", [("meanflow", 1500), ("splitmeanflow", 3000)])
def test_a_trained_model_approaches_the_exact_field(backend, name, steps, tmp_path):
    """Train from scratch on N(1.5, 0.5^2) data, reload the checkpoint, and compare u(z, r, t)
    with the closed form where the data lives, over short and long gaps."""
    from tests_paths import CONFIGS
    from toolkit.checkpoint import MODEL_PREFIX, load_checkpoint, prefixed
    from toolkit.config import load_config
    from toolkit.train import train

    registry = get_registry()
    config = load_config(CONFIGS / "meanflow_toy2d.yaml", [
        f"objective.name={name}", "objective.ratio=0.5", "data.name=gaussian", f"run.steps={steps}",
        "eval.num_samples=500", "logging.progress=false"], registry, backend=backend)
    train(config, backend, registry, out_dir=tmp_path)
    arrays, _ = load_checkpoint(tmp_path / "checkpoints" / f"step_{steps:08d}.safetensors")
    weights = prefixed(arrays, MODEL_PREFIX)
    rng = np.random.default_rng(0)
    t = rng.uniform(0.05, 1.0, 2000)
    r = t * rng.random(2000)
    z = (1 - t[:, None]) * (MEAN + STD * rng.standard_normal((2000, 2))) + t[:, None] * rng.standard_normal((2000, 2))
    with float64(backend):
        model = build_backbone(backend, "mlp", config.model.options, SPEC)
        if backend == "torch":
            import torch

            model.load_state_dict({k: torch.from_numpy(v).double() for k, v in weights.items()})
        else:
            from toolkit.backends.jax.weights import load_named_arrays

            model = load_named_arrays(model, weights)
        u = to_numpy(call_backbone(backend, model, *(to_backend(backend, a) for a in (z, t, r))))
    exact = exact_average_velocity(z, t[:, None], r[:, None], MEAN, STD, np)
    # Relative to the field itself (an untrained network predicts about 0, error 1). MeanFlow
    # measured 0.089 at 1500 steps in both backends (torch 0.072 at 3000; 0.22 with a too coarse
    # time embedding, time_scale 1); SplitMeanFlow 0.152 (JAX) and 0.165 (torch) at 1500, so 3000.
    relative = np.linalg.norm(u - exact) / np.linalg.norm(exact)
    assert relative < 0.15, relative
