"""Sampling and evaluation, for a run that just trained and for a checkpoint on disk.

``toolkit run`` ends with :func:`evaluate`; ``toolkit sample`` and ``toolkit eval`` rebuild
the engine from a checkpoint with :func:`checkpoint_engine` and call the same functions, so a
number printed by ``toolkit eval`` is the number a run would have logged.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Sequence

import attrs
import numpy as np

from toolkit.checkpoint import chosen_average, metadata_value, restore_engine, stored_config
from toolkit.config import Config, InvalidValue, config_from_dict
from toolkit.errors import ConfigError, ToolkitError, UsageError, quoted
from toolkit.interfaces import DataSpec

#: samples per row of a class-conditional grid (one row per class)
GRID_COLUMNS = 10


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the newest checkpoint of a run directory."""
    from toolkit.checkpoint import list_checkpoints

    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path / "checkpoints") or list_checkpoints(path)
        if not found:
            raise UsageError(f"{path}: a folder without checkpoints (looked for checkpoints/step_*.safetensors); "
                             f"expected a run directory or a checkpoint file")
        return found[-1]
    return path


def checkpoint_engine(path: Path, arrays: dict, metadata: dict, backend: str, registry, overrides=()):
    """``(engine, config, spec)``: an engine of ``backend`` holding a loaded checkpoint (weights,
    averages and optimiser state), built from the checkpoint's own config (with ``--set``
    style ``overrides``) and data spec."""
    if "config" not in metadata:
        raise ToolkitError(f"{path}: the checkpoint carries no run config (metadata key 'config'); it was not "
                           f"written by toolkit")
    config = config_from_dict(stored_config(path, metadata), f"{path} (its stored config)", overrides,
                              registry=registry)
    spec = metadata_value(path, metadata, "spec", _data_spec, '{"shape": [sizes], "num_classes": n}',
                          default=None)
    if spec is None:  # written before the spec was stored: ask the data set
        spec = registry.load("dataset", config.data.name, backend)(config.data.options).spec
    engine = registry.load("backend", backend, backend)(config, registry, spec)
    restore_engine(engine, config, arrays, path, backend)
    return engine, config, spec


def _data_spec(value) -> DataSpec:
    shape, classes = value["shape"], value["num_classes"]
    if not (isinstance(shape, list) and shape and all(isinstance(n, int) and n > 0 for n in shape)
            and isinstance(classes, int) and classes >= 0):
        raise ValueError(value)
    return DataSpec(tuple(shape), classes)


@contextlib.contextmanager
def sampling_weights(engine, config: Config, weights: str = "ema"):
    """Within the block the engine holds the weights chosen by
    :func:`~toolkit.checkpoint.chosen_average` (yielded as their description); the training
    weights come back after it."""
    decay = chosen_average(config, weights)
    if decay is None:
        yield "model"
        return
    # only the chosen average and the training weights are copied (not the optimiser state)
    chosen = engine.ema_arrays()[tuple(config.ema.decays).index(decay)]
    training = engine.state_arrays()
    engine.load_state_arrays(chosen)
    del chosen
    description = f"ema {decay!r}"
    try:
        yield description
    finally:
        engine.load_state_arrays(training)


def make_sampler(config: Config, backend: str, registry, nfe: int | None = None, guidance: float | None = None):
    """The config's sampler, with its ``nfe`` (and ``guidance``) replaced when given."""
    options = config.sampler.options
    changes = {}
    if nfe is not None:
        changes["nfe"] = nfe
        if hasattr(options, "time_grid"):
            changes["time_grid"] = None  # an explicit grid belongs to the configured nfe
    if guidance is not None:
        changes["guidance"] = guidance
    fields = {f.name for f in attrs.fields(type(options))} if options is not None else set()
    for key in changes:
        if key not in fields:
            why = (" (MeanFlow folds guidance into training: objective.guidance)"
                   if key == "guidance" and config.sampler.name == "meanflow" else "")
            raise UsageError(f"the {config.sampler.name} sampler has no {key} option{why}")
    try:
        options = attrs.evolve(options, **changes) if changes else options
    except InvalidValue as error:  # a value given on the command line (--nfe, --guidance)
        raise ConfigError("", f"sampler.{error.name}", f"got {quoted(error.value)}, expected {error.expected}") from None
    return registry.load("sampler", config.sampler.name, backend)(options)


