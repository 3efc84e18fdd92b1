"""The torch backend's fast paths give the numbers of the plain eager path: the joint JVP,
forward-mode dual tensors, and torch.compile (one graph, no breaks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend_arrays import build_backbone
from toolkit.backends.torch.jvp import jvp_mode
from toolkit.interfaces import DataSpec
from toolkit.plugins.meanflow import MeanFlowOptions
from toolkit.plugins.meanflow.torch import MeanFlow
from toolkit.plugins.mlp import MLPOptions

SPEC = DataSpec((2,), 4)


def problem(seed=0, n=32):
    rng = np.random.default_rng(seed)
    options = MeanFlowOptions(ratio=0.5)
    draws = {k: torch.from_numpy(v) for k, v in options.draw(rng, n, 0, SPEC).items()}
    x, noise = (torch.from_numpy(rng.standard_normal((n, 2))) for _ in range(2))
    y = torch.from_numpy(rng.integers(0, 4, n))
    model = build_backbone("torch", "mlp", MLPOptions(hidden=16, depth=2, time_embed_dim=8), SPEC)
    return MeanFlow(options, SPEC), model, (x, y, draws, noise)


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


def test_compiled_loss_is_one_graph_with_the_eager_numbers():
    torch._dynamo.reset()
    objective, model, args = problem(seed=1)

    def loss_fn(x, y, draws, noise):
        return objective.loss(model, x, y, draws, noise)[0]

    explanation = torch._dynamo.explain(loss_fn)(*args)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
    model.zero_grad()
    compiled = torch.compile(loss_fn)(*args)
    compiled.backward()
    compiled_grads = [p.grad.clone() for p in model.parameters()]
    eager = loss_and_grads(objective, model, args)
    assert compiled.item() == pytest.approx(eager[0], rel=1e-10)
    for a, b in zip(compiled_grads, eager[1]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)
