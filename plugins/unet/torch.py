"""The DDPM++ U-Net in PyTorch (batched)."""

from __future__ import annotations

import math

import torch
from torch import nn

from toolkit.backends.torch.attention import attention
from toolkit.backends.torch.layers import GroupNorm, dropout, sinusoidal_embedding
from toolkit.conditions import embedded_conditions, embedded_times, time_input_count
from toolkit.plugins.unet import EMBED_MULT, SKIP_SCALE, check_image_spec, layout


# EDM's DDPM++ initialisation: Xavier-uniform weights times ``gain`` and zero biases; gain 0
# for the layers that start at zero.
def conv(cin: int, cout: int, kernel: int, gain: float = 1.0) -> nn.Conv2d:
    layer = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
    nn.init.xavier_uniform_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def linear(fan_in: int, fan_out: int) -> nn.Linear:
    layer = nn.Linear(fan_in, fan_out)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def resample(x: torch.Tensor, mode: str | None) -> torch.Tensor:
    """EDM's [1, 1] resampling filter: 2x2 average pooling down, nearest neighbour up."""
    if mode == "down":
        return nn.functional.avg_pool2d(x, 2)
    if mode == "up":
        return nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    return x


class TimeEmbedder(nn.Module):
    def __init__(self, width, frequency_dim, scale):
        super().__init__()
        self.frequency_dim, self.scale = frequency_dim, scale
        self.fc1, self.fc2 = linear(frequency_dim, width), linear(width, width)

    def forward(self, t):
        return self.fc2(nn.functional.silu(self.fc1(sinusoidal_embedding(t * self.scale, self.frequency_dim))))


class Block(nn.Module):
    """A residual block (EDM's UNetBlock), resampling between its norm and first conv, with
    optional self-attention after it."""

    def __init__(self, b, embed_dim, heads, groups, eps, dropout_rate=0.0, site=0):
        super().__init__()
        self.resample, self.heads = b.resample, heads
        self.dropout_rate, self.site = dropout_rate, site  # site: this block's dropout-mask number
        self.norm0, self.conv0 = GroupNorm(groups, b.cin, eps), conv(b.cin, b.cout, 3)
        self.affine = linear(embed_dim, 2 * b.cout)
        self.norm1, self.conv1 = GroupNorm(groups, b.cout, eps), conv(b.cout, b.cout, 3, gain=0)
        self.skip = conv(b.cin, b.cout, 1) if b.cin != b.cout or b.resample else None
        if b.attention:
            self.norm2 = GroupNorm(groups, b.cout, eps)
            self.qkv, self.proj = conv(b.cout, 3 * b.cout, 1, gain=math.sqrt(0.2)), conv(b.cout, b.cout, 1, gain=0)
        else:
            self.norm2 = self.qkv = self.proj = None

    def forward(self, x, c, dropout_seed=None):
        h = self.conv0(resample(nn.functional.silu(self.norm0(x)), self.resample))
        scale, shift = self.affine(c)[:, :, None, None].chunk(2, dim=1)
        h = nn.functional.silu(self.norm1(h) * (1 + scale) + shift)
        h = self.conv1(dropout(h, self.dropout_rate, dropout_seed, self.site))
        x = resample(x, self.resample)
        x = (h + (x if self.skip is None else self.skip(x))) * SKIP_SCALE
        if self.qkv is None:
            return x
        b, channels, height, width = x.shape
        q, k, v = self.qkv(self.norm2(x)).view(b, 3, self.heads, channels // self.heads, height * width) \
            .transpose(-1, -2).unbind(1)  # (B, heads, pixels, head_dim) each
        a = attention(q, k, v).transpose(-1, -2).reshape(b, channels, height, width)
        return (x + self.proj(a)) * SKIP_SCALE


class UNet(nn.Module):
    def __init__(self, options, spec):
        super().__init__()
        self.options, self.spec = options, spec
        channels, _, _ = check_image_spec(options, spec)
        o, embed_dim = options, EMBED_MULT * options.channels
        self.t_embedder = (TimeEmbedder(embed_dim, o.resolved_frequency_dim, o.time_scale)
                           if time_input_count(o.time_inputs) == 2 else None)
        self.r_embedder = TimeEmbedder(embed_dim, o.resolved_frequency_dim, o.time_scale)
        self.condition_embedders = nn.ModuleList(TimeEmbedder(embed_dim, o.resolved_frequency_dim, o.time_scale)
                                                 for _ in spec.conditions)
        if spec.conditional:
            self.y_embedder = nn.Embedding(spec.num_classes + 1, embed_dim)  # + the null class
            nn.init.xavier_uniform_(self.y_embedder.weight)
        self.conv_in = conv(channels, o.channels, 3)
        encoder, middle, decoder = layout(options, spec)
        sites = iter(range(len(encoder) + len(middle) + len(decoder)))
        self.encoder, self.middle, self.decoder = (
            nn.ModuleList(Block(b, embed_dim, o.heads, o.groups, o.norm_eps, o.dropout, next(sites)) for b in blocks)
            for blocks in (encoder, middle, decoder))
        self.norm_out = GroupNorm(o.groups, decoder[-1].cout, o.norm_eps)
        self.conv_out = conv(decoder[-1].cout, channels, 3, gain=0)

    def forward(self, x, t, r, y=None, conditions=None, dropout_seed=None):
        o = self.options
        c = embedded_times(self.t_embedder, self.r_embedder, t, r, o.time_inputs)
        c = c + embedded_conditions(self.condition_embedders, self.spec, conditions)
        if self.spec.conditional:
            c = c + self.y_embedder(torch.full_like(t, self.spec.num_classes, dtype=torch.long) if y is None else y)
        c = nn.functional.silu(c)  # EDM's mapping network ends with a SiLU; each block's affine reads it
        h = self.conv_in(x)
        skips = [h]
        for block in self.encoder:
            h = block(h, c, dropout_seed)
            skips.append(h)
        for block in self.middle:
            h = block(h, c, dropout_seed)
        for block in self.decoder:  # an upsampling block only resizes; the others take a skip each
            h = block(h if block.resample == "up" else torch.cat([h, skips.pop()], dim=1), c, dropout_seed)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))
