"""The MLP backbone in PyTorch (batched)."""

from __future__ import annotations

import math

import torch
from torch import nn

from toolkit.backends.torch.layers import sinusoidal_embedding
from toolkit.conditions import condition_columns, network_times, time_input_count


class MLP(nn.Module):
    def __init__(self, options, spec):
        super().__init__()
        self.options, self.spec = options, spec
        dim = math.prod(spec.shape)
        # the data, an embedding per time and per condition, and the label's
        width = dim + (time_input_count(options.time_inputs) + len(spec.conditions) + spec.conditional) * options.time_embed_dim
        if spec.conditional:  # one extra row: the null class of classifier-free guidance
            self.class_embedding = nn.Embedding(spec.num_classes + 1, options.time_embed_dim)
        sizes = [width] + [options.hidden] * options.depth + [dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x, t, r, y=None, conditions=None):
        o = self.options
        parts = [x.flatten(1),
                 *(sinusoidal_embedding(time * o.time_scale, o.time_embed_dim)
                   for time in network_times(t, r, o.time_inputs) if time is not None)]
        parts += [sinusoidal_embedding(column * o.time_scale, o.time_embed_dim)
                  for column in condition_columns(self.spec, conditions)]
        if self.spec.conditional:
            if y is None:
                y = torch.full(t.shape, self.spec.num_classes, dtype=torch.long, device=t.device)
            parts.append(self.class_embedding(y))
        h = torch.cat(parts, dim=1)
        for layer in self.layers[:-1]:
            h = nn.functional.silu(layer(h))
        return self.layers[-1](h).view_as(x)
