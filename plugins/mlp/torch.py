"""The MLP backbone in PyTorch (batched)."""

from __future__ import annotations

import math

import torch
from torch import nn

from toolkit.backends.torch.ops import second_time, sinusoidal_embedding


class MLP(nn.Module):
    def __init__(self, options, spec):
        super().__init__()
        self.options, self.spec = options, spec
        dim = math.prod(spec.shape)
        width = dim + 2 * options.time_embed_dim + (options.time_embed_dim if spec.conditional else 0)
        if spec.conditional:  # one extra row: the null class of classifier-free guidance
            self.class_embedding = nn.Embedding(spec.num_classes + 1, options.time_embed_dim)
        sizes = [width] + [options.hidden] * options.depth + [dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x, t, r, y=None):
        o = self.options
        parts = [x.flatten(1),
                 sinusoidal_embedding(t * o.time_scale, o.time_embed_dim),
                 sinusoidal_embedding(second_time(t, r, o.time_inputs) * o.time_scale, o.time_embed_dim)]
        if self.spec.conditional:
            if y is None:
                y = torch.full(t.shape, self.spec.num_classes, dtype=torch.long, device=t.device)
            parts.append(self.class_embedding(y))
        h = torch.cat(parts, dim=1)
        for layer in self.layers[:-1]:
            h = nn.functional.silu(layer(h))
        return self.layers[-1](h).view_as(x)
