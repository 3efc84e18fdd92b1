"""The package's own tests: the toolkit's shared checks (behaviour in both backends, parity of
the two), and iMF's formulas checked against the network called directly."""

import numpy as np
import pytest

from toolkit.api import Batch, DataSpec
from toolkit.testing import ComponentChecks, example_engine
from toolkit_imf.plugin import GuidanceDraws, ImprovedMeanFlowOptions, ImprovedMeanFlowSampler, \
    ImprovedMeanFlowSamplerOptions


class TestImprovedMeanFlow(ComponentChecks):
    distribution = "toolkit-imf"


def test_guidance_draws_follow_their_density():
    omega = GuidanceDraws(omega_max=8.0, beta=1.0).omega(np.random.default_rng(0), 200_000)
    assert omega.min() >= 1.0 and omega.max() <= 8.0
    # log-uniform on [1, 8]: log(omega) / log(8) is uniform
    np.testing.assert_allclose(np.quantile(np.log(omega) / np.log(8.0), [0.25, 0.5, 0.75]), [0.25, 0.5, 0.75],
                               atol=0.01)
    uniform = GuidanceDraws(omega_max=8.0, beta=0.0).omega(np.random.default_rng(0), 200_000)
    assert abs(uniform.mean() - 4.5) < 0.02


def test_the_interval_is_drawn_where_r_is_below_t_and_whole_elsewhere():
    options = ImprovedMeanFlowOptions()
    draws = options.draw(np.random.default_rng(0), 64, 0, DataSpec((2,), 4))
    n = options.averaged(64)
    assert n == 32 and (draws["r"][:n] < draws["t"][:n]).all() and (draws["r"][n:] == draws["t"][n:]).all()
    assert (draws["t_min"][:n] <= 0.5).all() and (draws["t_max"][:n] >= 0.5).all()
    assert (draws["t_min"][n:] == 0).all() and (draws["t_max"][n:] == 1).all()
    assert options.conditions == ("guidance", "guidance_t_min", "guidance_t_max")


def test_guidance_on_unlabelled_data_is_an_error_naming_the_key():
    with pytest.raises(Exception, match="objective.guidance.*null"):
        ImprovedMeanFlowOptions().draw(np.random.default_rng(0), 8, 0, DataSpec((2,), 0))


def _engine(backend):
    return example_engine(backend, {"objective": {"name": "imf", "label_dropout": 0.25}, "sampler": {"name": "imf"}},
                          seed=1, scale=0.1)


def test_prediction_and_target_are_imfs_formulas(backend):
    """V = u(z, r, t | own) + (t - r) JVP along (u(z, t, t | tangent), 0, 1), and
    v_g = (e - x) + (1 - 1/w) (u(z, t, t | y, w) - u(z, t, t | null, 1)), recomputed here
    from the network alone (engine.predict and engine.jvp), in both backends."""
    engine, config, spec = _engine(backend)
    rng = np.random.default_rng(2)
    n = 16
    x, noise = rng.standard_normal((n, 2)), rng.standard_normal((n, 2))
    y = rng.integers(0, 4, n)
    draws = config.objective.options.draw(rng, n, 0, spec)
    draws["t_min"][:4], draws["t_max"][:4] = 0.99, 1.0  # a few pairs outside their interval
    prediction, target = engine.regression(Batch(x, y), draws, noise)

    t, r, drop, omega = draws["t"], draws["r"], draws["drop"], draws["omega"]
    z, v = (1 - t[:, None]) * x + t[:, None] * noise, noise - x
    seen = np.where(drop, 4, y)
    w = np.where((t >= draws["t_min"]) & (t <= draws["t_max"]), omega, 1.0)
    whole = lambda w_: np.stack([1 - 1 / w_, np.zeros(n), np.ones(n)], 1)  # noqa: E731
    v_model = engine.predict(z, t, t, seen, whole(w))
    v_null = engine.predict(z, t, t, np.full(n, 4), whole(np.ones(n)))
    expected_target = v + np.where(drop, 0.0, 1 - 1 / w)[:, None] * (v_model - v_null)
    own = np.stack([1 - 1 / omega, draws["t_min"], draws["t_max"]], 1)
    u, dudt = engine.jvp(z, t, r, seen, v_model, own)
    expected_prediction = u + (t - r)[:, None] * dudt

    assert drop.any() and (w == 1).any() and (w > 1).any(), "the draws should exercise every case"
    np.testing.assert_allclose(target, expected_target, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(prediction, expected_prediction, rtol=1e-10, atol=1e-12)


def test_the_guidance_scale_is_chosen_at_sampling_time(backend):
    engine, _, _ = _engine(backend)
    noise, y = np.random.default_rng(3).standard_normal((8, 2)), np.arange(8) % 4
    sample = lambda **o: engine.sample(ImprovedMeanFlowSampler(ImprovedMeanFlowSamplerOptions(**o)), noise, y)  # noqa: E731
    plain, guided = sample(guidance=1.0), sample(guidance=4.0)
    assert np.abs(plain - guided).max() > 1e-6
    assert np.array_equal(guided, sample(guidance=4.0))
    # a sampler that gives the network no guidance is refused, not silently unguided
    with pytest.raises(Exception, match="conditioned on guidance, guidance_t_min, guidance_t_max"):
        sample(guidance=None)
