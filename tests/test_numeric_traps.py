"""Where PyTorch and JAX differ by default, and how the toolkit pins each difference down.

Each test first shows the trap is real (the two frameworks' defaults disagree), then that the
toolkit's components and engines make the choice explicit in both backends."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from tests_paths import CONFIGS
from toolkit.config import load_config
from toolkit.interfaces import Batch
from toolkit.parity import compare
from toolkit.registry import get_registry


def engines(config_name="fm_toy2d.yaml", *overrides):
    registry = get_registry()
    config = load_config(CONFIGS / config_name, list(overrides), registry)
    spec = registry.load("dataset", config.data.name, "torch")(config.data.options).spec
    return config, [registry.load("backend", b, b)(config, registry, spec) for b in ("torch", "jax")]


def test_gelu_defaults_differ_and_dit_names_its_choice():
    x = np.linspace(-4, 4, 101)
    with jax.enable_x64(True):
        torch_default = torch.nn.GELU()(torch.from_numpy(x)).numpy()  # exact (erf)
        jax_default = np.asarray(jax.nn.gelu(jnp.asarray(x)))  # tanh approximation
        assert compare(torch_default, jax_default)[0] > 1e-4  # the trap
        torch_tanh = torch.nn.GELU(approximate="tanh")(torch.from_numpy(x)).numpy()
        jax_exact = np.asarray(jax.nn.gelu(jnp.asarray(x), approximate=False))
        assert compare(torch_tanh, jax_default)[1] < 1e-15 and compare(torch_default, jax_exact)[1] < 1e-15
    from toolkit.plugins.dit import DiTOptions
    from toolkit.plugins.dit.torch import Block

    assert DiTOptions().gelu == "tanh"  # DiT's choice, written down rather than inherited
    for choice, approximate in (("tanh", "tanh"), ("exact", "none")):
        assert Block(8, 2, 4.0, choice, 1e-6).gelu.approximate == approximate


def test_layer_norm_eps_reaches_both_backends():
    import equinox as eqx

    assert torch.nn.LayerNorm(4).eps == eqx.nn.LayerNorm(4).eps == 1e-5  # frameworks' default...
    from toolkit.plugins.dit import DiTOptions

    assert DiTOptions().norm_eps == 1e-6  # ...is not DiT's
    # A non-default eps must move both backends identically (a backend ignoring it fails parity),
    # and must matter (else that check would be vacuous).
    from toolkit.config import config_from_dict
    from toolkit.parity import example_configs

    registry = get_registry()
    data = example_configs(registry.get("backbone", "dit"))[0]
    outputs = []
    for eps in (1e-6, 0.5):
        data["model"]["norm_eps"] = eps
        config = config_from_dict(data, "dit example", registry=registry)
        spec = registry.load("dataset", "synthetic", "torch")(config.data.options).spec
        torch_engine, jax_engine = (registry.load("backend", b, b)(config, registry, spec) for b in ("torch", "jax"))
        rng = np.random.default_rng(0)
        jax_engine.load_state_arrays({k: v + 0.1 * rng.standard_normal(v.shape)
                                      for k, v in torch_engine.state_arrays().items()})
        torch_engine.load_state_arrays(jax_engine.state_arrays())
        inputs = (rng.standard_normal((2, *spec.shape)), np.array([0.5, 0.7]), np.array([0.1, 0.2]), np.array([1, 2]))
        output = torch_engine.predict(*inputs)
        assert compare(output, jax_engine.predict(*inputs))[1] < 1e-4, f"the backends disagree at eps {eps}"
        outputs.append(output)
    assert compare(*outputs)[1] > 1e-3


def test_adamw_weight_decay_defaults_differ_and_the_config_sets_every_one():
    torch_defaults = torch.optim.AdamW([torch.zeros(1, requires_grad=True)]).defaults
    optax_decay = inspect.signature(optax.adamw).parameters["weight_decay"].default
    assert torch_defaults["weight_decay"] == 0.01 and optax_decay == 1e-4  # the trap
    config, (torch_engine, jax_engine) = engines("fm_toy2d.yaml", "optimizer.weight_decay=0.05",
                                                 "optimizer.eps=1e-6", "optimizer.betas=[0.8, 0.95]")
    group = torch_engine.optimizer.param_groups[0]
    hyper = {k: float(v) for k, v in jax_engine.opt_state.hyperparams.items()}
    assert (group["weight_decay"], group["eps"], tuple(group["betas"])) == (0.05, 1e-6, (0.8, 0.95))
    assert np.allclose([hyper["weight_decay"], hyper["eps"], hyper["b1"], hyper["b2"]], [0.05, 1e-6, 0.8, 0.95])
    assert not group["amsgrad"] and group["decoupled_weight_decay"]  # AdamW, as optax.adamw


def test_matmul_precision_is_set_by_the_run_not_inherited():
    """Each engine computes with its run's precision, whatever the process had, and leaves the
    process's own setting as it was."""
    for precision, elsewhere in (("high", "highest"), ("highest", "high")):
        torch.set_float32_matmul_precision(elsewhere)
        with jax.default_matmul_precision(elsewhere):
            _, (torch_engine, jax_engine) = engines("fm_toy2d.yaml", f"run.matmul_precision={precision}")
            seen = []
            torch_engine.model.register_forward_pre_hook(lambda *_: seen.append(torch.get_float32_matmul_precision()))
            x = np.zeros((2, 2))
            torch_engine.predict(x, np.ones(2), np.zeros(2))
            assert seen == [precision] and torch.get_float32_matmul_precision() == elsewhere
            with jax_engine.numerics():
                assert jax.config.jax_default_matmul_precision == precision
            jax_engine.predict(x, np.ones(2), np.zeros(2))
            assert jax.config.jax_default_matmul_precision == elsewhere
    torch.set_float32_matmul_precision("highest")


