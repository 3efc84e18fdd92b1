"""Options, draws, sampler and registration of iMF: everything that is not a framework's.

iMF (Improved Mean Flows, Geng, Lu et al., arXiv 2512.02012) changes MeanFlow in two ways:

* **The loss is on v, re-parameterised through u.** MeanFlow regresses ``u`` on a target that
  contains the network itself. iMF regresses the compound function

      V(z_t) = u(z_t, r, t) + (t - r) sg(du/dt),   du/dt = JVP of u along (v_model, 0, 1)

  on the velocity ``e - x`` (a standard regression target), where the tangent ``v_model`` is
  the network's own instantaneous velocity ``u(z_t, t, t)`` (the paper's "boundary condition"
  variant; its other variant, an auxiliary v-head, needs a two-headed backbone and is not here).
  Gradients flow through ``u`` only; the JVP term is under stop-gradient.
* **Guidance is a condition, not a constant.** Each training example draws a guidance scale
  ``omega`` and an interval ``[t_min, t_max]``; the network sees ``1 - 1/omega``, ``t_min`` and
  ``t_max`` as extra inputs (the toolkit's ``spec.conditions``), and the target becomes

      v_g = (e - x) + (1 - 1/w) (u(z_t, t, t | y, w) - u(z_t, t, t | null, 1)),

  with ``w = omega`` inside the interval and 1 outside it (both predictions under stop-gradient;
  dropped labels take ``e - x``). Given ``z_t`` its expectation is MeanFlow's guided field
  ``omega v(.|y) + (1 - omega) v(.|null)``, but ``omega`` is chosen when sampling, not before
  training. The paper feeds these conditions as in-context tokens; the toolkit's backbones embed
  each like a time (adaLN), which is what lets any backbone of the toolkit train iMF.

Values (:class:`ImprovedMeanFlowOptions` defaults): t, r ~ logit-normal(-0.4, 1.0) sorted, half
of the batch with r < t, adaptive weight p = 1 with c = 0.01, label dropout 0.1, omega on
[1, 8] with density proportional to omega^-1, t_min ~ U[0, 0.5], t_max ~ U[0.5, 1], the interval
fixed to [0, 1] where r = t. They are the official JAX code's (Lyy-iiis/imeanflow, ``imf.py`` and
its configs), read through a helper; the paper's own tables could not be opened here, so they are
"secondary". The released XL/2 reaches its 1-NFE FID with omega 8 on [0.42, 0.62] (same source).
"""

from __future__ import annotations

import attrs
import numpy as np

from toolkit.api import (AverageVelocityOptions, DataSpec, InvalidValue, UsageError, check, hookimpl, non_negative,
                         positive, probability, time_grid)

#: what the network is conditioned on besides t and r, in this order: the guidance scale as
#: ``1 - 1/omega`` (0 is no guidance, and it stays in [0, 1) like a time), and its interval.
CONDITIONS = ("guidance", "guidance_t_min", "guidance_t_max")


def guidance_inputs(omega, t_min, t_max) -> dict:
    """The network's conditions for a guidance scale ``omega`` on ``[t_min, t_max]``."""
    return {"guidance": 1.0 - 1.0 / omega, "guidance_t_min": t_min, "guidance_t_max": t_max}


