"""An MLP backbone for low-dimensional data, conditioned on two times and an optional label."""

from __future__ import annotations

import attrs

from toolkit.conditions import TimeInputs
from toolkit.config import positive
from toolkit.hookspecs import hookimpl


@attrs.frozen
class MLPOptions:
    """MLP u(x, t, r, y) for low-dimensional data."""

    hidden: int = attrs.field(default=256, validator=positive)
    depth: int = attrs.field(default=3, validator=positive)  # hidden layers
    time_embed_dim: int = attrs.field(default=64, validator=positive)
    #: sinusoidal embeddings see ``time_scale * t``; 1: the raw times in [0, 1], as the authors'
    #: codes embed them (Gsunshine/meanflow models/models_dit.py:58-61, Gsunshine/py-meanflow
    #: meanflow/models/unet.py:246), with no x1000.
    time_scale: float = attrs.field(default=1.0, validator=positive)
    #: which times the network embeds (toolkit.conditions.TimeInputs)
    time_inputs: TimeInputs = "t_and_gap"

    def __attrs_post_init__(self):
        if self.time_embed_dim % 2:
            raise ValueError(f"time_embed_dim must be even, got {self.time_embed_dim}")


@hookimpl
def register_backbones(register):
    register("mlp",
             {"torch": "toolkit.plugins.mlp.torch:MLP", "jax": "toolkit.plugins.mlp.jax:MLP"},
             options=MLPOptions,
             examples=[{"model": {"hidden": 32, "depth": 2, "time_embed_dim": 16}},
                       {"model": {"hidden": 32, "depth": 1, "time_embed_dim": 8, "time_inputs": "gap"},
                        "data": {"num_classes": 0, "shape": [3]}}])
