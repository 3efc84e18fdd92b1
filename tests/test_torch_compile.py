"""torch.compile traces the MeanFlow loss of every built-in backbone, in both JVP modes, as one
graph with the eager numbers. In a file of its own so that pytest-xdist can give these
compile-bound tests a worker of their own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend_arrays import build_backbone
from test_torch_paths import loss_and_grads, problem
from toolkit.backends.torch.jvp import jvp_mode
from toolkit.interfaces import DataSpec
from toolkit.plugins.meanflow import MeanFlowOptions
from toolkit.backends.torch.ops import OPS
from toolkit.plugins.meanflow.objective import MeanFlow


def test_compiled_loss_is_one_graph_with_the_eager_numbers():
    torch._dynamo.reset()
    objective, model, args = problem(seed=1)

    def loss_fn(x, y, draws, noise):
        return objective.loss(model, x, y, draws, noise)[0]

    explanation = torch._dynamo.explain(loss_fn)(*args)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
    assert_compiled_matches_eager(objective, model, args)


def assert_compiled_matches_eager(objective, model, args, **compile_options):
    """The compiled MeanFlow loss and its gradients equal the eager ones (float64). The compiled
    graph sums in another order (fused kernels, the primitive group norm), which moves float64
    results by about 1e-15 per operation; 1e-10 on the loss and 1e-8 on the gradients leave room
    for that through the backward pass while a wrong derivative is off by far more."""
    model.zero_grad()
    compiled = torch.compile(lambda *a: objective.loss(model, *a)[0], **compile_options)(*args)
    compiled.backward()
    compiled_grads = [p.grad.clone() for p in model.parameters()]
    eager = loss_and_grads(objective, model, args)
    assert compiled.item() == pytest.approx(eager[0], rel=1e-10)
    for a, b in zip(compiled_grads, eager[1]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def _image_backbone(name: str, spec: DataSpec):
    from toolkit.plugins.dit import DiTOptions
    from toolkit.plugins.unet import UNetOptions

    options = {"unet": UNetOptions(channels=8, channel_mult=(1, 2), blocks=1, attention_resolutions=(4,), groups=4),
               "dit": DiTOptions(depth=2, width=32, heads=4, frequency_dim=16)}[name]
    model = build_backbone("torch", name, options, spec)
    with torch.no_grad():  # off the zero-initialised layers, so every weight gets a gradient
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


@pytest.mark.parametrize(("backbone", "mode"), [("unet", "func"), ("unet", "forward_ad"), ("dit", "func")])
def test_every_image_backbone_compiles_with_every_jvp_mode(backbone, mode):
    """torch.compile traces the MeanFlow loss of the U-Net and the DiT as one graph in both JVP
    modes, with the eager numbers. Traced through AOTAutograd without Inductor's code generation
    (``backend="aot_eager"``): the tracing is what failed (the U-Net's group_norm inside the JVP,
    pytorch/pytorch issue 152185), and generating code for it takes minutes on two cores. The DiT
    in one mode: both modes share every operation of it but the JVP's mechanism, which the U-Net
    covers (about 40 s of the suite each)."""
    torch._dynamo.reset()
    spec = DataSpec((3, 8, 8), 4)
    torch.manual_seed(0)
    model = _image_backbone(backbone, spec)
    rng = np.random.default_rng(2)
    options = MeanFlowOptions(ratio=0.5)
    draws = {k: torch.from_numpy(v) for k, v in options.draw(rng, 4, 0, spec).items()}
    x, noise = (torch.from_numpy(rng.standard_normal((4, *spec.shape))) for _ in range(2))
    args = (x, torch.from_numpy(rng.integers(0, 4, 4)), draws, noise)
    with jvp_mode(mode):
        assert_compiled_matches_eager(MeanFlow(options, spec, OPS), model, args, backend="aot_eager", fullgraph=True)
