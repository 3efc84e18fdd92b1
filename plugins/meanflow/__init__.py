"""MeanFlow (arXiv 2505.13447): regress the average velocity
``u(z_t, r, t)`` on the target built from the MeanFlow identity,

    u_tgt = v - (t - r) (v . d_z u + d_t u),

where the bracket is one forward-mode JVP of the network along ``(v, 0, 1)`` for
``(z, r, t)`` and the target is under stop-gradient.

The draws and their defaults (the authors' ImageNet settings) are the family's, in
:mod:`toolkit.draws`; the loss is written once in :mod:`toolkit.plugins.meanflow.objective`.
"""

from __future__ import annotations

import attrs

from toolkit.config import InvalidValue, check, positive, probability
from toolkit.draws import AverageVelocityOptions
from toolkit.hookspecs import hookimpl


@attrs.frozen
class Guidance:
    """Classifier-free guidance folded into training (MeanFlow appendix B.1).

    Inside ``[t_min, t_max]`` and for examples whose label was not dropped, the velocity in
    the target becomes ``omega v + kappa u(z, t, t | y) + (1 - omega - kappa) u(z, t, t | null)``
    (both predictions under stop-gradient); the effective scale is ``omega / (1 - kappa)``.
    ``omega = 1, kappa = 0`` (the default) is no guidance. Paper values: B/2 (1.0, 0.5, [0, 1]),
    L/2 (0.2, 0.92, [0, 0.8]), XL/2 (0.2, 0.92, [0, 0.75]).
    """

    omega: float = attrs.field(default=1.0, validator=positive)
    kappa: float = attrs.field(default=0.0, validator=check(lambda k: 0.0 <= k < 1.0, "a value in [0, 1)"))
    t_min: float = attrs.field(default=0.0, validator=probability)
    t_max: float = attrs.field(default=1.0, validator=probability)

    def __attrs_post_init__(self):
        if self.t_min > self.t_max:
            raise InvalidValue("t_max", self.t_max, f"a value >= t_min ({self.t_min})")

    @property
    def active(self) -> bool:
        return self.omega != 1.0 or self.kappa != 0.0

    @property
    def effective_scale(self) -> float:
        return self.omega / (1.0 - self.kappa)


@attrs.frozen
class MeanFlowOptions(AverageVelocityOptions):
    """MeanFlow: average velocity from the MeanFlow identity (one JVP per step)."""

    guidance: Guidance = Guidance()


@hookimpl
def register_objectives(register):
    register("meanflow",
             {"*": "toolkit.plugins.meanflow.objective:MeanFlow"},
             options=MeanFlowOptions,
             examples=[{"objective": {"ratio": 0.5, "weight_power": 0.75, "label_dropout": 0.25,
                                      "guidance": {"omega": 0.5, "kappa": 0.3, "t_min": 0.1, "t_max": 0.9}}},
                       {"objective": {"ratio": 1.0, "pairing": "clipped", "r_time": {"distribution": "uniform"}},
                        "data": {"num_classes": 0}}])
