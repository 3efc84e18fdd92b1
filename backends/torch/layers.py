"""Small PyTorch building blocks shared by the built-in components."""

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


def full_precision(like: torch.Tensor):
    """A region that autocast does not reach, on ``like``'s device. The authors take the JVP
    and the loss outside autocast (Gsunshine/py-meanflow at 1f6d72d,
    meanflow/models/meanflow.py:54), so ``mixed_precision: bf16`` speeds up the prediction's
    forward and backward only; the target, whose error is amplified by ``t - r``, stays float32."""
    return torch.autocast(like.device.type, enabled=False)


def squared_error(prediction, target):
    """(B,): each example's squared error ``||prediction - target||^2``.

    Under bf16 autocast the network's last layer returns bfloat16; the authors compute the
    loss in float32 (Gsunshine/py-meanflow at 1f6d72d, meanflow/models/meanflow.py:54-65), so
    the difference is taken in the target's precision.
    """
    return per_example_sum((prediction.to(target.dtype) - target) ** 2)


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
