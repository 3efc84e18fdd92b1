"""The dropout masks both backends draw, defined once so that they draw the same ones.

A unit of an example is kept when the top 24 of 32 hash bits fall below
``keep_threshold(rate)``. The hash is MurmurHash3's 32-bit finaliser (``mix``: xor-shift 16,
times ``DROPOUT_HASH[1]``, xor-shift 13, times ``DROPOUT_HASH[2]``, xor-shift 16) applied twice,
all arithmetic modulo 2^32:

    base = mix(seed + site * DROPOUT_HASH[0])            per example and dropout layer
    bits = mix((position * DROPOUT_HASH[0]) xor base)    per unit (flat position in the example)

Why a hash and not the framework's generator: a mask that is a pure function of (seed, layer,
position) is the same in every call of the network on that example: the prediction's forward
and the target's JVP, a whole batch or a slice of it, on any device, in torch and in JAX. The
authors' PyTorch code gets equal masks from one joint ``torch.func.jvp`` call
(Gsunshine/py-meanflow at 1f6d72d, meanflow/models/meanflow.py:55); this makes it hold for any
way an objective splits its calls, and makes parity with dropout possible.
"""

from __future__ import annotations

#: (the golden-ratio constant of the per-layer and per-position steps, MurmurHash3's two
#: finaliser multipliers)
DROPOUT_HASH = (0x9E3779B9, 0x85EBCA6B, 0xC2B2AE35)


def keep_threshold(rate: float) -> int:
    """Units whose 24-bit hash is below this are kept: ``round((1 - rate) * 2^24)``."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    return round((1.0 - rate) * 2 ** 24)
