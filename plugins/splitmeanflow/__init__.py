"""SplitMeanFlow (arXiv 2507.16884): average velocity from interval-splitting
consistency, no JVP. For r <= s <= t,

    (t - r) u(z_t, r, t) = (s - r) u(z_s, r, s) + (t - s) u(z_t, s, t).

A step draws (r, t) as MeanFlow does and lam ~ U(0, 1), sets s = r + lam (t - r), and
regresses u(z_t, r, t) on sg(lam u(z_s, r, s) + (1 - lam) u(z_t, s, t)) with
z_s = z_t - (t - s) u(z_t, s, t): two extra forward passes without gradient. Pairs with
r = t take the flow-matching target v (the boundary condition).

Defaults: lam ~ U(0, 1) and plain L2 (as reported for the paper); half of the batch on the
boundary, since the paper reports that a boundary fraction of at least 0.5 is needed for
stable training (its section 5.1, read through a secondary source). The paper has speech
experiments only; the (r, t) distribution defaults to MeanFlow's.
"""

from __future__ import annotations

import attrs
import numpy as np

from toolkit.config import non_negative, probability
from toolkit.hookspecs import hookimpl
from toolkit.interfaces import DataSpec
from toolkit.draws import AverageVelocityOptions


@attrs.frozen
class SplitMeanFlowOptions(AverageVelocityOptions):
    """SplitMeanFlow: average velocity from interval-splitting consistency (no JVP)."""

    ratio: float = attrs.field(default=0.5, validator=probability)
    weight_power: float = attrs.field(default=0.0, validator=non_negative)

    def draw(self, rng: np.random.Generator, batch_size: int, step: int, spec: DataSpec) -> dict[str, np.ndarray]:
        return {**super().draw(rng, batch_size, step, spec), "lam": rng.random(batch_size)}


@hookimpl
def register_objectives(register):
    register("splitmeanflow",
             {"*": "toolkit.plugins.splitmeanflow.objective:SplitMeanFlow"},
             options=SplitMeanFlowOptions,
             examples=[{"objective": {"ratio": 0.6, "weight_power": 0.5, "label_dropout": 0.25}}])
