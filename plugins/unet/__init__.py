"""A convolutional U-Net as an average-velocity network u(x, t, r, y): the DDPM++ architecture
(Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations",
2021) in the form of EDM's ``SongUNet`` (Karras et al., "Elucidating the Design Space of
Diffusion-Based Generative Models", 2022), which the MeanFlow paper uses for CIFAR-10.

Layout, as in EDM: a 3x3 input convolution; per level, ``blocks`` residual blocks, and a
residual block that halves the resolution before each level but the first; a middle of two
residual blocks, the first with self-attention; per level on the way up, a residual block that
doubles the resolution (but at the lowest level) and ``blocks + 1`` residual blocks, each
reading the running features concatenated with one saved encoder output; GroupNorm, SiLU and a
3x3 convolution to the data channels. At a feature-map height in ``attention_resolutions``,
every encoder block and the last decoder block of the level have self-attention.

Residual blocks: GroupNorm, SiLU, 3x3 conv, adaptive scale and shift from the conditioning,
SiLU, 3x3 conv, plus the input (through a 1x1 conv when the width or resolution changes), all
times 1/sqrt(2); self-attention (one head in DDPM++) adds its output and again scales by 1/sqrt(2).

Conditioning: c = silu(embed_t(t) + embed_r(t - r) + embed_y(y)), of width 4 * channels
(EDM's ``channel_mult_emb``). Each time embedder is a sinusoidal embedding of
``time_scale * time`` and a 2-layer SiLU MLP, one for t and one for the second time (the gap
t - r, the MeanFlow paper's choice, or r), as in the DiT backbone; the class embedding has a
last, null row used when y is None (classifier-free guidance). Every block reads c through
its own linear layer.

Differences from EDM's SongUNet (DDPM++ configuration):

* resampling is 2x2 average pooling down and nearest-neighbour up, which is exactly what
  EDM's ``resample_filter=[1, 1]`` computes; there is no FIR (StyleGAN) filter option;
* the conditioning enters as scale and shift (EDM's ``adaptive_scale=True``; the DDPM++
  configuration adds a bias instead), which doubles each block's ``affine`` layer;
* two time embedders (t and t - r) instead of one noise-level embedder, and a learned
  class embedding added after them instead of a one-hot linear map before the MLP;
* no augmentation label (EDM's ``augment_dim``): this toolkit does no augmentation;
* dropout (``dropout``, before each block's second conv, as EDM and the authors' CIFAR-10 U-Net,
  Gsunshine/py-meanflow at 1f6d72d, meanflow/models/unet.py:213) draws its masks from a hash of
  per-example seeds (``toolkit/backends/masks.py``), not the framework's generator, so the
  prediction and the JVP see one mask and the two backends agree; it is off by default here
  (EDM's default is 0.10; the authors train CIFAR-10 with 0.2);
* the zero-initialised layers (each block's second conv, the attention projection and the
  output conv) are exactly zero, not EDM's 1e-5 Xavier scale, so an untrained model
  outputs 0; every other weight is Xavier-uniform with zero biases, as in EDM, the
  attention ``qkv`` scaled by sqrt(0.2).

At the defaults on CIFAR-10 (3, 32, 32) the network has 60,395,267 parameters (10 classes:
60,400,899), against EDM's 55.7M for DDPM++: the scale-and-shift ``affine`` layers add
4,333,824 (33 blocks x (512 x 256 + 256)) and the second time embedder 328,704; the remaining
55,732,739 are EDM's DDPM++ layer for layer, less its 1,152-weight augmentation map.
"""

from __future__ import annotations

from typing import Literal

import attrs

from toolkit.conditions import TimeInputs
from toolkit.config import InvalidValue, check, dropout_rate, positive
from toolkit.hookspecs import hookimpl

#: the conditioning width, in multiples of ``channels`` (EDM's ``channel_mult_emb``).
EMBED_MULT = 4
#: DDPM++ scales every residual sum by 1/sqrt(2) to keep the variance from growing with depth.
SKIP_SCALE = 0.5 ** 0.5

sizes = check(lambda v: all(n > 0 for n in v), "a list of values > 0")


