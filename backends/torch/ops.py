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


def expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1), broadcastable against ``like``."""
    return t.view(-1, *([1] * (like.ndim - 1)))


def interpolate(x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor):
    """The linear path: ``z_t = (1 - t) x + t e`` and its conditional velocity ``v = e - x``."""
    t_ = expand(t, x)
    return (1 - t_) * x + t_ * noise, noise - x


def adaptive_weight(error: torch.Tensor, power: float, eps: float) -> torch.Tensor:
    """MeanFlow's adaptive weight ``sg(1 / (error + eps)^power)``; power 0 gives plain MSE."""
    return 1.0 / (error.detach() + eps) ** power


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask``; 0 where the mask is empty."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def average_velocity_loss(error: torch.Tensor, draws, power: float, eps: float):
    """The batch loss of the MeanFlow family from the per-example squared error: the adaptive
    weight, a schedule's per-example ``draws["weight"]`` if any, and the parts to log (the
    error where r = t, the flow-matching part, and where r < t)."""
    weighted = adaptive_weight(error, power, eps) * error
    if "weight" in draws:
        weighted = weighted * draws["weight"]
    error = error.detach()
    t, r = draws["t"], draws["r"]
    return weighted.mean(), {"mse": error.mean(), "mse_r_eq_t": masked_mean(error, r == t),
                             "mse_r_lt_t": masked_mean(error, r < t)}
