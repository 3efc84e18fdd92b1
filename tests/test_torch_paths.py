"""The torch backend's fast paths give the numbers of the plain eager path: the joint JVP and
forward-mode dual tensors (torch.compile: tests/test_torch_compile.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend_arrays import build_backbone
from toolkit.backends.torch.jvp import jvp_mode
from toolkit.interfaces import DataSpec
from toolkit.plugins.meanflow import MeanFlowOptions
from toolkit.backends.torch.ops import OPS
from toolkit.plugins.meanflow.objective import MeanFlow
from toolkit.plugins.mlp import MLPOptions

SPEC = DataSpec((2,), 4)


def problem(seed=0, n=32):
    rng = np.random.default_rng(seed)
    options = MeanFlowOptions(ratio=0.5)
    draws = {k: torch.from_numpy(v) for k, v in options.draw(rng, n, 0, SPEC).items()}
    x, noise = (torch.from_numpy(rng.standard_normal((n, 2))) for _ in range(2))
    y = torch.from_numpy(rng.integers(0, 4, n))
    model = build_backbone("torch", "mlp", MLPOptions(hidden=16, depth=2, time_embed_dim=8), SPEC)
    return MeanFlow(options, SPEC, OPS), model, (x, y, draws, noise)


def loss_and_grads(objective, model, args, **target_options):
    model.zero_grad()
    if target_options:
        original = objective.target
        objective.target = lambda *a, **k: original(*a, **k, **target_options)
    loss, _ = objective.loss(model, *args)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("mode", ["func", "forward_ad"])
def test_joint_and_separate_jvp_recipes_agree(mode):
    objective, model, args = problem()
    with jvp_mode(mode):
        separate = loss_and_grads(objective, model, args)
        joint = loss_and_grads(objective, model, args, joint=True)
    assert joint[0] == pytest.approx(separate[0], rel=1e-12)
    for a, b in zip(joint[1], separate[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("joint", [False, True])
def test_under_bf16_autocast_the_target_stays_float32(joint):
    """mixed_precision: bf16 autocasts the prediction only: the target's JVP and the loss run in
    float32, as the authors' code (its meanflow.py:54). torch-only: JAX has no autocast."""
    from toolkit.plugins.dit import DiTOptions

    torch.manual_seed(0)
    spec = DataSpec((4, 8, 8))
    model = build_backbone("torch", "dit", DiTOptions(depth=2, width=64, heads=4), spec).float()
    with torch.no_grad():  # off adaLN-Zero's zero output
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    rng = np.random.default_rng(0)
    z, v = (torch.from_numpy(rng.standard_normal((16, *spec.shape)).astype(np.float32)) for _ in range(2))
    t = torch.from_numpy(rng.uniform(0.1, 1.0, 16).astype(np.float32))
    r = t * torch.from_numpy(rng.random(16).astype(np.float32))
    mf = MeanFlow(MeanFlowOptions(ratio=1.0), spec, OPS)
    u32, target32 = (a.detach() for a in mf.target(model, z, t, r, None, v, joint=joint))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        u16, target16 = (a.detach() for a in mf.target(model, z, t, r, None, v, joint=joint))
        error = OPS.squared_error(u16, target16)
    relative = lambda a, b: float((a.float() - b).norm() / b.norm())  # noqa: E731
    assert error.dtype == torch.float32
    if not joint:  # the eager prediction is autocast; the joint one comes from the float32 JVP
        assert relative(u16, u32) > 1e-4
    assert relative(target16, target32) < 1e-6  # bf16 in the JVP: about 2e-4 (benchmarks/bf16_target.py)
