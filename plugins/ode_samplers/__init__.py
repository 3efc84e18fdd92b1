"""Euler and Heun ODE samplers for instantaneous-velocity models, with classifier-free guidance.

Written with array arithmetic only (``z - h * u``), so one implementation serves every
backend. They integrate dz/dt = u(z, t, t) from t = 1 (noise) to t = 0 (data) on a
uniform grid.
"""

from __future__ import annotations

import attrs

from toolkit.config import check, non_negative, positive
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
    register("euler", {"*": Euler}, options=EulerOptions)
    register("heun", {"*": Heun}, options=HeunOptions)
