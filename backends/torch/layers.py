"""PyTorch building blocks of the built-in backbones: the time embedding, a group norm that
``torch.compile`` traces through a JVP, and seeded dropout."""

from __future__ import annotations

import math

import torch

from toolkit.backends.masks import DROPOUT_HASH, keep_threshold


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) -> (B, dim): ``[cos(t f), sin(t f)]`` with ``f_i = max_period^(-i / (dim/2))``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    angles = t[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def group_norm(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """``torch.nn.functional.group_norm``; while ``torch.compile`` traces, written from primitive
    operations, because Dynamo cannot trace group_norm inside ``torch.func.jvp`` or under dual
    tensors (pytorch/pytorch issue 152185). Eager calls keep the fused kernel. The primitive form
    computes in at least float32, as autocast runs group_norm."""
    if not torch.compiler.is_compiling():
        return torch.nn.functional.group_norm(x, groups, weight, bias, eps)
    h = x.to(torch.promote_types(x.dtype, torch.float32)).reshape(x.shape[0], groups, -1)
    mean = h.mean(-1, keepdim=True)
    variance = (h - mean).square().mean(-1, keepdim=True)
    h = ((h - mean) * torch.rsqrt(variance + eps)).reshape(x.shape)
    channel = (1, -1) + (1,) * (x.dim() - 2)
    return h * weight.reshape(channel) + bias.reshape(channel)


class GroupNorm(torch.nn.GroupNorm):
    """``torch.nn.GroupNorm`` (same parameters and names) that ``torch.compile`` can trace
    through a JVP: see :func:`group_norm`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


_LOW32 = 0xFFFFFFFF


def _times(h: torch.Tensor, c: int) -> torch.Tensor:
    """``h * c mod 2^32`` for 32-bit values in int64, split so that no product overflows."""
    return (((h & 0xFFFF) * c) + ((((h >> 16) * c) & 0xFFFF) << 16)) & _LOW32


def _mix(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = _times(h, DROPOUT_HASH[1])
    h = h ^ (h >> 13)
    h = _times(h, DROPOUT_HASH[2])
    return h ^ (h >> 16)


def dropout(h: torch.Tensor, rate: float, seed: torch.Tensor | None, site: int) -> torch.Tensor:
    """Inverted dropout of a batch ``h`` whose masks are a pure function of each example's
    ``seed`` (B,), the layer's ``site`` number and the element's position (see
    :data:`DROPOUT_HASH`). So every call of a network on an example, sliced or whole, forward
    or JVP, on any device, sees the same mask, and JAX draws the same masks. ``seed`` None (as
    in evaluation, guidance targets and sampling) or rate 0: no dropout."""
    if seed is None or rate == 0:
        return h
    base = _mix((seed.to(torch.int64) + site * DROPOUT_HASH[0]) & _LOW32)
    position = torch.arange(h[0].numel(), device=h.device).view(h.shape[1:])
    bits = _mix(_times(position, DROPOUT_HASH[0])[None] ^ base.view(-1, *[1] * (h.ndim - 1)))
    keep = (bits >> 8) < keep_threshold(rate)
    return h * keep.to(h.dtype) / (1 - rate)