@attrs.frozen
class UNetOptions:
    """DDPM++ U-Net (EDM's SongUNet) for images; the defaults are its CIFAR-10 configuration."""

    #: the width of the first level; level i has ``channels * channel_mult[i]``.
    channels: int = attrs.field(default=128, validator=positive)
    channel_mult: tuple[int, ...] = attrs.field(default=(2, 2, 2), validator=sizes)
    #: residual blocks per level in the encoder (the decoder has one more).
    blocks: int = attrs.field(default=4, validator=positive)
    #: feature-map heights at which residual blocks have self-attention (the middle always has).
    attention_resolutions: tuple[int, ...] = attrs.field(default=(16,), validator=sizes)
    heads: int = attrs.field(default=1, validator=positive)
    groups: int = attrs.field(default=32, validator=positive)
    norm_eps: float = attrs.field(default=1e-6, validator=positive)
    #: the sinusoidal embedding's size (None: ``channels``, as EDM).
    frequency_dim: int | None = attrs.field(default=None, validator=positive)
    #: sinusoidal embeddings see ``time_scale * t``; 1: the raw times in [0, 1], as the authors'
    #: codes embed them (Gsunshine/meanflow models/models_dit.py:58-61, Gsunshine/py-meanflow
    #: meanflow/models/unet.py:246), with no x1000.
    time_scale: float = attrs.field(default=1.0, validator=positive)
    #: which times the network embeds (toolkit.conditions.TimeInputs)
    time_inputs: TimeInputs = "t_and_gap"
    #: the dropout rate before each block's second conv (training steps only).
    dropout: float = attrs.field(default=0.0, validator=dropout_rate)

    def __attrs_post_init__(self):
        if not self.channel_mult:
            raise InvalidValue("channel_mult", self.channel_mult, "at least one level")
        widths = sorted({self.channels} | {self.channels * m for m in self.channel_mult})
        if any(w % self.groups for w in widths):
            raise InvalidValue("groups", self.groups, f"a divisor of every width {widths} (GroupNorm)")
        if any(w % self.heads for w in widths):
            raise InvalidValue("heads", self.heads, f"a divisor of every width {widths}")
        if self.resolved_frequency_dim % 2:
            raise InvalidValue("frequency_dim", self.resolved_frequency_dim, "an even number (cosines and sines)")

    @property
    def resolved_frequency_dim(self) -> int:
        return self.frequency_dim or self.channels


@attrs.frozen
class BlockLayout:
    """One residual block: input and output widths, self-attention, and resampling."""

    cin: int
    cout: int
    attention: bool = False
    resample: Literal["down", "up"] | None = None


def check_image_spec(options: UNetOptions, spec) -> tuple[int, int, int]:
    """(channels, height, width) of image data that every level's halving divides."""
    factor = 2 ** (len(options.channel_mult) - 1)
    if len(spec.shape) != 3 or spec.shape[1] % factor or spec.shape[2] % factor:
        raise ValueError(f"UNet needs (channels, height, width) data with height and width divisible by "
                         f"{factor} ({len(options.channel_mult)} levels), got shape {spec.shape}")
    return spec.shape


def layout(options: UNetOptions, spec) -> tuple[list[BlockLayout], list[BlockLayout], list[BlockLayout]]:
    """The encoder, middle and decoder blocks, in the order EDM's SongUNet builds them; both
    backends build from this, so their structures (and parameter names) cannot drift."""
    _, height, _ = check_image_spec(options, spec)
    o, width = options, options.channels
    encoder, skips = [], [width]  # skips: the widths of the saved features, the input conv's first
    for level, mult in enumerate(o.channel_mult):
        if level:
            encoder.append(BlockLayout(width, width, resample="down"))
            skips.append(width)
        for _ in range(o.blocks):
            encoder.append(BlockLayout(width, o.channels * mult, (height >> level) in o.attention_resolutions))
            width = o.channels * mult
            skips.append(width)
    middle = [BlockLayout(width, width, attention=True), BlockLayout(width, width)]
    decoder = []
    for level, mult in reversed(list(enumerate(o.channel_mult))):
        if level != len(o.channel_mult) - 1:
            decoder.append(BlockLayout(width, width, resample="up"))
        for index in range(o.blocks + 1):
            attention = index == o.blocks and (height >> level) in o.attention_resolutions
            decoder.append(BlockLayout(width + skips.pop(), o.channels * mult, attention))
            width = o.channels * mult
    return encoder, middle, decoder


@hookimpl
def register_backbones(register):
    register("unet", {"torch": "toolkit.plugins.unet.torch:UNet", "jax": "toolkit.plugins.unet.jax:UNet"},
             options=UNetOptions,
             # two levels of one width: few distinct weight shapes keep the eager JAX engine's
             # per-operation compilations (most of the shared suite's time) down. The gradients
             # are flow matching's: the harness measures the backbone's JVP on its own, and with
             # MeanFlow's gradient (through a JVP of this network) the float64 parity test took
             # 78 s, against 41 s now (the MeanFlow loss is held to parity on the MLP and DiT
             # examples).
             examples=[{"model": {"channels": 8, "channel_mult": [1, 1], "blocks": 1,
                                  "attention_resolutions": [4], "groups": 4},
                        "data": {"name": "synthetic", "shape": [3, 8, 8], "num_classes": 4},
                        "objective": {"name": "flow_matching", "label_dropout": 0.25}}])
