"""Cross-backend parity of the built-in slice: the same weights and inputs give the same
outputs, loss and gradients in PyTorch and JAX (float64, relative error 1e-10)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from toolkit.interfaces import DataSpec
from toolkit.plugins.flow_matching import FlowMatchingOptions
from toolkit.plugins.meanflow import Guidance, MeanFlowOptions
from toolkit.plugins.splitmeanflow import SplitMeanFlowOptions
from toolkit.registry import get_registry

RTOL = 1e-10


def max_rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def build_pair(num_classes: int):
    import equinox as eqx

    from toolkit.backends.jax.weights import load_named_arrays, named_arrays
    from toolkit.plugins.mlp import MLPOptions

    registry = get_registry()
    spec = DataSpec((2,), num_classes)
    options = MLPOptions(hidden=32, depth=2, time_embed_dim=16)
    torch.manual_seed(0)
    torch_model = registry.load("backbone", "mlp", "torch")(options, spec).double()
    jax_model = registry.load("backbone", "mlp", "jax")(options, spec, key=jax.random.PRNGKey(1))
    jax_model = jax.tree_util.tree_map(lambda a: a.astype("float64") if eqx.is_inexact_array(a) else a, jax_model)
    torch_weights = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    assert {k: v.shape for k, v in named_arrays(jax_model).items()} == {k: v.shape for k, v in torch_weights.items()}
    return spec, torch_model, load_named_arrays(jax_model, torch_weights)


def inputs(spec, n=16, seed=0):
    rng = np.random.default_rng(seed)
    t = rng.random(n)
    return {"x": rng.standard_normal((n, 2)), "t": t, "r": t * rng.random(n),
            "y": rng.integers(0, spec.num_classes, n) if spec.conditional else None,
            "noise": rng.standard_normal((n, 2)), "drop": rng.random(n) < 0.3}


@pytest.mark.parametrize("num_classes", [0, 8])
def test_mlp_outputs_agree(num_classes):
    with jax.enable_x64(True):
        spec, torch_model, jax_model = build_pair(num_classes)
        a = inputs(spec)
        as_torch = {k: (torch.from_numpy(v) if v is not None else None) for k, v in a.items()}
        expected = torch_model(as_torch["x"], as_torch["t"], as_torch["r"], as_torch["y"]).detach().numpy()
        got = jax.vmap(jax_model)(a["x"], a["t"], a["r"], a["y"])
        assert max_rel(got, expected) < RTOL
        # The null class (y=None) is a separate, equally matched path.
        expected = torch_model(as_torch["x"], as_torch["t"], as_torch["r"], None).detach().numpy()
        assert max_rel(jax.vmap(jax_model)(a["x"], a["t"], a["r"], None), expected) < RTOL


OBJECTIVES = {
    "flow_matching": FlowMatchingOptions(),
    "meanflow": MeanFlowOptions(ratio=0.5, weight_power=0.75,
                                guidance=Guidance(omega=0.5, kappa=0.3, t_min=0.1, t_max=0.9)),
    "splitmeanflow": SplitMeanFlowOptions(ratio=0.6, weight_power=0.5),
}


@pytest.mark.parametrize("num_classes", [0, 8])
@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objective_loss_and_gradients_agree(name, num_classes):
    import equinox as eqx

    from toolkit.backends.jax.weights import named_arrays

    registry = get_registry()
    with jax.enable_x64(True):
        spec, torch_model, jax_model = build_pair(num_classes)
        options = OBJECTIVES[name]
        a = inputs(spec, seed=1)
        draws = options.draw(np.random.default_rng(2), len(a["x"]), 0, spec)
        torch_objective = registry.load("objective", name, "torch")(options, spec)
        jax_objective = registry.load("objective", name, "jax")(options, spec)

        tensor = lambda v: None if v is None else torch.from_numpy(v)  # noqa: E731
        loss, torch_parts = torch_objective.loss(torch_model, tensor(a["x"]), tensor(a["y"]),
                                                 {k: tensor(v) for k, v in draws.items()}, tensor(a["noise"]))
        loss.backward()
        torch_grads = {k: p.grad.numpy() for k, p in torch_model.named_parameters()}

        def jax_loss(model):
            return jax_objective.loss(model, a["x"], a["y"], draws, a["noise"])

        (value, jax_parts), grads = eqx.filter_value_and_grad(jax_loss, has_aux=True)(jax_model)
        assert max_rel(value, loss.item()) < RTOL
        assert set(jax_parts) == set(torch_parts)
        for part, number in torch_parts.items():
            assert max_rel(jax_parts[part], number.item()) < RTOL, part
        jax_grads = named_arrays(grads)
        assert set(jax_grads) == set(torch_grads)
        for parameter, grad in torch_grads.items():
            assert max_rel(jax_grads[parameter], grad) < RTOL, parameter
