"""DiT in JAX/Equinox (one example; batch with ``jax.vmap``). Parameter names match the torch
module's ``state_dict`` keys."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from toolkit.backends.jax.attention import attention
from toolkit.backends.jax.layers import dropout, sinusoidal_embedding
from toolkit.conditions import embedded_conditions, embedded_times, time_input_count
from toolkit.plugins.dit import check_image_spec, position_embedding


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


def layer_norm(x, eps):
    """Non-affine LayerNorm over the last axis (DiT's adaLN norms have no weights)."""
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)


def tokens(linear, x):
    return jax.vmap(linear)(x)


# DiT's initialisation, as in the torch module: Xavier-uniform linears with zero biases, N(0, 0.02)
# time and class embeddings, zero adaLN modulation and output (adaLN-Zero).
def xavier_linear(fan_in, fan_out, key):
    bound = (6.0 / (fan_in + fan_out)) ** 0.5
    layer = eqx.nn.Linear(fan_in, fan_out, key=key)
    return eqx.tree_at(lambda m: (m.weight, m.bias), layer,
                       (jax.random.uniform(key, (fan_out, fan_in), minval=-bound, maxval=bound),
                        jnp.zeros(fan_out)))


def normal_linear(fan_in, fan_out, key, std=0.02):
    layer = eqx.nn.Linear(fan_in, fan_out, key=key)
    return eqx.tree_at(lambda m: (m.weight, m.bias), layer,
                       (std * jax.random.normal(key, (fan_out, fan_in)), jnp.zeros(fan_out)))


def zero_linear(fan_in, fan_out):
    layer = eqx.nn.Linear(fan_in, fan_out, key=jax.random.PRNGKey(0))
    return eqx.tree_at(lambda m: (m.weight, m.bias), layer, (jnp.zeros((fan_out, fan_in)), jnp.zeros(fan_out)))


class TimeEmbedder(eqx.Module):
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear
    frequency_dim: int = eqx.field(static=True)
    scale: float = eqx.field(static=True)

    def __init__(self, width, frequency_dim, scale, *, key):
        k1, k2 = jax.random.split(key)
        self.fc1, self.fc2 = normal_linear(frequency_dim, width, k1), normal_linear(width, width, k2)
        self.frequency_dim, self.scale = frequency_dim, scale

    def __call__(self, t):
        return self.fc2(jax.nn.silu(self.fc1(sinusoidal_embedding(t * self.scale, self.frequency_dim))))


class Block(eqx.Module):
    qkv: eqx.nn.Linear
    proj: eqx.nn.Linear
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear
    modulation: eqx.nn.Linear
    heads: int = eqx.field(static=True)
    approximate_gelu: bool = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    dropout_rate: float = eqx.field(static=True)
    site: int = eqx.field(static=True)  # this block's dropout-mask number

    def __init__(self, width, heads, mlp_ratio, gelu, eps, dropout_rate=0.0, site=0, *, key):
        keys = jax.random.split(key, 4)
        hidden = int(width * mlp_ratio)
        self.qkv, self.proj = xavier_linear(width, 3 * width, keys[0]), xavier_linear(width, width, keys[1])
        self.fc1, self.fc2 = xavier_linear(width, hidden, keys[2]), xavier_linear(hidden, width, keys[3])
        self.modulation = zero_linear(width, 6 * width)
        self.heads, self.approximate_gelu, self.eps = heads, gelu == "tanh", eps
        self.dropout_rate, self.site = dropout_rate, site

    def __call__(self, x, c, dropout_seed=None):
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(self.modulation(jax.nn.silu(c)), 6)
        n, w = x.shape
        q, k, v = tokens(self.qkv, modulate(layer_norm(x, self.eps), shift1, scale1)).reshape(n, 3, self.heads, -1) \
            .transpose(1, 0, 2, 3)
        x = x + gate1 * tokens(self.proj, attention(q, k, v).reshape(n, w))
        h = jax.nn.gelu(tokens(self.fc1, modulate(layer_norm(x, self.eps), shift2, scale2)),
                        approximate=self.approximate_gelu)
        return x + gate2 * tokens(self.fc2, dropout(h, self.dropout_rate, dropout_seed, self.site))


class PatchEmbed(eqx.Module):
    weight: jax.Array
    bias: jax.Array
    patch: int = eqx.field(static=True)

    def __init__(self, channels, width, patch, *, key):
        # the (out, in, p, p) weight of a strided convolution, Xavier-initialised on its flat view
        self.weight = xavier_linear(channels * patch * patch, width, key).weight.reshape(width, channels, patch, patch)
        self.bias, self.patch = jnp.zeros(width), patch

    def __call__(self, x):
        c, h, w = x.shape
        p = self.patch
        patches = x.reshape(c, h // p, p, w // p, p).transpose(1, 3, 0, 2, 4).reshape((h // p) * (w // p), -1)
        return patches @ self.weight.reshape(self.weight.shape[0], -1).T + self.bias


class DiT(eqx.Module):
    x_embedder: PatchEmbed
    t_embedder: TimeEmbedder | None  # None: the network sees the gap alone
    r_embedder: TimeEmbedder
    condition_embedders: list
    y_embedder: eqx.nn.Embedding | None
    blocks: list
    final_modulation: eqx.nn.Linear
    final: eqx.nn.Linear
    options: object = eqx.field(static=True)
    spec: object = eqx.field(static=True)

    def __init__(self, options, spec, *, key):
        self.options, self.spec = options, spec
        channels, _, _ = check_image_spec(options, spec)
        w, p, depth = options.resolved_width, options.patch, options.resolved_depth
        keys = jax.random.split(key, depth + 6)
        self.x_embedder = PatchEmbed(channels, w, p, key=keys[0])
        self.t_embedder = (TimeEmbedder(w, options.frequency_dim, options.time_scale, key=keys[1])
                           if time_input_count(options.time_inputs) == 2 else None)
        self.r_embedder = TimeEmbedder(w, options.frequency_dim, options.time_scale, key=keys[2])
        self.condition_embedders = [TimeEmbedder(w, options.frequency_dim, options.time_scale, key=k)
                                    for k in jax.random.split(keys[4], len(spec.conditions))]
        self.y_embedder = (eqx.nn.Embedding(weight=0.02 * jax.random.normal(keys[3], (spec.num_classes + 1, w)))
                           if spec.conditional else None)
        self.blocks = [Block(w, options.resolved_heads, options.mlp_ratio, options.gelu, options.norm_eps,
                             options.dropout, site, key=k) for site, k in enumerate(keys[6:])]
        self.final_modulation = zero_linear(w, 2 * w)
        self.final = zero_linear(w, p * p * channels)

    def __call__(self, x, t, r, y=None, conditions=None, dropout_seed=None, *, key=None):
        o, p = self.options, self.options.patch
        channels, height, width = x.shape
        h = self.x_embedder(x) + jnp.asarray(position_embedding(o.resolved_width, height // p), x.dtype)
        c = embedded_times(self.t_embedder, self.r_embedder, t, r, o.time_inputs)
        c = c + embedded_conditions(self.condition_embedders, self.spec, conditions)
        if self.y_embedder is not None:
            c = c + self.y_embedder(self.spec.num_classes if y is None else y)
        for block in self.blocks:
            h = block(h, c, dropout_seed)
        shift, scale = jnp.split(self.final_modulation(jax.nn.silu(c)), 2)
        h = tokens(self.final, modulate(layer_norm(h, o.norm_eps), shift, scale))
        h = h.reshape(height // p, width // p, p, p, channels)
        return jnp.einsum("hwpqc->chpwq", h).reshape(channels, height, width)
