"""The U-Net backbone: parameter names, float64 parity of outputs, JVPs and gradients between
the backends, its behaviour in each backend, and its size at the defaults."""

from __future__ import annotations

import functools
import math

import attrs
import equinox as eqx
import jax
import numpy as np
import pytest
import torch

from backend_arrays import build_backbone, call_backbone, float64, perturbed, to_backend, to_numpy
from toolkit.backends.jax.weights import load_named_arrays, named_arrays
from toolkit.backends.torch.jvp import jvp
from toolkit.config import InvalidValue
from toolkit.interfaces import DataSpec
from toolkit.parity import compare
from toolkit.plugins.unet import UNetOptions

RTOL = 1e-10
#: two levels (8x8 and 4x4), attention at 4x4 and in the middle, two heads.
OPTIONS = UNetOptions(channels=16, channel_mult=(1, 2), blocks=1, attention_resolutions=(4,), heads=2, groups=4)
SHAPE = (3, 8, 8)
# At the defaults on CIFAR-10's shape. EDM's DDPM++ has 55.7M: here the scale-and-shift affine
# layers add 33 blocks x (512 x 256 + 256) = 4,333,824 and the second time embedder 328,704;
# the other 55,732,739 are EDM's layers (which have 1,152 more, in its augmentation-label map).
DEFAULT_COUNT = 60_395_267


def build(backend: str, spec: DataSpec, options: UNetOptions = OPTIONS, seed: int = 0):
    return build_backbone(backend, "unet", options, spec, seed)


# backend_arrays' perturbed and call_backbone, with JAX's noise drawn in NumPy and its calls
# compiled whole: eagerly, JAX compiles every operation on its own, and a random kernel for
# every weight shape (which took this file over a minute).
jitted_call = eqx.filter_jit(call_backbone)


def perturb(backend: str, model, scale: float = 0.1):
    if backend == "torch":
        return perturbed(backend, model, scale)
    rng = np.random.default_rng(0)
    return load_named_arrays(model, {k: v + scale * rng.standard_normal(v.shape)
                                     for k, v in named_arrays(model).items()})


def call(backend: str, model, x, t, r, y=None):
    return (call_backbone if backend == "torch" else jitted_call)(backend, model, x, t, r, y)


def max_rel(got, expected) -> float:
    """Relative error against the torch reference ``expected``."""
    return compare(expected, got)[1]


def build_pair(num_classes: int):
    """The same float64 weights in both backends, perturbed so that the zero-initialised layers
    take part. Call within ``jax.enable_x64(True)``."""
    spec = DataSpec(SHAPE, num_classes)
    torch_model = perturb("torch", build("torch", spec), scale=0.05)
    jax_model = build("jax", spec, seed=1)
    return spec, torch_model, load_named_arrays(jax_model, {k: v.numpy() for k, v in torch_model.state_dict().items()})


def inputs(spec, seed=0, n=4):
    rng = np.random.default_rng(seed)
    t = rng.random(n)
    return (rng.standard_normal((n, *spec.shape)), t, t * rng.random(n),
            rng.integers(0, spec.num_classes, n) if spec.conditional else None)


def as_torch(*arrays):
    return [None if a is None else torch.from_numpy(a) for a in arrays]


@pytest.mark.parametrize("num_classes", [0, 5])
def test_parameter_names_and_sizes_match(num_classes):
    spec = DataSpec(SHAPE, num_classes)
    torch_sizes = {k: v.numel() for k, v in build("torch", spec).state_dict().items()}
    with jax.enable_x64(True):
        jax_sizes = {k: v.size for k, v in named_arrays(build("jax", spec)).items()}
    assert jax_sizes == torch_sizes
    assert ("y_embedder.weight" in torch_sizes) == (num_classes > 0)
    # resampling blocks project their skip (1x1); attention only where the layout puts it
    assert {"encoder.1.skip.weight", "decoder.2.skip.weight", "middle.0.qkv.weight", "decoder.1.proj.bias"} \
        <= set(torch_sizes)
    assert "middle.1.qkv.weight" not in torch_sizes and "encoder.0.qkv.weight" not in torch_sizes


@pytest.mark.parametrize("num_classes", [0, 5])
def test_outputs_agree_across_backends(num_classes):
    with jax.enable_x64(True):
        spec, torch_model, jax_model = build_pair(num_classes)
        x, t, r, y = inputs(spec)
        for labels in ([y, None] if spec.conditional else [None]):  # y=None: the null class path
            expected = torch_model(*as_torch(x, t, r, labels)).detach().numpy()
            assert max_rel(call("jax", jax_model, x, t, r, labels), expected) < RTOL


def test_jvps_agree_across_backends_and_with_a_finite_difference():
    with jax.enable_x64(True):
        spec, torch_model, jax_model = build_pair(5)
        x, t, r, y = inputs(spec, seed=1)
        v = np.random.default_rng(2).standard_normal(x.shape)
        tangents = (v, np.ones_like(t), np.zeros_like(r))  # MeanFlow's d/dt u(z_t, t, r)
        jax_out, jax_dout = eqx.filter_jit(
            lambda m: jax.jvp(lambda *a: jax.vmap(m)(*a, y), (x, t, r), tangents))(jax_model)

    def u(x_, t_, r_):
        return torch_model(x_, t_, r_, torch.from_numpy(y))

    for mode in ("func", "forward_ad"):
        out, dout = (a.detach().numpy() for a in jvp(u, as_torch(x, t, r), as_torch(*tangents), mode=mode))
        assert max_rel(jax_out, out) < RTOL, mode
        assert max_rel(jax_dout, dout) < RTOL, mode
    h = 1e-6
    with torch.no_grad():
        shifted = [u(*as_torch(x + s * h * v, t + s * h, r)).numpy() for s in (1, -1)]
    assert max_rel(dout, (shifted[0] - shifted[1]) / (2 * h)) < 1e-6


