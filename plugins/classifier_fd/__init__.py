"""``classifier_fd``: a Fréchet distance in the feature space of a small classifier trained on the
data set itself, for images where no Inception network is at hand (8x8 digits, MNIST).

The toolkit trains the classifier the first time the metric is used with a data file and
stores it beside the file; later runs reuse it. It is an MLP written in NumPy, so it serves
every backend and needs no framework::

    eval:
      metric: {name: classifier_fd}          # all options have defaults

Options
-------

``hidden``      widths of the ReLU hidden layers, default ``[256, 128]``; the features are the
                activations of the last one (128 numbers per image by default)
``steps``       Adam updates, default 1000 (79 epochs of the 1617 training digits, about a
                second on one CPU core)
``batch_size``  examples per update, default 128, drawn from the data set's training stream
``lr``          Adam's learning rate, default 1e-3 (betas 0.9, 0.999, epsilon 1e-8, no decay)
``seed``        seeds the initial weights and the training stream, default 0
``path``        optional: where the classifier file is, instead of beside the data file

Training (``fit``)
------------------

The evaluation calls ``fit(dataset)`` once before the metric. It needs a labelled data set
(``num_classes > 0``; labels ``y`` in every batch) and raises a ``UsageError`` otherwise. It
minimises softmax cross-entropy on inputs flattened to vectors, exactly as the data set yields
them (an ``hdf5`` file normalised to [-1, 1]), then measures the accuracy on held-out examples
(``dataset.reference``: the file's ``x_test``, or its held-out rows) and prints it on stderr.
The accuracy is also the metric's attribute ``accuracy``, and ``info`` holds all of the
metadata below. With a data file ``D/NAME.h5`` (any data set whose ``options.path`` names a
file) the classifier is stored as ``D/NAME.classifier.safetensors``, or at ``path``. A stored
classifier is used when its metadata matches: the data file's size and SHA-256 (its name may
change), a SHA-256 of the values the data set yields (its first training batch and its
held-out examples: options that change them, such as ``normalize``, count, a cache size does
not), the shape and classes, and the training options above. Otherwise it is trained again
and replaced, saying why on stderr. A file that is not a classifier file at all is an error
(it is never overwritten). A data set without a file trains the classifier in memory on
every ``fit``, and ``path`` is then refused. When the folder is not writable the classifier
is used for the run without being stored. Training and measuring use one BLAS thread when
threadpoolctl is installed (it comes with scikit-learn): the matrices are small, and on a busy
machine BLAS threads made training 10-20x slower.

The classifier file
-------------------

A safetensors file (no pickle: reading it cannot run code), written atomically (a temporary
file in the same folder, then renamed). Arrays, float32, in torch ``nn.Linear`` layout:
``hidden.<i>.weight`` (out, in) and ``hidden.<i>.bias`` (out,) for ``i = 0, 1, ...``, and
``output.weight``, ``output.bias``. Metadata: one JSON string under the key ``classifier_fd``::

    {"format_version": 1,
     "data": {"file": "digits.h5", "size": 161894, "sha256": "...", "values_sha256": "...",
              "shape": [1, 8, 8], "num_classes": 10},
     "training": {"hidden": [256, 128], "steps": 1000, "batch_size": 128, "lr": 0.001, "seed": 0},
     "held_out": {"examples": 180, "accuracy": 0.972},
     "train_seconds": 0.8}

The metric
----------

``metric(samples, reference)`` is the squared Fréchet distance (as FID reports it) between
Gaussian fits of the features of ``samples`` and of ``reference`` (both shaped like the data,
in the data set's value range, not clipped), computed by
:func:`toolkit.metrics.frechet_distance`. Lower is better; 0 for identical sets. Numbers are
comparable only between runs that use the same classifier file: the ``sha256`` of the data
and the training options identify it. Like FID, the value is biased upwards for small sample
counts; compare runs at equal ``eval.num_samples``.
"""

from __future__ import annotations

import attrs

from toolkit.config import check, positive
from toolkit.hookspecs import hookimpl


@attrs.frozen
class ClassifierFDOptions:
    """Fréchet distance in the features of an MLP classifier trained on (and stored beside) the data file."""

    hidden: tuple[int, ...] = attrs.field(default=(256, 128), validator=check(
        lambda h: len(h) > 0 and all(isinstance(n, int) and n > 0 for n in h), "a non-empty list of widths > 0"))
    steps: int = attrs.field(default=1000, validator=positive)
    batch_size: int = attrs.field(default=128, validator=positive)
    lr: float = attrs.field(default=1e-3, validator=positive)
    seed: int = attrs.field(default=0, validator=check(lambda s: s >= 0, "a value >= 0"))
    #: The classifier file; default: ``<data file stem>.classifier.safetensors`` beside the data file.
    path: str | None = attrs.field(default=None, validator=check(
        lambda p: bool(p.strip()), "the path of a classifier file, or null (beside the data file)"))


@hookimpl
def register_metrics(register):
    register("classifier_fd", {"*": "toolkit.plugins.classifier_fd.metric:ClassifierFD"},
             options=ClassifierFDOptions)
