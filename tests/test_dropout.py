"""Dropout: masks that follow per-example seeds, so every call of a training step on an example
sees one mask (the prediction and its target's JVP), and both backends drop the same units."""

from __future__ import annotations

import numpy as np
import pytest

from backend_arrays import build_backbone, float64, perturbed, to_backend, to_numpy
from toolkit.dropout import DROPOUT_SEED
from toolkit.interfaces import DataSpec
from toolkit.plugins.dit import DiTOptions
from toolkit.plugins.meanflow import MeanFlowOptions
from toolkit.plugins.unet import UNetOptions
from toolkit.ops import backend_ops
from toolkit.registry import get_registry

RATE = 0.5
NETWORKS = {"dit": (DiTOptions(depth=2, width=16, heads=2, dropout=RATE), (3, 8, 8)),
            "unet": (UNetOptions(channels=8, channel_mult=(1,), blocks=1, attention_resolutions=(), groups=4,
                                 dropout=RATE), (3, 4, 4))}
SEEDS = np.array([0, 1, 7, 2 ** 31 - 1, 123_456_789, 99], dtype=np.int64)


def ops(backend):
    if backend == "torch":
        from toolkit.backends.torch.layers import dropout

        return lambda h, rate, seeds, site: to_numpy(dropout(to_backend(backend, h), rate,
                                                             to_backend(backend, seeds), site))
    import jax

    from toolkit.backends.jax.layers import dropout

    return lambda h, rate, seeds, site: to_numpy(jax.vmap(lambda a, s: dropout(a, rate, s, site))(
        to_backend(backend, h), to_backend(backend, seeds)))


def test_masks_follow_the_seed_the_layer_and_the_position(backend):
    drop = ops(backend)
    h = np.ones((len(SEEDS), 40, 50))
    with float64(backend):
        out = drop(h, 0.2, SEEDS, 3)
        np.testing.assert_array_equal(out, drop(h, 0.2, SEEDS, 3))  # a pure function
        np.testing.assert_array_equal(out[2:4], drop(h[2:4], 0.2, SEEDS[2:4], 3))  # a slice keeps its masks
        assert set(np.unique(out)) == {0.0, 1.25}  # inverted dropout: kept units scaled by 1 / (1 - rate)
        kept = (out > 0).mean(axis=(1, 2))
        assert np.all(np.abs(kept - 0.8) < 5 * np.sqrt(0.8 * 0.2 / 2000))  # five binomial deviations
        assert (drop(h, 0.2, SEEDS, 4) != out).any(axis=(1, 2)).all()  # another layer, other masks
        assert (out[0] != out[1]).any()  # and another example
        np.testing.assert_array_equal(drop(h, 0.0, SEEDS, 3), h)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_both_backends_drop_the_same_units(dtype):
    h = np.random.default_rng(0).standard_normal((len(SEEDS), 3, 5, 7)).astype(dtype)
    for rate in (0.1, 0.5, 0.9):
        with float64("jax") if dtype == "float64" else _nothing():
            masks = {b: ops(b)(h, rate, SEEDS, 11) != 0 for b in ("torch", "jax")}
        np.testing.assert_array_equal(masks["torch"], masks["jax"])
        assert 0 < masks["torch"].mean() < 1


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def seeded(backend, model, seeds):
    """The network on a batch with the given examples' seeds (None: no dropout)."""
    def call(x, t, r):
        x, t, r = (to_backend(backend, a) for a in (x, t, r))
        extra = {} if seeds is None else {DROPOUT_SEED: to_backend(backend, seeds)}
        if backend == "torch":
            return to_numpy(model(x, t, r, None, **extra))
        return to_numpy(jax_call(model, x, t, r, extra))
    return call


def _jax_call(model, x, t, r, extra):
    import jax

    return jax.vmap(lambda *a, **k: model(*a, **k))(x, t, r, None, **extra)


