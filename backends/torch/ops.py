"""Small PyTorch building blocks shared by the built-in components."""

from __future__ import annotations

import math

import torch


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) -> (B, dim): ``[cos(t f), sin(t f)]`` with ``f_i = max_period^(-i / (dim/2))``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    angles = t[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def second_time(t, r, time_inputs: str):
    """The second time a network sees: the gap ``t - r`` or ``r`` itself."""
    return t - r if time_inputs == "t_and_gap" else r


def per_example_sum(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,): the sum over every non-batch dimension."""
    return x.flatten(1).sum(1)


def with_null_labels(y, drop, num_classes: int):
    """Labels with the dropped ones replaced by the null class ``num_classes``."""
    if y is None:
        return None
    return torch.where(drop, torch.full_like(y, num_classes), y)