def test_an_engine_leaves_the_process_as_it_found_it():
    """A float64 run switches JAX's x64 on for its own calls only, and drawing its initial weights
    from the run's seed does not reseed torch's global generator: one test's engine cannot
    change the dtype or the random numbers of the next."""
    rng_before = torch.get_rng_state()
    config, (torch_engine, jax_engine) = engines("fm_toy2d.yaml", "run.dtype=float64", "run.seed=3")
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert not jax.config.jax_enable_x64 and jnp.asarray(np.ones(2)).dtype == jnp.float32
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2))
    for engine in (torch_engine, jax_engine):
        assert engine.predict(x, np.full(4, 0.5), np.zeros(4)).dtype == np.float64
        engine.train_step(Batch(x), config.objective.options.draw(rng, 4, 0, engine.spec), 1e-3, noise=x)
    assert not jax.config.jax_enable_x64 and jnp.asarray(np.ones(2)).dtype == jnp.float32
    # and the run's seed alone decides the initial weights, whatever the global generator holds
    weights = []
    for global_seed in (123, 456):
        torch.manual_seed(global_seed)
        weights.append(engines("fm_toy2d.yaml", "run.dtype=float64", "run.seed=3")[1][0].state_arrays())
    assert all(np.array_equal(weights[0][k], v) for k, v in weights[1].items())


def test_weights_are_copied_never_redrawn_from_seeds():
    """The two frameworks' generators give different weights for the same seed: parity holds
    only because the harness copies weights by name."""
    _, (torch_engine, jax_engine) = engines("fm_toy2d.yaml")
    a, b = torch_engine.state_arrays(), jax_engine.state_arrays()
    assert set(a) == set(b)
    assert max(compare(a[k], b[k])[1] for k in a if a[k].any()) > 0.1
    jax_engine.load_state_arrays(a)
    assert all(np.array_equal(v, jax_engine.state_arrays()[k].reshape(v.shape)) for k, v in a.items())
