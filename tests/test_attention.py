"""Attention with a correct JVP in both backends, and the fused kernel where no JVP is taken."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend_arrays import float64

B, H, N, D = 2, 3, 5, 4


def qkv(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((B, H, N, D)) for _ in range(3)]


def reference(q, k, v):
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(D)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def backend_attention(backend):
    """The backend's attention on (B, H, N, D) NumPy arrays, and its JVP."""
    if backend == "torch":
        from toolkit.backends.torch.attention import attention
        from toolkit.backends.torch.jvp import jvp

        def call(q, k, v):
            return attention(*(torch.from_numpy(a) for a in (q, k, v))).numpy()

        def tangent(primals, tangents):
            out, dout = jvp(attention, [torch.from_numpy(a) for a in primals],
                            [torch.from_numpy(a) for a in tangents])
            return dout.numpy()

        return call, tangent

    import jax

    from toolkit.backends.jax.attention import attention

    def per_batch(q, k, v):  # (B, H, N, D) -> one example at a time in (N, H, D)
        swap = lambda a: a.transpose(0, 2, 1, 3)  # noqa: E731
        return swap(jax.vmap(attention)(swap(q), swap(k), swap(v)))

    def call(q, k, v):
        return np.asarray(per_batch(q, k, v))

    def tangent(primals, tangents):
        return np.asarray(jax.jvp(per_batch, tuple(primals), tuple(tangents))[1])

    return call, tangent


def test_attention_matches_the_formula(backend):
    q, k, v = qkv()
    with float64(backend):
        call, _ = backend_attention(backend)
        np.testing.assert_allclose(call(q, k, v), reference(q, k, v), rtol=1e-12)


def test_attention_jvp_equals_a_finite_difference(backend):
    primals, tangents = qkv(1), qkv(2)
    h = 1e-6
    shifted = lambda sign: reference(*(p + sign * h * t for p, t in zip(primals, tangents)))  # noqa: E731
    finite_difference = (shifted(1) - shifted(-1)) / (2 * h)
    with float64(backend):
        _, tangent = backend_attention(backend)
        np.testing.assert_allclose(tangent(primals, tangents), finite_difference, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("mode", ["func", "forward_ad"])
def test_torch_attention_uses_the_fused_kernel_unless_a_jvp_is_taken(monkeypatch, mode):
    import torch.nn.functional as F

    from toolkit.backends.torch import attention as module
    from toolkit.backends.torch.jvp import jvp

    calls = []
    fused = F.scaled_dot_product_attention
    monkeypatch.setattr(module.F, "scaled_dot_product_attention", lambda *a: calls.append(1) or fused(*a))
    q, k, v = (torch.from_numpy(a).requires_grad_() for a in qkv())
    module.attention(q, k, v).sum().backward()
    assert calls == [1] and q.grad is not None
    jvp(module.attention, (q.detach(), k.detach(), v.detach()), tuple(torch.ones(B, H, N, D, dtype=torch.float64)
                                                                      for _ in range(3)), mode)
    assert calls == [1]
