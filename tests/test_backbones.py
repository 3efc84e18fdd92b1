"""Backbones: shapes, conditioning, and the DiT sizes' parameter counts, in each backend."""

from __future__ import annotations

import math

import attrs
import numpy as np
import pytest

from backend_arrays import build_backbone, call_backbone, float64, perturbed, to_backend, to_numpy
from toolkit.interfaces import DataSpec
from toolkit.plugins.dit import DiTOptions
from toolkit.plugins.mlp import MLPOptions
from toolkit.plugins.unet import UNetOptions

# Parameters of DiT at 256x256 (32x32x4 latents, 1000 classes) with MeanFlow's second time
# embedder: the MeanFlow paper reports B/2 131M, L/2 459M, XL/2 676M (DiT's own table,
# with one time embedder: 130M, 458M, 675M).
EXPECTED_MILLIONS = {"S": 33.1, "B": 131.1, "L": 459.1, "XL": 676.4}
LATENTS = DataSpec((4, 32, 32), 1000)


def parameter_count(backend, options, spec) -> int:
    if backend == "torch":
        import torch

        from toolkit.plugins.dit.torch import DiT

        with torch.device("meta"):  # shapes only: XL/2 would need 2.7 GB
            return sum(p.numel() for p in DiT(options, spec).parameters())
    import equinox as eqx
    import jax

    from toolkit.plugins.dit.jax import DiT

    shapes = eqx.filter_eval_shape(DiT, options, spec, key=jax.random.PRNGKey(0))
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes) if hasattr(leaf, "shape"))


@pytest.mark.parametrize("size", sorted(EXPECTED_MILLIONS))
def test_dit_sizes_have_the_papers_parameter_counts(backend, size):
    count = parameter_count(backend, DiTOptions(size=size), LATENTS)
    assert count / 1e6 == pytest.approx(EXPECTED_MILLIONS[size], abs=0.05)


CASES = {"mlp": (MLPOptions(hidden=16, depth=2, time_embed_dim=8), (2,)),
         "dit": (DiTOptions(depth=1, width=16, heads=2), (3, 8, 8))}


@pytest.mark.parametrize("name", sorted(CASES))
def test_backbone_shapes_and_conditioning(backend, name):
    options, shape = CASES[name]
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((4, *shape)), rng.random(4)
    with float64(backend):
        model = build_backbone(backend, name, options, DataSpec(shape, 3))
        if name == "dit":  # adaLN-Zero: the output is exactly zero at initialisation
            assert not to_numpy(call_backbone(backend, model, *(to_backend(backend, a) for a in (x, t, t)))).any()
        model = perturbed(backend, model)

        def u(y, r=0 * t):
            return to_numpy(call_backbone(backend, model, *(to_backend(backend, a) for a in (x, t, r, y))))

        unconditional = u(None)
        assert unconditional.shape == x.shape
        np.testing.assert_array_equal(unconditional, u(np.full(4, 3)))  # y=None is the null class, index 3
        assert not np.allclose(unconditional, u(np.zeros(4, int)))  # the label is seen
        assert not np.allclose(unconditional, u(None, r=t))  # and so is the second time


GAP_CASES = {**CASES, "unet": (UNetOptions(channels=8, channel_mult=(1,), blocks=1, attention_resolutions=(),
                                            groups=4), (3, 4, 4))}


@pytest.mark.parametrize("name", sorted(GAP_CASES))
def test_a_network_of_the_gap_alone_ignores_t_and_has_no_t_embedder(backend, name):
    """``time_inputs: gap`` (the iMF network): the output depends on t - r only. The backbones
    share that through ``toolkit.conditions.embedded_times``, so the U-Net, slow to run eagerly
    in JAX, is checked for its weights only."""
    options, shape = GAP_CASES[name]
    rng = np.random.default_rng(1)
    x, t = rng.standard_normal((4, *shape)), 0.5 + 0.5 * rng.random(4)
    with float64(backend):
        both = build_backbone(backend, name, options, DataSpec(shape))
        gap = build_backbone(backend, name, attrs.evolve(options, time_inputs="gap"), DataSpec(shape))
    if name != "unet":
        with float64(backend):
            model = perturbed(backend, gap)

            def u(t, r):
                return to_numpy(call_backbone(backend, model, *(to_backend(backend, a) for a in (x, t, r))))

            np.testing.assert_array_equal(u(t, t - 0.25), u(t - 0.5, t - 0.75))  # the same gap, other times
            assert not np.allclose(u(t, t - 0.25), u(t, t - 0.5))  # the gap is seen
    sizes_both, sizes_gap = parameter_sizes(backend, both), parameter_sizes(backend, gap)
    assert sum(sizes_gap.values()) < sum(sizes_both.values())  # one time embedding fewer
    if name != "mlp":  # the MLP embeds times without weights; the others drop their t-embedder
        assert {n.split(".")[0] for n in sizes_both} - {n.split(".")[0] for n in sizes_gap} == {"t_embedder"}


def parameter_sizes(backend, model) -> dict[str, int]:
    if backend == "torch":
        return {name: p.numel() for name, p in model.named_parameters()}
    from toolkit.backends.jax.weights import named_arrays

    return {name: a.size for name, a in named_arrays(model).items()}


def test_dit_rejects_data_the_patch_does_not_divide():
    with pytest.raises(ValueError, match=r"DiT needs \(channels, height, width\) data divisible by patch 2, "
                                         r"got shape \(3, 7, 8\)"):
        build_backbone("torch", "dit", DiTOptions(depth=1, width=16, heads=2), DataSpec((3, 7, 8)))


def test_dit_starts_from_the_same_initialisation_in_both_backends():
    """Not the same numbers (each backend draws its own), the same distributions: DiT's
    Xavier-uniform linears, N(0, 0.02) embeddings, zero adaLN-Zero layers and biases."""
    from toolkit.backends.jax.weights import named_arrays

    options, spec = DiTOptions(depth=2, width=64, heads=4), DataSpec((4, 8, 8), 10)
    torch_weights = {k: v.detach().numpy() for k, v in build_backbone("torch", "dit", options, spec).state_dict().items()}
    with float64("jax"):
        jax_weights = named_arrays(build_backbone("jax", "dit", options, spec))
    assert set(torch_weights) == set(jax_weights)
    for name, a in torch_weights.items():
        b = jax_weights[name].reshape(a.shape)
        assert (a == 0).all() == (b == 0).all(), name
        if a.ndim >= 2 and not (a == 0).all():
            assert b.std() == pytest.approx(a.std(), rel=0.15), name
            assert np.abs(b).max() <= np.abs(a).max() * 1.2 + 0.1, name
