"""``hdf5``: training data from an HDF5 file, streamed; ``toolkit data build`` writes such files.

The file format (version 1)
---------------------------

``x``
    The training examples, shape ``(N, *S)``; ``uint8`` for images (``S = (C, H, W)``) or
    ``float32`` for latents and other arrays. Chunked in whole examples, ``(rows, *S)`` with
    ``rows = min(N, 256)`` (fewer for examples over 64 KiB, so a chunk stays <= 16 MiB): a
    chunk is what the reader fetches. Examples are stored in a seeded random order, because
    the reader only shuffles locally (see :mod:`toolkit.plugins.hdf5.dataset`).
``y`` (optional)
    Class labels, shape ``(N,)``, int64, in ``[0, num_classes)``.
``x_test``, ``y_test`` (optional)
    Held-out examples with the same layout, used for evaluation only. Without them the
    dataset holds out the last ``holdout`` examples of ``x``.
``meta`` (a group; these are its attributes)
    ``format_version``   1
    ``shape``            the per-example shape ``S`` (int64 array); must equal ``x.shape[1:]``
    ``dtype``            ``"uint8"`` or ``"float32"``: the dtype of ``x``
    ``value_range``      ``[lo, hi]``: the range of the stored values, e.g. ``[0, 255]``
    ``source``           where the data came from, as text (a path, ``sklearn:digits``, ...)
    ``num_classes``      the number of classes, at most 10**6; 0 when unlabelled (then there is no ``y``)
    ``class_names``      optional: a JSON list of ``num_classes`` names, in label order
    ``scale``            optional, default 1.0: the factor latents were multiplied by when
                         stored (recorded for whoever decodes them; the reader does not apply it)
    ``finite``           optional: 1 when the writer checked every value of ``x`` and ``x_test``
                         finite (``toolkit data build`` does). Without it, float values are
                         checked by ``toolkit data info`` (the whole file) and by the dataset (each
                         block as it is read); NaN or an infinity is an error naming the example
    ``vae``              optional: the folder of the diffusers ``AutoencoderKL`` that encoded
                         ``x`` (written by ``toolkit data encode``, with ``vae_posterior``
                         ``"sample"``/``"mean"`` and ``resolution``, the image side). With it,
                         ``toolkit sample`` decodes samples (``vae.decode(x / scale)``) and the
                         dataset requires ``normalize: false``; see
                         :mod:`toolkit.plugins.hdf5.latents`. Readers that ignore it lose nothing
                         else, so the format version stays 1.

The dataset
-----------

``data: {name: hdf5, path: FILE.h5}`` streams ``x`` in a seeded block shuffle, reading one
chunk at a time and keeping at most ``cache_chunks`` of them; with ``normalize`` (the default)
it maps ``value_range`` linearly onto [-1, 1]. Opening the file checks all of the above
and names the file, the problem and what was expected in any error.
"""

from __future__ import annotations

import attrs

from toolkit.config import check, non_negative, positive
from toolkit.hookspecs import hookimpl


@attrs.frozen
class HDF5Options:
    """An HDF5 file written by `toolkit data build`, streamed in shuffled chunk-sized blocks."""

    #: The file; required (there is no sensible default data set).
    path: str = attrs.field(validator=check(lambda p: bool(p.strip()),
                                            "the path of an HDF5 file (make one with `toolkit data build`)"))
    #: Examples of ``x`` held out for evaluation. 0: ``x_test`` when the file has one, else
    #: 10% of ``x`` (at most 2000). A file with ``x_test`` takes only 0.
    holdout: int = attrs.field(default=0, validator=non_negative)
    #: Map the stored ``value_range`` linearly onto [-1, 1]; false: the stored values, as float32.
    normalize: bool = True
    #: Mirror each training image left to right with probability 1/2 (torchvision's
    #: ``RandomHorizontalFlip``, the authors' CIFAR-10 augmentation: Gsunshine/py-meanflow at
    #: 1f6d72d, meanflow/training/data_transform.py:19). The draws are a pure function of
    #: (seed, step), so a resumed run flips as the uninterrupted one; held-out data is never flipped.
    horizontal_flip: bool = False
    #: HDF5 chunks kept in memory. 8 (two shuffle windows) reads each chunk once per epoch.
    cache_chunks: int = attrs.field(default=8, validator=positive)
    #: Build ``path`` from this when it does not exist (any SOURCE of `toolkit data build`,
    #: with its defaults), e.g. ``sklearn:digits``: a run that makes its own data. None: a
    #: missing file is an error that says how to build it.
    source: str | None = None
    #: What the file must hold, checked when it is opened; also the shape and classes
    #: ``toolkit run --smoke`` draws random data of when the file is absent. None: anything.
    shape: tuple[int, ...] | None = attrs.field(default=None, validator=check(
        lambda s: len(s) > 0 and all(n > 0 for n in s), "positive sizes, e.g. [4, 32, 32]"))
    #: 0 on a labelled file: train unconditionally on it, the labels unread.
    num_classes: int | None = attrs.field(default=None, validator=non_negative)
    #: The commands that make ``path``, printed when it is missing (e.g. ``toolkit data encode ...``).
    prepare: str | None = None


@hookimpl
def register_datasets(register):
    # A lazy reference: listing plugins does not import h5py.
    register("hdf5", {"*": "toolkit.plugins.hdf5.dataset:HDF5Dataset"}, options=HDF5Options)


@hookimpl
def register_commands(cli):
    from toolkit.plugins.hdf5.commands import add_data_commands

    add_data_commands(cli)
