"""Forward-mode derivatives of a network in PyTorch."""

from __future__ import annotations

import contextlib
from typing import Callable, Literal, Sequence

import torch
import torch.autograd.forward_ad as forward_ad

from toolkit.backends.torch.attention import forward_mode

JvpMode = Literal["func", "forward_ad"]
_mode: JvpMode = "func"  # a module global: torch.compile traces it (and breaks on ContextVars)


@contextlib.contextmanager
def jvp_mode(mode: JvpMode):
    """The mode :func:`jvp` uses within this block (the engine sets the configured one)."""
    global _mode
    previous, _mode = _mode, mode
    try:
        yield
    finally:
        _mode = previous


def jvp(fn: Callable, primals: Sequence[torch.Tensor], tangents: Sequence[torch.Tensor],
        mode: JvpMode | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fn(*primals), d/de fn(*(primals + e * tangents)) at e = 0)``.

    ``func`` uses ``torch.func.jvp``; ``forward_ad`` uses dual tensors, which also work
    through a ``DistributedDataParallel`` wrapper (``torch.func.jvp`` does not: it calls the
    wrapped module functionally, outside DDP's gradient hooks; tests/test_distributed.py). Both give the same numbers. Attention inside ``fn`` takes its JVP-capable path.
    """
    with forward_mode():
        if (mode or _mode) == "func":
            return torch.func.jvp(fn, tuple(primals), tuple(tangents))
        return _dual_jvp(fn, primals, tangents)


def _dual_jvp(fn, primals, tangents):
    with forward_ad.dual_level():
        duals = [forward_ad.make_dual(p, t) for p, t in zip(primals, tangents)]
        out = forward_ad.unpack_dual(fn(*duals))
        return out.primal, out.tangent
