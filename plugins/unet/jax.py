"""The DDPM++ U-Net in JAX/Equinox (one example; batch with ``jax.vmap``). Parameter names
match the torch module's ``state_dict`` keys."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from toolkit.backends.jax.attention import attention
from toolkit.backends.jax.layers import dropout, sinusoidal_embedding
from toolkit.conditions import embedded_conditions, embedded_times, time_input_count
from toolkit.plugins.unet import EMBED_MULT, SKIP_SCALE, check_image_spec, layout


# EDM's DDPM++ initialisation, as in the torch module: Xavier-uniform weights times ``gain``
# (torch's xavier_uniform_ fans) and zero biases; gain 0 for the layers that start at zero
# (whose key is then irrelevant, so they share one).
def xavier(key, shape, gain=1.0):
    receptive = math.prod(shape[2:])
    bound = gain * math.sqrt(6.0 / ((shape[0] + shape[1]) * receptive))
    return jax.random.uniform(key, shape, minval=-bound, maxval=bound)


def initialised(layer_type, *args, key, gain=1.0, **kwargs):
    """A ``layer_type(*args, **kwargs)`` with EDM's weights and zero biases, built as shapes
    first: equinox's own initial draw would be thrown away."""
    layer = eqx.filter_eval_shape(layer_type, *args, key=key, **kwargs)
    return eqx.tree_at(lambda m: (m.weight, m.bias), layer,
                       (xavier(key, layer.weight.shape, gain), jnp.zeros(layer.bias.shape)))


