"""Cross-backend parity of the built-in slice: the same weights and inputs give the same
outputs, loss and gradients in PyTorch and JAX (float64, relative error 1e-10)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from backend_arrays import build_backbone, perturbed
from toolkit.interfaces import DataSpec
from toolkit.parity import compare
from toolkit.plugins.dit import DiTOptions
from toolkit.plugins.mlp import MLPOptions
from toolkit.plugins.flow_matching import FlowMatchingOptions
from toolkit.plugins.meanflow import Guidance, MeanFlowOptions
from toolkit.plugins.splitmeanflow import SplitMeanFlowOptions
from toolkit.ops import backend_ops
from toolkit.registry import get_registry

RTOL = 1e-10


def max_rel(got, expected) -> float:
    """The harness's relative error, against the torch reference ``expected``."""
    return compare(expected, got)[1]


BACKBONES = {
    "mlp": (MLPOptions(hidden=32, depth=2, time_embed_dim=16), (2,)),
    "dit": (DiTOptions(depth=2, width=32, heads=4), (4, 8, 8)),
}


def build_pair(backbone: str, num_classes: int):
    """The same weights in both backends; DiT's zero-initialised layers are perturbed so
    that every parameter takes part."""
    from toolkit.backends.jax.weights import load_named_arrays, named_arrays

    options, shape = BACKBONES[backbone]
    spec = DataSpec(shape, num_classes)
    torch_model = perturbed("torch", build_backbone("torch", backbone, options, spec), scale=0.05)
    jax_model = build_backbone("jax", backbone, options, spec, seed=1)
    torch_weights = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    assert {k: v.size for k, v in named_arrays(jax_model).items()} == {k: v.size for k, v in torch_weights.items()}
    return spec, torch_model, load_named_arrays(jax_model, torch_weights)


def inputs(spec, n=6, seed=0):
    rng = np.random.default_rng(seed)
    t = rng.random(n)
    return {"x": rng.standard_normal((n, *spec.shape)), "t": t, "r": t * rng.random(n),
            "y": rng.integers(0, spec.num_classes, n) if spec.conditional else None,
            "noise": rng.standard_normal((n, *spec.shape)), "drop": rng.random(n) < 0.3}


@pytest.mark.parametrize("num_classes", [0, 8])
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_backbone_outputs_agree(backbone, num_classes):
    with jax.enable_x64(True):
        spec, torch_model, jax_model = build_pair(backbone, num_classes)
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
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objective_loss_and_gradients_agree(name, backbone, num_classes):
    import equinox as eqx

    from toolkit.backends.jax.weights import named_arrays

    registry = get_registry()
    with jax.enable_x64(True):
        spec, torch_model, jax_model = build_pair(backbone, num_classes)
        options = OBJECTIVES[name]
        a = inputs(spec, seed=1)
        draws = options.draw(np.random.default_rng(2), len(a["x"]), 0, spec)
        torch_objective = registry.load("objective", name, "torch")(options, spec, backend_ops("torch"))
        jax_objective = registry.load("objective", name, "jax")(options, spec, backend_ops("jax"))

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