@attrs.frozen
class GuidanceDraws:
    """How each training example's guidance is drawn: ``omega`` on ``[1, omega_max]`` with density
    proportional to ``omega^-beta`` (beta 1: log-uniform), ``t_min ~ U[0, t_min_below]`` and
    ``t_max ~ U[t_max_above, 1]``."""

    omega_max: float = attrs.field(default=8.0, validator=check(lambda w: w > 1.0, "a value > 1"))
    beta: float = attrs.field(default=1.0, validator=non_negative)
    t_min_below: float = attrs.field(default=0.5, validator=probability)
    t_max_above: float = attrs.field(default=0.5, validator=probability)

    def __attrs_post_init__(self):
        if self.t_min_below > self.t_max_above:
            raise InvalidValue("t_max_above", self.t_max_above, f"a value >= t_min_below ({self.t_min_below})")

    def omega(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Inverse-CDF draws of the density ``omega^-beta`` on ``[1, omega_max]``."""
        u, top = rng.random(n), self.omega_max
        if self.beta == 1.0:
            return top ** u
        power = 1.0 - self.beta
        return (1.0 + u * (top ** power - 1.0)) ** (1.0 / power)


@attrs.frozen
class ImprovedMeanFlowOptions(AverageVelocityOptions):
    """iMF: the MeanFlow identity as a loss on v through the u network, with guidance as a
    condition (``guidance: null`` trains without it, e.g. on unlabelled data)."""

    ratio: float = attrs.field(default=0.5, validator=probability)
    weight_eps: float = attrs.field(default=0.01, validator=positive)
    guidance: GuidanceDraws | None = GuidanceDraws()

    @property
    def conditions(self) -> tuple[str, ...]:
        """Read by the engines: the network is built with these extra inputs."""
        return CONDITIONS if self.guidance is not None else ()

    def draw(self, rng: np.random.Generator, batch_size: int, step: int, spec: DataSpec) -> dict[str, np.ndarray]:
        draws = super().draw(rng, batch_size, step, spec)
        if self.guidance is None:
            return draws
        if not spec.conditional:
            raise UsageError("objective.guidance: iMF conditions on a guidance scale, which needs labelled "
                             "data (data.num_classes > 0); set objective.guidance: null for unlabelled data")
        averaged = np.arange(batch_size) < self.averaged(batch_size)  # where r may be below t
        t_min = np.where(averaged, rng.uniform(0.0, self.guidance.t_min_below, batch_size), 0.0)
        t_max = np.where(averaged, rng.uniform(self.guidance.t_max_above, 1.0, batch_size), 1.0)
        return {**draws, "omega": self.guidance.omega(rng, batch_size), "t_min": t_min, "t_max": t_max}


@attrs.frozen
class ImprovedMeanFlowSamplerOptions:
    """Few-step sampling of an iMF network at a guidance scale chosen now, after training."""

    nfe: int = attrs.field(default=1, validator=positive)
    #: omega >= 1 (1: no guidance); ``toolkit sample --guidance`` sets it. null for a network
    #: trained with ``objective.guidance: null``.
    guidance: float | None = attrs.field(default=1.0, validator=attrs.validators.optional(
        check(lambda w: w >= 1.0, "a value >= 1 (1: no guidance)")))
    #: [t_min, t_max]: guidance applies where t is inside.
    interval: tuple[float, float] = attrs.field(default=(0.0, 1.0), converter=tuple)

    def __attrs_post_init__(self):
        lo, hi = self.interval
        if not 0.0 <= lo <= hi <= 1.0:
            raise InvalidValue("interval", self.interval, "[t_min, t_max] with 0 <= t_min <= t_max <= 1")


class ImprovedMeanFlowSampler:
    """``z_r = z_t - (t - r) u(z_t, r, t | y, omega, interval)`` on a uniform grid; one network
    evaluation per step, guidance included (no second, unconditional pass)."""

    def __init__(self, options: ImprovedMeanFlowSamplerOptions):
        self.options, self.nfe = options, options.nfe
        g = options.guidance
        self.conditions = None if g is None else guidance_inputs(g, *options.interval)

    def sample(self, model_fn, noise, y=None):
        z, grid = noise, time_grid(self.nfe)
        for t, r in zip(grid[:-1], grid[1:]):
            z = z - (t - r) * model_fn(z, t, r, y, self.conditions)
        return z


@hookimpl
def register_objectives(register):
    register("imf", {"*": "toolkit_imf.objective:ImprovedMeanFlow"},
             options=ImprovedMeanFlowOptions,
             summary="Improved Mean Flows (arXiv 2512.02012): v-loss through u, guidance as a condition",
             examples=[{"objective": {"label_dropout": 0.25},
                        "sampler": {"name": "imf", "nfe": 2, "guidance": 2.5, "interval": [0.1, 0.9]}},
                       {"objective": {"guidance": None, "ratio": 0.75, "weight_power": 0.5},
                        "data": {"shape": [2, 4, 4], "num_classes": 0},
                        "model": {"name": "dit", "depth": 1, "width": 16, "heads": 2, "patch": 2}}])


@hookimpl
def register_samplers(register):
    register("imf", {"*": ImprovedMeanFlowSampler}, options=ImprovedMeanFlowSamplerOptions,
             summary="iMF few-step sampler, the guidance scale chosen at sampling time",
             examples=[{"objective": {"name": "imf"}, "sampler": {"nfe": 1, "guidance": 3.0, "interval": [0.2, 0.8]}},
                       {"objective": {"name": "imf"}, "sampler": {"nfe": 2, "guidance": 1.0}}])
