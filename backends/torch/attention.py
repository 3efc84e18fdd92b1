"""Multi-head attention that works under forward-mode AD.

``F.scaled_dot_product_attention`` on the CPU has no forward-mode derivative (inside
``torch.func.jvp`` it raises NotImplementedError: SPEC.md section 7). :func:`attention`
uses the fused kernel for ordinary forward and backward passes and the explicit formula
``softmax(q k^T / sqrt(d)) v`` while a JVP is being taken: inside :func:`forward_mode`
(which :func:`toolkit.backends.torch.jvp.jvp` enters) or when given dual tensors.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import torch
import torch.autograd.forward_ad as forward_ad
import torch.nn.functional as F

_FORWARD_MODE = contextvars.ContextVar("toolkit_attention_forward_mode", default=False)


@contextlib.contextmanager
def forward_mode():
    """Within this block :func:`attention` uses the explicit, JVP-capable formula."""
    token = _FORWARD_MODE.set(True)
    try:
        yield
    finally:
        _FORWARD_MODE.reset(token)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(scores, dim=-1) @ v


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, heads, tokens, head_dim) x3 -> (B, heads, tokens, head_dim)."""
    if _FORWARD_MODE.get() or forward_ad.unpack_dual(q).tangent is not None:
        return explicit_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)