def conv(cin, cout, kernel, key, gain=1.0):
    return initialised(eqx.nn.Conv2d, cin, cout, kernel, padding=kernel // 2, key=key, gain=gain)


def linear(fan_in, fan_out, key):
    return initialised(eqx.nn.Linear, fan_in, fan_out, key=key)


def resample(x, mode):
    """EDM's [1, 1] resampling filter: 2x2 average pooling down, nearest neighbour up."""
    c, h, w = x.shape
    if mode == "down":
        return x.reshape(c, h // 2, 2, w // 2, 2).mean((2, 4))
    if mode == "up":
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return x


class TimeEmbedder(eqx.Module):
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear
    frequency_dim: int = eqx.field(static=True)
    scale: float = eqx.field(static=True)

    def __init__(self, width, frequency_dim, scale, *, key):
        k1, k2 = jax.random.split(key)
        self.fc1, self.fc2 = linear(frequency_dim, width, k1), linear(width, width, k2)
        self.frequency_dim, self.scale = frequency_dim, scale

    def __call__(self, t):
        return self.fc2(jax.nn.silu(self.fc1(sinusoidal_embedding(t * self.scale, self.frequency_dim))))


class Block(eqx.Module):
    norm0: eqx.nn.GroupNorm
    conv0: eqx.nn.Conv2d
    affine: eqx.nn.Linear
    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    skip: eqx.nn.Conv2d | None
    norm2: eqx.nn.GroupNorm | None
    qkv: eqx.nn.Conv2d | None
    proj: eqx.nn.Conv2d | None
    resample: str | None = eqx.field(static=True)
    heads: int = eqx.field(static=True)
    dropout_rate: float = eqx.field(static=True)
    site: int = eqx.field(static=True)  # this block's dropout-mask number

    def __init__(self, b, embed_dim, heads, groups, eps, dropout_rate=0.0, site=0, *, key):
        keys = jax.random.split(key, 4)
        self.resample, self.heads = b.resample, heads
        self.dropout_rate, self.site = dropout_rate, site
        self.norm0, self.conv0 = eqx.nn.GroupNorm(groups, b.cin, eps), conv(b.cin, b.cout, 3, keys[0])
        self.affine = linear(embed_dim, 2 * b.cout, keys[1])
        self.norm1, self.conv1 = eqx.nn.GroupNorm(groups, b.cout, eps), conv(b.cout, b.cout, 3, keys[0], gain=0)
        self.skip = conv(b.cin, b.cout, 1, keys[2]) if b.cin != b.cout or b.resample else None
        if b.attention:
            self.norm2 = eqx.nn.GroupNorm(groups, b.cout, eps)
            self.qkv = conv(b.cout, 3 * b.cout, 1, keys[3], gain=math.sqrt(0.2))
            self.proj = conv(b.cout, b.cout, 1, keys[3], gain=0)
        else:
            self.norm2 = self.qkv = self.proj = None

    def __call__(self, x, c, dropout_seed=None):
        h = self.conv0(resample(jax.nn.silu(self.norm0(x)), self.resample))
        scale, shift = jnp.split(self.affine(c)[:, None, None], 2)
        h = jax.nn.silu(self.norm1(h) * (1 + scale) + shift)
        h = self.conv1(dropout(h, self.dropout_rate, dropout_seed, self.site))
        x = resample(x, self.resample)
        x = (h + (x if self.skip is None else self.skip(x))) * SKIP_SCALE
        if self.qkv is None:
            return x
        channels, height, width = x.shape
        q, k, v = self.qkv(self.norm2(x)).reshape(3, self.heads, channels // self.heads, height * width) \
            .transpose(0, 3, 1, 2)  # (pixels, heads, head_dim) each
        a = attention(q, k, v).transpose(1, 2, 0).reshape(channels, height, width)
        return (x + self.proj(a)) * SKIP_SCALE


class UNet(eqx.Module):
    t_embedder: TimeEmbedder | None  # None: the network sees the gap alone
    r_embedder: TimeEmbedder
    condition_embedders: list
    y_embedder: eqx.nn.Embedding | None
    conv_in: eqx.nn.Conv2d
    encoder: list
    middle: list
    decoder: list
    norm_out: eqx.nn.GroupNorm
    conv_out: eqx.nn.Conv2d
    options: object = eqx.field(static=True)
    spec: object = eqx.field(static=True)

    def __init__(self, options, spec, *, key):
        self.options, self.spec = options, spec
        channels, _, _ = check_image_spec(options, spec)
        o, embed_dim = options, EMBED_MULT * options.channels
        encoder, middle, decoder = layout(options, spec)
        keys = iter(jax.random.split(key, 4 + len(encoder) + len(middle) + len(decoder)))
        t_key = next(keys)  # drawn either way, so the other weights do not depend on time_inputs
        self.t_embedder = (TimeEmbedder(embed_dim, o.resolved_frequency_dim, o.time_scale, key=t_key)
                           if time_input_count(o.time_inputs) == 2 else None)
        self.r_embedder = TimeEmbedder(embed_dim, o.resolved_frequency_dim, o.time_scale, key=next(keys))
        self.condition_embedders = [TimeEmbedder(embed_dim, o.resolved_frequency_dim, o.time_scale, key=k)
                                    for k in jax.random.split(jax.random.fold_in(key, 1), len(spec.conditions))]
        self.y_embedder = (eqx.nn.Embedding(weight=xavier(next(keys), (spec.num_classes + 1, embed_dim)))
                           if spec.conditional else None)
        self.conv_in = conv(channels, o.channels, 3, next(keys))
        sites = iter(range(len(encoder) + len(middle) + len(decoder)))
        self.encoder, self.middle, self.decoder = (
            [Block(b, embed_dim, o.heads, o.groups, o.norm_eps, o.dropout, next(sites), key=next(keys)) for b in blocks]
            for blocks in (encoder, middle, decoder))
        self.norm_out = eqx.nn.GroupNorm(o.groups, decoder[-1].cout, o.norm_eps)
        self.conv_out = conv(decoder[-1].cout, channels, 3, key, gain=0)

    def __call__(self, x, t, r, y=None, conditions=None, dropout_seed=None, *, key=None):
        o = self.options
        c = embedded_times(self.t_embedder, self.r_embedder, t, r, o.time_inputs)
        c = c + embedded_conditions(self.condition_embedders, self.spec, conditions)
        if self.y_embedder is not None:
            c = c + self.y_embedder(self.spec.num_classes if y is None else y)
        c = jax.nn.silu(c)  # EDM's mapping network ends with a SiLU; each block's affine reads it
        h = self.conv_in(x)
        skips = [h]
        for block in self.encoder:
            h = block(h, c, dropout_seed)
            skips.append(h)
        for block in self.middle:
            h = block(h, c, dropout_seed)
        for block in self.decoder:  # an upsampling block only resizes; the others take a skip each
            h = block(h if block.resample == "up" else jnp.concatenate([h, skips.pop()]), c, dropout_seed)
        return self.conv_out(jax.nn.silu(self.norm_out(h)))
