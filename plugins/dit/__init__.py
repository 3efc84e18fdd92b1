"""DiT (Peebles & Xie, "Scalable Diffusion Models with Transformers", arXiv 2212.09748) as
an average-velocity network u(x, t, r, y): patchify, adaLN-Zero transformer blocks, a final
adaLN layer, zero-initialised modulation and output. The conditioning vector is
embed(t) + embed(t - r) + embed(y) (the MeanFlow paper's (t, t - r) input), with a null
class for classifier-free guidance.
"""

from __future__ import annotations

from typing import Literal

import attrs
import numpy as np

from toolkit.conditions import TimeInputs
from toolkit.config import InvalidValue, dropout_rate, positive
from toolkit.hookspecs import hookimpl

#: size -> (depth, width, heads), the DiT paper's table (patch 2 on 32x32x4 latents).
SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}


@attrs.frozen
class DiTOptions:
    """DiT with adaLN-Zero blocks; sizes S/B/L/XL, any field overridable."""

    size: Literal["S", "B", "L", "XL"] = "S"
    patch: int = attrs.field(default=2, validator=positive)
    #: overrides of the size table (None: from ``size``).
    depth: int | None = attrs.field(default=None, validator=positive)
    width: int | None = attrs.field(default=None, validator=positive)
    heads: int | None = attrs.field(default=None, validator=positive)
    mlp_ratio: float = attrs.field(default=4.0, validator=positive)
    #: DiT uses the tanh approximation of GELU; torch's default is exact: both are explicit here.
    gelu: Literal["tanh", "exact"] = "tanh"
    frequency_dim: int = attrs.field(default=256, validator=positive)
    #: sinusoidal embeddings see ``time_scale * t``; 1: the raw times in [0, 1], as the authors'
    #: codes embed them (Gsunshine/meanflow models/models_dit.py:58-61, Gsunshine/py-meanflow
    #: meanflow/models/unet.py:246), with no x1000.
    time_scale: float = attrs.field(default=1.0, validator=positive)
    #: which times the network embeds (toolkit.conditions.TimeInputs)
    time_inputs: TimeInputs = "t_and_gap"
    norm_eps: float = attrs.field(default=1e-6, validator=positive)
    #: the dropout rate on each block's MLP hidden units (training steps only; masks as the
    #: U-Net's, toolkit/backends/masks.py). The authors' DiT has none (Gsunshine/meanflow at
    #: d70cb55, models/models_dit.py); the site is timm's ``Mlp`` dropout, a choice.
    dropout: float = attrs.field(default=0.0, validator=dropout_rate)

    def __attrs_post_init__(self):
        if self.resolved_width % self.resolved_heads:
            raise InvalidValue("heads", self.resolved_heads, f"a divisor of the width {self.resolved_width}")

    @property
    def resolved_depth(self) -> int:
        return self.depth or SIZES[self.size][0]

    @property
    def resolved_width(self) -> int:
        return self.width or SIZES[self.size][1]

    @property
    def resolved_heads(self) -> int:
        return self.heads or SIZES[self.size][2]


def check_image_spec(options: DiTOptions, spec) -> tuple[int, int, int]:
    """(channels, height, width) of image data that the patch size divides."""
    if len(spec.shape) != 3 or spec.shape[1] % options.patch or spec.shape[2] % options.patch:
        raise ValueError(f"DiT needs (channels, height, width) data divisible by patch {options.patch}, "
                         f"got shape {spec.shape}")
    return spec.shape


def position_embedding(width: int, grid: int) -> np.ndarray:
    """(grid * grid, width) fixed 2-D sine-cosine position embedding (as in DiT and MAE)."""
    def one_axis(dim, positions):
        freqs = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))
        angles = positions.reshape(-1)[:, None] * freqs[None]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")
    return np.concatenate([one_axis(width // 2, cols), one_axis(width // 2, rows)], axis=1)


@hookimpl
def register_backbones(register):
    tiny = {"depth": 2, "width": 32, "heads": 4, "frequency_dim": 32}
    register("dit", {"torch": "toolkit.plugins.dit.torch:DiT", "jax": "toolkit.plugins.dit.jax:DiT"},
             options=DiTOptions,
             examples=[{"model": {**tiny, "dropout": 0.25},  # MeanFlow with dropout: one mask per example
                        "data": {"name": "synthetic", "shape": [4, 8, 8], "num_classes": 8}},
                       {"model": {**tiny, "gelu": "exact", "time_inputs": "t_and_r", "patch": 4},
                        "data": {"name": "synthetic", "shape": [3, 8, 8], "num_classes": 0}}])
