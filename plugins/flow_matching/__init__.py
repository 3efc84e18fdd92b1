"""Flow matching on the linear path (toolkit.interfaces gives the time convention): regress ``u(z_t, t, t)`` on ``v = e - x``."""

from __future__ import annotations

import attrs
import numpy as np

from toolkit.config import probability
from toolkit.hookspecs import hookimpl
from toolkit.interfaces import DataSpec
from toolkit.timesteps import TimeDistribution


@attrs.frozen
class FlowMatchingOptions:
    """Flow matching: velocity regression on the linear path (baseline)."""

    time: TimeDistribution = TimeDistribution()
    #: fraction of labels replaced by the null class, for classifier-free guidance.
    label_dropout: float = attrs.field(default=0.1, validator=probability)

    def draw(self, rng: np.random.Generator, batch_size: int, step: int,
             spec: DataSpec) -> dict[str, np.ndarray]:
        t = self.time.sample(rng, batch_size)
        drop = rng.random(batch_size) < (self.label_dropout if spec.conditional else 0.0)
        return {"t": t, "drop": drop}


@hookimpl
def register_objectives(register):
    register("flow_matching",
             {"*": "toolkit.plugins.flow_matching.objective:FlowMatching"},
             options=FlowMatchingOptions,
             examples=[{"objective": {"label_dropout": 0.25, "time": {"distribution": "logit_normal"}}}])
