"""Samplers, from t = 1 (noise) to t = 0 (data).

* ``meanflow``: few-step sampling with an average-velocity model, ``z_r = z_t - (t - r) u(z_t, t, r)``
  on a time grid (1 NFE by default: ``x = e - u(e, 1, 0)``). Guidance is whatever the model
  was trained with (MeanFlow folds it into training).
* ``euler``, ``heun``: ODE solvers of dz/dt = u(z, t, t) for instantaneous-velocity models on
  a uniform grid, with classifier-free guidance.

Written with array arithmetic only (``z - h * u``), so one implementation serves every backend.
"""

from __future__ import annotations

import attrs

from toolkit.config import InvalidValue, check, non_negative, positive
from toolkit.hookspecs import hookimpl
from toolkit.timesteps import time_grid


def guided(model_fn, z, t, r, y, scale: float):
    """Classifier-free guidance ``u_null + scale * (u_y - u_null)``; scale 1 = no guidance."""
    u = model_fn(z, t, r, y)
    if y is None or scale == 1.0:
        return u
    u_null = model_fn(z, t, r, None)
    return u_null + scale * (u - u_null)


@attrs.frozen
class EulerOptions:
    """Euler ODE sampler: one network evaluation per step."""

    nfe: int = attrs.field(default=32, validator=positive)
    guidance: float = attrs.field(default=1.0, validator=non_negative)


@attrs.frozen
class HeunOptions:
    """Heun's second-order ODE sampler: two network evaluations per step."""

    nfe: int = attrs.field(default=32, validator=check(lambda n: n >= 2 and n % 2 == 0,
                                                       "an even number >= 2 (two evaluations per step)"))
    guidance: float = attrs.field(default=1.0, validator=non_negative)


@attrs.frozen
class MeanFlowSamplerOptions:
    """MeanFlow few-step sampler: one network evaluation per step of the time grid."""

    nfe: int = attrs.field(default=1, validator=positive)
    #: explicit times 1 = t_0 > t_1 > ... > t_nfe = 0; None: uniform.
    time_grid: tuple[float, ...] | None = None

    def __attrs_post_init__(self):
        grid = self.time_grid
        if grid is None:
            return
        if len(grid) != self.nfe + 1:
            raise InvalidValue("time_grid", grid, f"nfe + 1 = {self.nfe + 1} times (nfe is {self.nfe})")
        if grid[0] != 1.0 or grid[-1] != 0.0 or any(a <= b for a, b in zip(grid, grid[1:])):
            raise InvalidValue("time_grid", grid, "times decreasing strictly from 1 to 0")


class MeanFlowSampler:
    def __init__(self, options: MeanFlowSamplerOptions):
        self.options, self.nfe = options, options.nfe
        self.grid = list(options.time_grid) if options.time_grid is not None else time_grid(options.nfe)

    def sample(self, model_fn, noise, y=None):
        z = noise
        for t, r in zip(self.grid[:-1], self.grid[1:]):
            z = z - (t - r) * model_fn(z, t, r, y)
        return z


class Euler:
    def __init__(self, options: EulerOptions):
        self.options, self.nfe = options, options.nfe

    def sample(self, model_fn, noise, y=None):
        z, grid = noise, time_grid(self.nfe)
        for t, r in zip(grid[:-1], grid[1:]):
            z = z - (t - r) * guided(model_fn, z, t, t, y, self.options.guidance)
        return z


class Heun:
    def __init__(self, options: HeunOptions):
        self.options, self.nfe = options, options.nfe

    def sample(self, model_fn, noise, y=None):
        z, grid, scale = noise, time_grid(self.nfe // 2), self.options.guidance
        for t, r in zip(grid[:-1], grid[1:]):
            u_t = guided(model_fn, z, t, t, y, scale)
            u_r = guided(model_fn, z - (t - r) * u_t, r, r, y, scale)
            z = z - (t - r) * 0.5 * (u_t + u_r)
        return z


@hookimpl
def register_samplers(register):
    register("meanflow", {"*": MeanFlowSampler}, options=MeanFlowSamplerOptions,
             examples=[{"sampler": {"nfe": 1}}, {"sampler": {"nfe": 3, "time_grid": [1.0, 0.6, 0.2, 0.0]}}])
    register("euler", {"*": Euler}, options=EulerOptions, examples=[{"sampler": {"nfe": 4, "guidance": 1.5}}])
    register("heun", {"*": Heun}, options=HeunOptions, examples=[{"sampler": {"nfe": 4, "guidance": 1.5}}])