def grid_labels(spec: DataSpec, n: int, label: int | None = None) -> np.ndarray | None:
    """Labels of a picture of ``n`` samples: all ``label``, or the classes in turn (a row each
    on a :data:`GRID_COLUMNS`-wide grid); None for unconditional data."""
    if not spec.conditional:
        if label is not None:
            raise UsageError(f"--class {label}: the model is unconditional")
        return None
    if label is not None:
        if not 0 <= label < spec.num_classes:
            raise UsageError(f"--class {label}: expected a class in [0, {spec.num_classes - 1}]")
        return np.full(n, label, dtype=np.int64)
    return (np.arange(n) // GRID_COLUMNS % spec.num_classes).astype(np.int64)


def grid_size(spec: DataSpec) -> int:
    """Samples in a picture logged during training: a row of each class (up to ten), or 8 x 8."""
    return GRID_COLUMNS * min(spec.num_classes, GRID_COLUMNS) if spec.conditional else 64


def draw_samples(engine, sampler, spec: DataSpec, n: int, seed: int, label: int | None = None) -> np.ndarray:
    noise = np.random.default_rng([seed, 5]).standard_normal((n, *spec.shape)).astype(np.float32)
    return engine.sample(sampler, noise, grid_labels(spec, n, label))


def is_image_shape(shape: Sequence[int]) -> bool:
    """Whether examples of this shape are images: (C, H, W) with 1 or 3 channels."""
    return len(shape) == 3 and shape[0] in (1, 3)


def picturable(samples: np.ndarray) -> bool:
    """Whether :func:`samples_picture` can draw these: images, or 2-D points."""
    return (samples.ndim == 4 and is_image_shape(samples.shape[1:])) or (samples.ndim == 2 and samples.shape[1] == 2)


def drawable(spec: DataSpec, dataset) -> bool:
    """Whether samples of this data can be drawn: images, 2-D points, or latents that the data
    set decodes (``Dataset.decode``)."""
    return picturable(np.zeros((1, *spec.shape))) or hasattr(dataset, "decode")


def samples_picture(samples: np.ndarray, path: Path | None, title: str, reference: np.ndarray | None = None):
    """Save (if ``path``) and return an RGB picture of samples: a grid of images, or a scatter
    of 2-D points, beside the held-out ``reference`` when given."""
    from toolkit.plotting import image_grid, save_rgb, scatter_against_data

    if not picturable(samples):
        raise UsageError(f"no picture for samples of shape {samples.shape[1:]}: expected images (C, H, W) with 1 or 3 "
                         f"channels, or 2-D points")
    if samples.ndim == 4:
        rgb = image_grid(samples, columns=GRID_COLUMNS)
        if path is not None:
            save_rgb(rgb, path)
        return rgb
    return scatter_against_data(samples, reference, path, title)


def as_images(samples: np.ndarray, dataset) -> np.ndarray | None:
    """Samples as something :func:`samples_picture` draws: themselves when they are images or
    points, decoded by the data set when they are latents, else None."""
    if picturable(samples):
        return samples
    decode = getattr(dataset, "decode", None)
    return decode(samples) if decode is not None else None


def prepared_metric(config: Config, backend: str, registry, dataset):
    """The config's ``eval.metric``, fitted to ``dataset`` if it learns from it; None without one.
    A metric of images on data that are neither images nor decodable is an error here, before
    any training."""
    if config.eval.metric is None:
        return None
    metric = registry.load("metric", config.eval.metric.name, backend)(config.eval.metric.options)
    shape = dataset.spec.shape
    if getattr(metric, "needs_images", False) and not (is_image_shape(shape) or hasattr(dataset, "decode")):
        raise UsageError(f"eval.metric {config.eval.metric.name} measures images, but the data's examples have "
                         f"shape {shape} and the data set cannot decode them (for latents: a data file made by "
                         f"`toolkit data encode`, whose VAE folder exists here, and diffusers installed)")
    if hasattr(metric, "fit"):
        metric.fit(dataset)
    return metric


def chunks(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


class Measurement:
    """A metric applied to many samples ``size`` at a time: decoded first when the metric needs
    images and the data are latents, reduced to features chunk by chunk when the metric offers
    ``features`` (see :class:`toolkit.interfaces.Metric`), so memory holds features, not images."""

    def __init__(self, metric, dataset, size: int, seed: int):
        self.metric, self.size, self.seed = metric, size, seed
        self.decode = getattr(dataset, "decode", None) if getattr(metric, "needs_images", False) else None
        self.streams = hasattr(metric, "features") and hasattr(metric, "score")

    def prepare(self, x: np.ndarray):
        """What :meth:`score` takes for ``x``: features, or the (decoded) arrays."""
        if self.decode is None and not self.streams:
            return x
        parts = []
        for part in chunks(len(x), self.size):
            inputs = x[part] if self.decode is None else self.decode(x[part])
            parts.append(self.metric.features(inputs) if self.streams else inputs)
        return np.concatenate(parts)

    def score(self, prepared, reference) -> float:
        if self.streams:
            return float(self.metric.score(prepared, reference, seed=self.seed))
        return float(self.metric(prepared, reference, seed=self.seed))


def evaluate(config: Config, backend: str, registry, engine, dataset, step: int,
             nfe: int | None = None, metric=None, anchors: bool | None = None) -> tuple[dict, np.ndarray]:
    """Sample ``eval.num_samples`` with the configured sampler (``nfe`` steps if given) and the
    ``eval.weights``, ``eval.batch_size`` at a time, and measure ``eval.metric`` against
    held-out data, or against the metric's own reference (FID statistics of a training set;
    the classes are then balanced, ``i % num_classes``, as the ImageNet protocol asks).
    Returns ``(results, samples)``, the samples as the model makes them (latents stay latents).
    With ``eval.anchors`` the results carry two anchors for reading the metric: the noise itself
    (an untrained model) and as many training examples (the best a model can expect; for
    latents, the VAE's reconstructions); ``anchors`` overrides ``eval.anchors``. ``metric``: one
    :func:`prepared_metric` already made."""
    n, seed, size, spec = config.eval.num_samples, config.run.seed, config.eval.batch_size, dataset.spec
    sampler = make_sampler(config, backend, registry, nfe=nfe)
    metric = metric or prepared_metric(config, backend, registry, dataset)
    if metric is not None and getattr(metric, "fixed_reference", False):
        reference = None
        labels = np.arange(n, dtype=np.int64) % spec.num_classes if spec.conditional else None
    else:
        reference = dataset.reference(n, seed)
        labels = reference.y

    def noise():  # the same draws every time, one chunk at a time
        rng = np.random.default_rng([seed, 3])
        for part in chunks(n, size):
            yield part, rng.standard_normal((part.stop - part.start, *spec.shape))

    with sampling_weights(engine, config, config.eval.weights) as description:
        samples = np.concatenate([engine.sample(sampler, z, None if labels is None else labels[part])
                                  for part, z in noise()])
    results = {"step": step, "nfe": sampler.nfe, "weights": description}
    if metric is not None:
        name = config.eval.metric.name
        measure = Measurement(metric, dataset, size, seed)
        target = None if reference is None else measure.prepare(reference.x)
        results[name] = measure.score(measure.prepare(samples), target)
        if config.eval.anchors if anchors is None else anchors:
            pure_noise = np.concatenate([z for _, z in noise()])
            results[f"{name}_of_noise"] = measure.score(measure.prepare(pure_noise), target)
            training = next(dataset.batches(n, seed + 1)).x
            results[f"{name}_of_training_data"] = measure.score(measure.prepare(training), target)
    return results, samples


def sampler_nfe(config: Config) -> int | None:
    """The configured sampler's number of network evaluations, if its options state one."""
    return getattr(config.sampler.options, "nfe", None)


def evaluation_nfes(config: Config) -> tuple[int, ...]:
    """The numbers of network evaluations a run is measured at: its sampler's, then ``eval.nfe``."""
    own = sampler_nfe(config)
    ordered = ([own] if own is not None else []) + list(config.eval.nfe)
    return tuple(dict.fromkeys(ordered))


def nfe_key(metric_name: str, nfe: int) -> str:
    """The results key (and TensorBoard tag under ``eval/``) of a metric at ``nfe`` evaluations."""
    return f"{metric_name}_{nfe}nfe"


def evaluate_nfes(config: Config, backend: str, registry, engine, dataset, step: int, metric,
                  known: dict[int, float] | None = None) -> dict[str, float]:
    """``eval.metric`` at each of :func:`evaluation_nfes` without anchors, as
    ``{nfe_key(name, nfe): value}``, and under ``name`` itself the value at the sampler's own
    NFE; ``known`` values (by nfe) are not measured again."""
    if config.eval.metric is None:
        return {}
    name, known = config.eval.metric.name, known or {}
    values = {}
    for nfe in evaluation_nfes(config):
        if nfe not in known:
            known[nfe] = evaluate(config, backend, registry, engine, dataset, step, nfe=nfe, metric=metric,
                                  anchors=False)[0][name]
        values[nfe_key(name, nfe)] = known[nfe]
    if sampler_nfe(config) is not None:
        values[name] = known[sampler_nfe(config)]
    return values