def test_parameter_gradients_agree_across_backends():
    with jax.enable_x64(True):
        spec, torch_model, jax_model = build_pair(5)
        x, t, r, y = inputs(spec, seed=3)
        w = np.random.default_rng(4).standard_normal(x.shape)
        (torch_model(*as_torch(x, t, r, y)) * torch.from_numpy(w)).sum().backward()
        grads = named_arrays(eqx.filter_jit(eqx.filter_grad(lambda m: (jax.vmap(m)(x, t, r, y) * w).sum()))(jax_model))
    torch_grads = {k: p.grad.numpy() for k, p in torch_model.named_parameters()}
    assert set(grads) == set(torch_grads)
    for name, grad in torch_grads.items():
        assert np.abs(grad).max() > 0, name  # every parameter takes part
        assert max_rel(grads[name], grad) < RTOL, name


def perturbed_caller(backend: str, options: UNetOptions = OPTIONS):
    """u(x, t, r, y) of a perturbed float64 model on NumPy arrays, and the model's initial output."""
    model = build(backend, DataSpec(SHAPE, 5), options)
    x, t, r, y = inputs(DataSpec(SHAPE, 5), seed=5)

    def u(model, x=x, t=t, r=r, y=y):
        return to_numpy(call(backend, model, *(to_backend(backend, a) for a in (x, t, r, y))))

    initial = u(model)  # before perturbing: torch's perturbs in place
    return functools.partial(u, perturb(backend, model)), initial, (x, t, r, y)


def test_unet_behaviour(backend):
    with float64(backend):
        u, initial, (x, t, r, y) = perturbed_caller(backend)
        assert not initial.any()  # the zero-initialised output conv: an untrained model outputs exactly 0
        out = u()
        assert out.shape == x.shape
        for changed in (u(t=0.5 * t), u(y=(y + 1) % 5), u(y=None)):
            assert not np.allclose(changed, out)
        np.testing.assert_array_equal(u(y=None), u(y=np.full(4, 5)))  # y=None is the null class, index 5
        assert (out.std(axis=(2, 3)) > 1e-3).all()  # not constant over the image
        assert not np.allclose(u(x=np.roll(x, 1, axis=3)), np.roll(out, 1, axis=3))  # zero padding sees the border
        corner = x.copy()
        corner[:, :, 0, 0] += 1.0  # one pixel reaches the opposite corner (downsampling and attention)
        assert (u(x=corner) != out)[:, :, -1, -1].all()


@pytest.mark.parametrize("time_inputs", ["t_and_gap", "t_and_r"])
def test_unet_sees_the_second_time(backend, time_inputs):
    with float64(backend):
        u, _, (_, _, r, _) = perturbed_caller(backend, attrs.evolve(OPTIONS, time_inputs=time_inputs))
        assert not np.allclose(u(r=0.5 * r), u())


def test_unet_rejects_data_its_levels_cannot_halve(backend):
    with pytest.raises(ValueError, match=r"UNet needs \(channels, height, width\) data with height and width "
                                         r"divisible by 4 \(3 levels\), got shape \(3, 6, 6\)"):
        build_backbone(backend, "unet", attrs.evolve(OPTIONS, channel_mult=(1, 2, 2)), DataSpec((3, 6, 6)))
    with pytest.raises(ValueError, match=r"got shape \(64,\)"):
        build_backbone(backend, "unet", OPTIONS, DataSpec((64,)))


def test_options_reject_widths_groups_or_heads_do_not_divide():
    with pytest.raises(InvalidValue,
                       match=r"groups: got 3, expected a divisor of every width \[16, 32\] \(GroupNorm\)"):
        attrs.evolve(OPTIONS, groups=3)
    with pytest.raises(InvalidValue, match=r"heads: got 3, expected a divisor of every width \[16, 32\]"):
        attrs.evolve(OPTIONS, heads=3)
    with pytest.raises(InvalidValue, match=r"channel_mult: got \(\), expected at least one level"):
        attrs.evolve(OPTIONS, channel_mult=())
    assert UNetOptions().resolved_frequency_dim == 128  # EDM's noise embedding is ``channels`` wide


def test_default_parameter_count():
    from toolkit.plugins.unet.jax import UNet as JaxUNet
    from toolkit.plugins.unet.torch import UNet as TorchUNet

    spec = DataSpec((3, 32, 32))
    with torch.device("meta"):  # shapes only
        assert sum(p.numel() for p in TorchUNet(UNetOptions(), spec).parameters()) == DEFAULT_COUNT
    shapes = eqx.filter_eval_shape(JaxUNet, UNetOptions(), spec, key=jax.random.PRNGKey(0))
    assert sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes) if hasattr(leaf, "shape")) \
        == DEFAULT_COUNT
