"""``fid`` and ``inception_score``: the standard Inception metrics, with the network's weights
read from a local file. The toolkit never downloads them.

::

    eval:
      metric: {name: fid, weights: ~/weights/pt_inception-2015-12-05-6726825d.pth}

The weight file
---------------

The network is InceptionV3 in the variant that FID is defined with: TensorFlow's
``inception-2015-12-05`` graph, ported to PyTorch by pytorch-fid (see
:mod:`toolkit.plugins.inception.network` for how it differs from torchvision's). ``weights``
names a local file holding its parameters under torchvision's ``Inception3`` names
(``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_mean``, ..., ``fc.weight``
(1008, 2048), ``fc.bias``), in one of two formats, told apart by their content:

* a torch ``state_dict`` file, read with ``torch.load(..., weights_only=True)`` (no code
  runs): pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` as it is published in the
  releases of github.com/mseitzer/pytorch-fid (about 92 MB); or
* a safetensors file with the same names (e.g. that file re-saved with
  ``safetensors.torch.save_file``).

BatchNorm's ``num_batches_tracked`` counters may be present or not; every other key must
be there with its shape. A missing file, a file of another network and a corrupt file are
errors that name the file (and the missing, unexpected or mis-shaped keys).

Options
-------

``weights``     the weight file (required; checked to exist when the config is read)
``batch_size``  images per forward pass, default 50
``device``      a torch device, default ``cpu``
``reference``   ``fid`` only: an ``.npz`` of reference statistics (``mu``, ``sigma``) written
                by ``toolkit fid-stats IMAGE_FOLDER`` (or pytorch-fid's ``--save-stats``);
                FID then compares with those images, not with the data set's held-out
                examples. Needed for latent data, whose held-out examples are latents
``splits``      ``inception_score`` only: parts the samples are cut into, default 10

Conventions
-----------

* Inputs are images (N, C, H, W) in [-1, 1] with C = 1 (repeated to 3 channels) or 3. As
  pytorch-fid treats image files, they are quantised to 8 bits (values outside [-1, 1] are
  clipped, as saving a PNG would), resized bilinearly to 299x299 (``align_corners=False``),
  and fed in [-1, 1]. Evaluation runs under ``torch.inference_mode``, in float32.
* ``fid``: the squared Fréchet distance between Gaussian fits of the 2048 ``pool_3``
  features of the samples and the reference (:func:`toolkit.metrics.frechet_distance`).
  Lower is better. FID is biased upwards for small sample counts (the usual protocol is
  50,000 samples against the training set's statistics); compare runs at equal
  ``eval.num_samples``. The reference is the ``reference`` statistics file when set, else
  the data set's held-out examples (decoded, for latents: VAE reconstructions, not images).
* For latent data (``toolkit data encode``) the samples are decoded with the data file's VAE
  before the network sees them; evaluation streams ``eval.batch_size`` samples at a time
  through sampling, decoding and the network, and keeps only the 2048 features per sample.
* ``inception_score``: ``exp(E_x KL(p(y|x) || p(y)))`` with ``p(y|x)`` the softmax of the 1008
  logits computed *without* the classifier's bias, as the original code of Salimans et al.
  (``pool_3 @ W``) and torch-fidelity do; the samples are shuffled with the run's seed, cut
  into ``splits`` parts (10, as usual), the score computed within each part (``p(y)`` the
  part's mean), and the mean over parts returned (the standard deviation is the metric's
  attribute ``std``). Higher is better, at least 1. ``reference`` is not used.
* Numbers follow pytorch-fid's preprocessing; they are close to, not bit-identical with,
  TensorFlow's (whose resizing differs).

Both metrics need PyTorch even when the model was trained with ``--backend jax``; they are
registered for every backend, and without torch the evaluation stops with an error saying
to ``pip install 'meanflow-toolkit[torch]'``.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from toolkit.config import check, positive
from toolkit.hookspecs import hookimpl

# Checked when the config is read, so a wrong path stops the run before training, not after.
_weights = check(lambda p: Path(p).expanduser().is_file(),
                 "an existing local file of Inception weights, e.g. pytorch-fid's "
                 "pt_inception-2015-12-05-6726825d.pth (the toolkit never downloads it)")
_statistics = check(lambda p: Path(p).expanduser().is_file(),
                    "an existing .npz of reference statistics (mu, sigma), as `toolkit fid-stats` writes")
_device = check(lambda d: bool(d.strip()), "a torch device, e.g. cpu or cuda")


@attrs.frozen
class FIDOptions:
    """Fréchet Inception distance (FID), the Inception weights read from a local file."""

    weights: str = attrs.field(validator=_weights)
    batch_size: int = attrs.field(default=50, validator=positive)
    device: str = attrs.field(default="cpu", validator=_device)
    reference: str | None = attrs.field(default=None, validator=_statistics)


@attrs.frozen
class InceptionScoreOptions:
    """Inception score (IS), the Inception weights read from a local file."""

    weights: str = attrs.field(validator=_weights)
    batch_size: int = attrs.field(default=50, validator=positive)
    device: str = attrs.field(default="cpu", validator=_device)
    splits: int = attrs.field(default=10, validator=positive)


@hookimpl
def register_metrics(register):
    # Lazy references: listing plugins imports no torch, and without torch loading these says
    # which extra to install.
    register("fid", {"*": "toolkit.plugins.inception.metric:FID"}, options=FIDOptions)
    register("inception_score", {"*": "toolkit.plugins.inception.metric:InceptionScore"},
             options=InceptionScoreOptions)


@hookimpl
def register_commands(cli):
    from toolkit.plugins.inception.statistics import fid_stats

    cli.add_command(fid_stats)
