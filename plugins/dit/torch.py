"""DiT in PyTorch (batched)."""

from __future__ import annotations

import torch
from torch import nn

from toolkit.backends.torch.attention import attention
from toolkit.backends.torch.layers import dropout, sinusoidal_embedding
from toolkit.conditions import embedded_conditions, embedded_times, time_input_count
from toolkit.plugins.dit import check_image_spec, position_embedding


def modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


class TimeEmbedder(nn.Module):
    def __init__(self, width, frequency_dim, scale):
        super().__init__()
        self.frequency_dim, self.scale = frequency_dim, scale
        self.fc1, self.fc2 = nn.Linear(frequency_dim, width), nn.Linear(width, width)

    def forward(self, t):
        return self.fc2(nn.functional.silu(self.fc1(sinusoidal_embedding(t * self.scale, self.frequency_dim))))


class Block(nn.Module):
    """adaLN-Zero: shift, scale and gate for attention and MLP come from the conditioning."""

    def __init__(self, width, heads, mlp_ratio, gelu, eps, dropout_rate=0.0, site=0):
        super().__init__()
        self.heads = heads
        self.dropout_rate, self.site = dropout_rate, site  # site: this block's dropout-mask number
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=eps)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=eps)
        self.fc1, self.fc2 = nn.Linear(width, int(width * mlp_ratio)), nn.Linear(int(width * mlp_ratio), width)
        self.gelu = nn.GELU(approximate="tanh" if gelu == "tanh" else "none")
        self.modulation = nn.Linear(width, 6 * width)

    def forward(self, x, c, dropout_seed=None):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(nn.functional.silu(c)).chunk(6, dim=1)
        b, n, w = x.shape
        q, k, v = self.qkv(modulate(self.norm1(x), shift1, scale1)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        x = x + gate1[:, None] * self.proj(attention(q, k, v).transpose(1, 2).reshape(b, n, w))
        h = self.gelu(self.fc1(modulate(self.norm2(x), shift2, scale2)))
        return x + gate2[:, None] * self.fc2(dropout(h, self.dropout_rate, dropout_seed, self.site))


class DiT(nn.Module):
    def __init__(self, options, spec):
        super().__init__()
        self.options, self.spec = options, spec
        channels, height, _ = check_image_spec(options, spec)
        w, p = options.resolved_width, options.patch
        self.x_embedder = nn.Conv2d(channels, w, kernel_size=p, stride=p)
        self.t_embedder = (TimeEmbedder(w, options.frequency_dim, options.time_scale)
                           if time_input_count(options.time_inputs) == 2 else None)
        self.r_embedder = TimeEmbedder(w, options.frequency_dim, options.time_scale)
        self.condition_embedders = nn.ModuleList(TimeEmbedder(w, options.frequency_dim, options.time_scale)
                                                 for _ in spec.conditions)
        if spec.conditional:
            self.y_embedder = nn.Embedding(spec.num_classes + 1, w)  # + the null class
        self.blocks = nn.ModuleList(Block(w, options.resolved_heads, options.mlp_ratio, options.gelu, options.norm_eps,
                                          options.dropout, site) for site in range(options.resolved_depth))
        self.norm_final = nn.LayerNorm(w, elementwise_affine=False, eps=options.norm_eps)
        self.final_modulation = nn.Linear(w, 2 * w)
        self.final = nn.Linear(w, p * p * channels)
        self.register_buffer("pos_embed", torch.from_numpy(position_embedding(w, height // p)),
                             persistent=False)
        self.initialize()

    def initialize(self):
        """DiT's initialisation: Xavier linears, zero adaLN modulation and output (adaLN-Zero)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.x_embedder.weight.view(self.x_embedder.weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        for embedder in filter(None, (self.t_embedder, self.r_embedder, *self.condition_embedders)):
            for layer in (embedder.fc1, embedder.fc2):
                nn.init.normal_(layer.weight, std=0.02)
        if self.spec.conditional:
            nn.init.normal_(self.y_embedder.weight, std=0.02)
        for layer in [b.modulation for b in self.blocks] + [self.final_modulation, self.final]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x, t, r, y=None, conditions=None, dropout_seed=None):
        o, p = self.options, self.options.patch
        b, channels, height, width = x.shape
        h = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed.to(x.dtype)
        c = embedded_times(self.t_embedder, self.r_embedder, t, r, o.time_inputs)
        c = c + embedded_conditions(self.condition_embedders, self.spec, conditions)
        if self.spec.conditional:
            c = c + self.y_embedder(torch.full_like(t, self.spec.num_classes, dtype=torch.long) if y is None else y)
        for block in self.blocks:
            h = block(h, c, dropout_seed)
        shift, scale = self.final_modulation(nn.functional.silu(c)).chunk(2, dim=1)
        h = self.final(modulate(self.norm_final(h), shift, scale))
        h = h.view(b, height // p, width // p, p, p, channels)
        return torch.einsum("bhwpqc->bchpwq", h).reshape(b, channels, height, width)
