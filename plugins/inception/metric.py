"""The ``fid`` and ``inception_score`` metrics (PyTorch, whatever backend trained the model).
Conventions are documented in :mod:`toolkit.plugins.inception`."""

from __future__ import annotations

import collections
import hashlib
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from toolkit.metrics import FrechetReference, frechet_distance
from toolkit.plugins.inception import FIDOptions, InceptionScoreOptions
from toolkit.plugins.inception.network import FEATURES, load_inception

SIZE = 299
#: Feature arrays kept, keyed by a digest of the images: the evaluation compares samples, noise
#: and a second held-out draw with one reference set, whose features are then computed once.
KEPT = 4


class _InceptionMetric:
    needs_images = True  # latent samples are decoded first (toolkit.evaluation.Measurement)

    def __init__(self, options):
        self.options = options
        self.network = load_inception(options.weights, options.device)
        self._cache: collections.OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = collections.OrderedDict()

    def activations(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(pool_3 features (N, 2048), bias-free logits (N, 1008))`` of images (N, C, H, W) in
        [-1, 1], C = 1 or 3; float64."""
        x = np.asarray(images, np.float32)
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"Inception metrics expect images (N, C, H, W) with C = 1 or 3 channels; got an "
                             f"array of shape {x.shape}")
        key = hashlib.sha256(repr(x.shape).encode() + x.tobytes()).digest()
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        device = next(self.network.parameters()).device
        features, logits = [], []
        with torch.inference_mode():
            for start in range(0, len(x), self.options.batch_size):
                batch = torch.tensor(x[start:start + self.options.batch_size], device=device)  # a copy: JAX's
                # arrays arrive read-only
                pool = self.network(preprocess(batch))
                features.append(pool.double().cpu().numpy())
                logits.append(self.network.logits(pool, bias=False).double().cpu().numpy())
        result = (np.concatenate(features) if features else np.zeros((0, FEATURES)),
                  np.concatenate(logits) if logits else np.zeros((0, self.network.fc.out_features)))
        self._cache[key] = result
        while len(self._cache) > KEPT:
            self._cache.popitem(last=False)
        return result


def preprocess(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> the network's input, as pytorch-fid prepares image files: quantise to
    8 bits (as saving a PNG would), scale to [0, 1], repeat a gray channel, resize bilinearly
    to 299x299 (``align_corners=False``, no antialiasing), then map to [-1, 1]."""
    x = torch.round((x.float().clamp(-1, 1) + 1) * 127.5) / 255
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return 2 * x - 1


class FID(_InceptionMetric):
    """Fréchet Inception distance of ``samples`` to ``reference``, or to the statistics file of
    the ``reference`` option when it is set (lower is better)."""

    higher_is_better = False

    def __init__(self, options: FIDOptions):
        super().__init__(options)
        self.statistics = None if options.reference is None else load_statistics(options.reference)
        self.fixed_reference = self.statistics is not None
        self._reference = None  # the statistics, factored at the first score

    def features(self, images: np.ndarray) -> np.ndarray:
        return self.activations(images)[0]

    def score(self, sample_features: np.ndarray, reference_features: np.ndarray | None, seed: int = 0) -> float:
        if self.statistics is None:
            if reference_features is None:
                raise ValueError("fid: no reference to compare with: pass reference images, or set the metric's "
                                 "reference option to a statistics file (toolkit fid-stats)")
            return frechet_distance(sample_features, reference_features)
        if self._reference is None:
            self._reference = FrechetReference(*self.statistics)
        return self._reference.distance(sample_features)

    def __call__(self, samples: np.ndarray, reference: np.ndarray | None = None, seed: int = 0) -> float:
        return self.score(self.features(samples), None if self.fixed_reference else self.features(reference))


class InceptionScore(_InceptionMetric):
    """Inception score of ``samples`` (higher is better; ``reference`` is not used)."""

    higher_is_better = True
    fixed_reference = True

    def __init__(self, options: InceptionScoreOptions):
        super().__init__(options)
        #: the standard deviation of the score over the splits of the last call
        self.std: float | None = None

    def features(self, images: np.ndarray) -> np.ndarray:
        return self.activations(images)[1]

    def score(self, sample_features: np.ndarray, reference_features=None, seed: int = 0) -> float:
        mean, self.std = inception_score(sample_features, self.options.splits, seed)
        return mean

    def __call__(self, samples: np.ndarray, reference: np.ndarray | None = None, seed: int = 0) -> float:
        return self.score(self.features(samples), None, seed)


def load_statistics(path) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` of a statistics file: an ``.npz`` with arrays ``mu`` (2048,) and ``sigma``
    (2048, 2048), as ``toolkit fid-stats`` and pytorch-fid's ``--save-stats`` write them (ADM's
    reference batches carry the same two arrays beside the images)."""
    expected = (f"expected an .npz with mu ({FEATURES},) and sigma ({FEATURES}, {FEATURES}), as written by "
                f"`toolkit fid-stats` or pytorch-fid --save-stats")
    try:
        with np.load(Path(path).expanduser(), allow_pickle=False) as stored:
            arrays = {key: np.asarray(stored[key], np.float64) for key in ("mu", "sigma") if key in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:  # not a zip: "pickled data"
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{path}: not a readable .npz ({first}); {expected}") from None
    missing = [key for key in ("mu", "sigma") if key not in arrays]
    if missing:
        raise ValueError(f"{path}: no {' or '.join(missing)} array; {expected}")
    mu, sigma = arrays["mu"], arrays["sigma"]
    if mu.shape != (FEATURES,) or sigma.shape != (FEATURES, FEATURES):
        raise ValueError(f"{path}: mu has shape {mu.shape} and sigma {sigma.shape}; {expected}")
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise ValueError(f"{path}: mu or sigma holds inf or nan; {expected}")
    return mu, sigma


def inception_score(logits: np.ndarray, splits: int, seed: int = 0) -> tuple[float, float]:
    """``(mean, std)`` over ``splits`` parts of ``exp(E_x KL(p(y|x) || p(y)))``, with ``p(y)`` the
    mean of ``p(y|x)`` within the part. The rows are shuffled with ``seed`` before splitting."""
    logits = np.asarray(logits, np.float64)
    if len(logits) < splits:
        raise ValueError(f"inception_score: {len(logits)} samples cannot be cut into {splits} splits; evaluate "
                         f"at least {splits} samples or lower the metric's splits option")
    logits = logits[np.random.default_rng(seed).permutation(len(logits))]
    scores = []
    for part in np.array_split(logits, splits):
        log_p = part - _logsumexp(part, axis=1)  # log p(y|x), (n, K)
        log_marginal = _logsumexp(log_p, axis=0) - np.log(len(part))  # log p(y), (1, K)
        kl = np.sum(np.exp(log_p) * (log_p - log_marginal), axis=1)
        scores.append(np.exp(np.mean(kl)))
    return float(np.mean(scores)), float(np.std(scores))


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    top = x.max(axis=axis, keepdims=True)
    return top + np.log(np.exp(x - top).sum(axis=axis, keepdims=True))