def jax_call(model, x, t, r, extra):
    """One compiled program per shape: op by op, every eager operation of a U-Net compiles alone."""
    import equinox as eqx

    return eqx.filter_jit(_jax_call)(model, x, t, r, extra)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_the_prediction_and_its_target_see_the_same_masks(backend, name):
    """MeanFlow with ratio < 1: the prediction is the network under the examples' masks, and the
    target's JVP differentiates that same masked network (checked by central differences)."""
    options, shape = NETWORKS[name]
    n, averaged = len(SEEDS), 4  # the leading 4 pairs have r < t; the rest take r = t and no JVP
    rng = np.random.default_rng(1)
    z, v = rng.standard_normal((n, *shape)), rng.standard_normal((n, *shape))
    t = 0.3 + 0.6 * rng.random(n)
    r = np.where(np.arange(n) < averaged, t * rng.random(n), t)
    with float64(backend):
        model = perturbed(backend, build_backbone(backend, name, options, DataSpec(shape)))
        mf = get_registry().load("objective", "meanflow", backend)(MeanFlowOptions(ratio=0.5), DataSpec(shape),
                                                                  backend_ops(backend))
        u, target = (to_numpy(a) for a in mf.target(model, *(to_backend(backend, a) for a in (z, t, r)), None,
                                                      to_backend(backend, v), averaged=averaged,
                                                      draws={DROPOUT_SEED: to_backend(backend, SEEDS)}))
        masked = seeded(backend, model, SEEDS)
        np.testing.assert_allclose(u, masked(z, t, r), rtol=1e-12, atol=1e-12)
        assert not np.allclose(u, seeded(backend, model, None)(z, t, r))  # dropout is on

        def target_of(network, eps=1e-5):
            head = slice(0, averaged)
            plus = network(z[head] + eps * v[head], t[head] + eps, r[head])
            minus = network(z[head] - eps * v[head], t[head] - eps, r[head])
            dudt = (plus - minus) / (2 * eps)
            return v[head] - (t[head] - r[head]).reshape(-1, 1, 1, 1) * dudt

        expected = target_of(seeded(backend, model, SEEDS[:averaged]))
        # float64 central differences at eps 1e-5: truncation ~eps^2 = 1e-10 and rounding
        # ~1e-16 / eps = 1e-11 of the scale, so 1e-6 leaves four orders to spare; the assertion
        # after next shows other masks move the target by over 1e3 times the error found here
        np.testing.assert_allclose(target[:averaged], expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(target[averaged:], v[averaged:])
        other_masks = target_of(seeded(backend, model, SEEDS[:averaged] + 1))
        assert np.abs(other_masks - expected).max() > 1e3 * np.abs(target[:averaged] - expected).max()


def test_torch_dropout_layers_of_a_third_party_backbone_share_one_call():
    """``torch.nn.Dropout`` draws from the framework's generator: the objective then takes the
    prediction and the tangent from one JVP call. Here u = a D2(D1(z)) + t elementwise, so the
    product mask m is readable from u, and with one mask d u/dt along (v, 1, 0) = (u - t) v / z + 1."""
    import torch

    class TwoDropouts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor(1.5, dtype=torch.float64))
            self.d1, self.d2 = torch.nn.Dropout(0.3), torch.nn.Dropout(0.3)

        def forward(self, z, t, r, y=None):
            return self.a * self.d2(self.d1(z)) + t[:, None]

    rng = np.random.default_rng(2)
    n, averaged = 64, 32
    z, v = rng.standard_normal((n, 16)), rng.standard_normal((n, 16))
    t = 0.2 + 0.7 * rng.random(n)
    r = np.where(np.arange(n) < averaged, t * rng.random(n), t)
    mf = get_registry().load("objective", "meanflow", "torch")(MeanFlowOptions(ratio=0.5), DataSpec((16,)),
                                                               backend_ops("torch"))
    model = TwoDropouts().train()
    u, target = (a.detach().numpy() for a in mf.target(model, *(torch.from_numpy(a) for a in (z, t, r)), None,
                                                         torch.from_numpy(v), averaged=averaged))
    head = slice(0, averaged)
    dudt = (u[head] - t[head, None]) * v[head] / z[head] + 1
    np.testing.assert_allclose(target[head], v[head] - (t[head] - r[head])[:, None] * dudt, rtol=1e-10, atol=1e-12)
    assert ((u[head] - t[head, None]) == 0).mean() > 0.3  # the masks did drop units
