"""What every objective of the MeanFlow family draws, in NumPy (so both backends train on the same
draws): the (t, r) pairs, which examples lose their label, and the options that set both.

The batch layout is part of the contract: the pairs whose r may be below t come first (a fixed
number of them, :func:`averaged_count`), so an objective takes its JVP, or its extra forward
passes, on one leading slice of static size; the rows with r = t follow.

Defaults are the authors' ImageNet settings (Gsunshine/meanflow at d70cb55, configs/default.py):
t, r ~ logit-normal(-0.4, 1.0) drawn independently and sorted (lines 52-54), 25% of the batch
with r != t (line 57: 75% r = t), adaptive weight power p = 1.0 (line 70), label dropout 0.1
(line 58) as one block of the r = t rows (meanflow.py:191-200). The constant c defaults to
1e-3, the authors' CIFAR-10 value (Gsunshine/py-meanflow meanflow/train_arg_parser.py:65); their
ImageNet code uses 0.01 (configs/default.py:71), which the ImageNet configs set.
"""

from __future__ import annotations

from typing import Literal

import attrs
import numpy as np

from toolkit.config import non_negative, positive, probability
from toolkit.interfaces import DataSpec
from toolkit.timesteps import TimeDistribution

PAPER_TIME = TimeDistribution("logit_normal", -0.4, 1.0)


def averaged_count(ratio: float, batch_size: int) -> int:
    """How many pairs of a batch have r drawn below t: ``round(ratio * batch_size)``."""
    return int(round(ratio * batch_size))


def draw_time_pairs(rng: np.random.Generator, n: int, time: TimeDistribution, r_time: TimeDistribution | None,
                    pairing: str, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """(t, r) with r <= t. The first ``averaged_count(ratio, n)`` pairs have r drawn below t
    (a fixed share, as in the authors' JAX code), the rest r = t.

    The layout is part of the contract: objectives take the JVP (or the extra forward
    passes) only on that leading slice, whose size is static, since r = t needs neither.
    ``sorted`` (the paper): draw two times, t = max, r = min. ``clipped`` (the authors'
    later CIFAR sampler): t ~ ``time``, r ~ ``r_time``, r = min(r, t).
    """
    a = time.sample(rng, n)
    b = (r_time or time).sample(rng, n)
    t, r = (np.maximum(a, b), np.minimum(a, b)) if pairing == "sorted" else (a, np.minimum(a, b))
    return t, np.where(np.arange(n) < averaged_count(ratio, n), r, t)


def null_label_rows(rng: np.random.Generator, n: int, probability: float, layout: str) -> np.ndarray:
    """Which of ``n`` examples get the null label. Each of them would with ``probability``;
    ``independent`` drops exactly those. ``block`` (the authors' code, Gsunshine/meanflow
    meanflow.py:191-200) drops as many, but as one block at the r = t end of the batch (the
    trailing rows, see :func:`draw_time_pairs`), so every pair with r < t keeps its class and
    its guided target, and the unconditional model is trained only on the instantaneous
    velocity, all that the guided target asks of it. Only when more examples lose their label
    than there are r = t pairs does the block reach pairs with r < t, as in that code."""
    lose = rng.random(n) < probability
    return lose if layout == "independent" else np.arange(n) >= n - int(lose.sum())


@attrs.frozen
class AverageVelocityOptions:
    """What every objective of the MeanFlow family shares: how (t, r) pairs are drawn, the
    adaptive loss weight, and label dropout for classifier-free guidance."""

    time: TimeDistribution = PAPER_TIME
    #: distribution of the second draw; None: the same as ``time``.
    r_time: TimeDistribution | None = None
    pairing: Literal["sorted", "clipped"] = "sorted"
    #: fraction of the batch with r != t (the rest is flow matching, r = t).
    ratio: float = attrs.field(default=0.25, validator=probability)
    #: adaptive loss weight 1 / (||delta||^2 + weight_eps)^weight_power; power 0 = plain MSE.
    weight_power: float = attrs.field(default=1.0, validator=non_negative)
    weight_eps: float = attrs.field(default=1e-3, validator=positive)
    label_dropout: float = attrs.field(default=0.1, validator=probability)
    #: which examples lose their label (see :func:`null_label_rows`).
    label_dropout_layout: Literal["block", "independent"] = "block"

    def averaged(self, batch_size: int) -> int:
        """The size of the leading slice of a batch whose pairs may have r < t."""
        return averaged_count(self.ratio, batch_size)

    def draw(self, rng: np.random.Generator, batch_size: int, step: int, spec: DataSpec) -> dict[str, np.ndarray]:
        t, r = draw_time_pairs(rng, batch_size, self.time, self.r_time, self.pairing, self.ratio)
        drop = null_label_rows(rng, batch_size, self.label_dropout if spec.conditional else 0.0,
                               self.label_dropout_layout)
        return {"t": t, "r": r, "drop": drop}
