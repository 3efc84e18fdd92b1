"""Samplers against a flow known in closed form, run on each backend's arrays; the metric
against analytic distances."""

from __future__ import annotations

import attrs
import numpy as np
import pytest

from toolkit.config import config_from_dict
from toolkit.errors import ConfigError
from toolkit.plugins.samplers import Euler, EulerOptions, Heun, HeunOptions
from toolkit.plugins.sliced_wasserstein import SlicedWasserstein, SlicedWassersteinOptions
from toolkit.registry import get_registry

MEAN, STD = 1.5, 0.5  # data N(MEAN, STD^2) per coordinate


def gaussian_velocity(z, t, r):
    """The exact marginal velocity E[e - x | z_t = z] for Gaussian data: the flow is affine,
    so the exact sampler maps noise e to MEAN + STD * e."""
    variance = (1 - t) ** 2 * STD**2 + t**2
    return -MEAN + (t - (1 - t) * STD**2) / variance * (z - (1 - t) * MEAN)


def as_backend(array, backend):
    if backend == "torch":
        import torch

        return torch.from_numpy(array)
    import jax

    return jax.numpy.asarray(array)


def sampling_error(sampler, backend, noise) -> float:
    import jax

    with jax.enable_x64(True):
        out = sampler.sample(lambda z, t, r, y: gaussian_velocity(z, t, r), as_backend(noise, backend))
        return float(np.max(np.abs(np.asarray(out) - (MEAN + STD * noise))))


@pytest.mark.parametrize("make, order", [(lambda n: Euler(EulerOptions(nfe=n)), 1),
                                         (lambda n: Heun(HeunOptions(nfe=n)), 2)])
def test_ode_samplers_converge_at_their_order(backend, make, order):
    noise = np.random.default_rng(0).standard_normal((64, 2))
    errors = [sampling_error(make(n), backend, noise) for n in (16, 32, 64, 128)]
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    assert errors[-1] < 0.05
    # halving the step divides the error by 2^order once the step is small
    assert all(ratio > 1.8 for ratio in ratios) and 0.9 < ratios[-1] / 2**order < 1.1, (errors, ratios)


def test_guidance_combines_conditional_and_null_predictions(backend):
    calls = []

    def model_fn(z, t, r, y):
        calls.append(y is None)
        return z * 0 + (1.0 if y is None else 3.0)

    noise = as_backend(np.zeros((4, 2)), backend)
    labels = as_backend(np.arange(4), backend)
    out = Euler(EulerOptions(nfe=1, guidance=2.0)).sample(model_fn, noise, labels)
    # u = u_null + 2 (u_y - u_null) = 1 + 2 * 2 = 5, one step of length 1 from 0
    assert np.allclose(np.asarray(out), -5.0) and calls == [False, True]
    assert np.allclose(np.asarray(Euler(EulerOptions(nfe=1, guidance=2.0)).sample(model_fn, noise)), -1.0)


def test_heun_requires_an_even_nfe():
    data = {"data": "moons", "model": "mlp", "objective": "flow_matching",
            "sampler": {"name": "heun", "nfe": 3}}
    with pytest.raises(ConfigError, match=r"sampler.nfe: got 3, expected an even number >= 2"):
        config_from_dict(data, registry=get_registry())
    # the same rule for a value given at sampling time (toolkit eval --nfe, toolkit sample --guidance)
    from toolkit.evaluation import make_sampler

    config = config_from_dict({**data, "sampler": {"name": "heun", "nfe": 4}}, registry=get_registry())
    with pytest.raises(ConfigError, match=r"^sampler.nfe: got 3, expected an even number >= 2 \(two evaluations"):
        make_sampler(config, "torch", get_registry(), nfe=3)
    with pytest.raises(ConfigError, match=r"^sampler.guidance: got -1.0, expected a value >= 0$"):
        make_sampler(config, "torch", get_registry(), guidance=-1.0)


def test_an_objective_with_repeated_conditions_is_a_config_error():
    from toolkit.interfaces import DataSpec

    config = config_from_dict({"data": "moons", "model": "mlp", "objective": "flow_matching", "sampler": "euler"},
                              registry=get_registry())
    options = type("Options", (), {"conditions": ("omega", "omega")})()  # a plugin's options, declared twice
    config = attrs.evolve(config, objective=attrs.evolve(config.objective, options=options))
    with pytest.raises(ConfigError, match=r"objective.conditions: objective 'flow_matching' declares "
                                          r"\('omega', 'omega'\); expected distinct non-empty names"):
        config.network_spec(DataSpec((2,)))


def test_sliced_wasserstein_of_a_translation():
    """Shifting a sample by d shifts every projection by theta.d, so SW2 = sqrt(E (theta.d)^2) = |d|/sqrt(2)."""
    metric = SlicedWasserstein(SlicedWassersteinOptions(projections=20000))
    a = np.random.default_rng(0).standard_normal((500, 2))
    d = np.array([3.0, 4.0])
    assert metric(a, a) == 0.0
    assert metric(a + d, a) == pytest.approx(5.0 / np.sqrt(2), rel=0.02)
    # different sizes compare through quantiles
    assert metric(np.repeat(a, 2, axis=0) + d, a) == pytest.approx(5.0 / np.sqrt(2), rel=0.02)
    with pytest.raises(ValueError, match="samples have 3 dimensions, reference 2"):
        metric(np.zeros((5, 3)), a)
