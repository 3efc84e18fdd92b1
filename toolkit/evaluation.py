"""Sampling and evaluation, for a run that just trained and for a checkpoint on disk.

``toolkit run`` ends with :func:`evaluate`; ``toolkit sample`` and ``toolkit eval`` rebuild
the engine from a checkpoint with :func:`checkpoint_engine` and call the same functions, so a
number printed by ``toolkit eval`` is the number a run would have logged.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import attrs
import numpy as np

from toolkit.checkpoint import engine_arrays, load_engine_arrays, weights_for
from toolkit.config import Config, InvalidValue, config_from_dict
from toolkit.errors import ConfigError, ToolkitError, UsageError
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
    config = config_from_dict(metadata["config"], f"{path} (its stored config)", overrides, registry=registry)
    if "spec" in metadata:
        spec = DataSpec(tuple(metadata["spec"]["shape"]), int(metadata["spec"]["num_classes"]))
    else:  # written before the spec was stored: ask the data set
        spec = registry.load("dataset", config.data.name, backend)(config.data.options).spec
    engine = registry.load("backend", backend, backend)(config, registry, spec)
    try:
        load_engine_arrays(engine, config, arrays)
    except (ValueError, RuntimeError, KeyError) as error:
        raise ToolkitError(f"{path}: its weights do not fit a {config.model.name} of its own config in "
                           f"{backend}: {error}") from None
    return engine, config, spec


@contextlib.contextmanager
def sampling_weights(engine, config: Config, weights: str = "ema"):
    """Within the block the engine holds the weights chosen by
    :func:`~toolkit.checkpoint.weights_for` (yielded as their description); the training
    weights come back after it."""
    if weights == "model" or (weights == "ema" and not config.ema.decays):
        yield "model"
        return
    training = engine.state_arrays()
    description, chosen = weights_for(engine_arrays(engine, config), config, weights)
    engine.load_state_arrays(chosen)
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
    except InvalidValue as error:
        raise ConfigError(f"sampler.{error}") from None
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


def picturable(samples: np.ndarray) -> bool:
    """Whether :func:`samples_picture` can draw these: images, or 2-D points."""
    return (samples.ndim == 4 and samples.shape[1] in (1, 3)) or (samples.ndim == 2 and samples.shape[1] == 2)


def samples_picture(samples: np.ndarray, path: Path | None, title: str, reference: np.ndarray | None = None):
    """Save (if ``path``) and return an RGB picture of samples: a grid of images, or a scatter
    of 2-D points beside ``reference``."""
    from toolkit.plotting import image_grid, save_rgb, scatter_against_data

    if not picturable(samples):
        raise UsageError(f"no picture for samples of shape {samples.shape[1:]}: expected images (C, H, W) with 1 or 3 "
                         f"channels, or 2-D points")
    if samples.ndim == 4:
        rgb = image_grid(samples, columns=GRID_COLUMNS)
        if path is not None:
            save_rgb(rgb, path)
        return rgb
    return scatter_against_data(samples, samples if reference is None else reference, path, title)


def prepared_metric(config: Config, backend: str, registry, dataset):
    """The config's ``eval.metric``, fitted to ``dataset`` if it learns from it; None without one."""
    if config.eval.metric is None:
        return None
    metric = registry.load("metric", config.eval.metric.name, backend)(config.eval.metric.options)
    if hasattr(metric, "fit"):
        metric.fit(dataset)
    return metric


def evaluate(config: Config, backend: str, registry, engine, dataset, step: int,
             nfe: int | None = None, metric=None) -> tuple[dict, np.ndarray]:
    """Sample ``eval.num_samples`` with the configured sampler (``nfe`` steps if given) and the
    ``eval.weights``, and measure ``eval.metric`` against held-out data. Returns ``(results,
    samples)``; the results carry two anchors for reading the metric: the noise itself (an
    untrained model) and as many training examples (the best a model can expect). ``metric``:
    one :func:`prepared_metric` already made."""
    n = config.eval.num_samples
    sampler = make_sampler(config, backend, registry, nfe=nfe)
    reference = dataset.reference(n, config.run.seed)
    noise = np.random.default_rng([config.run.seed, 3]).standard_normal(reference.x.shape)
    with sampling_weights(engine, config, config.eval.weights) as description:
        samples = engine.sample(sampler, noise, reference.y)
    results = {"step": step, "nfe": sampler.nfe, "weights": description}
    metric = metric or prepared_metric(config, backend, registry, dataset)
    if metric is not None:
        name = config.eval.metric.name
        results[name] = metric(samples, reference.x, seed=config.run.seed)
        results[f"{name}_of_noise"] = metric(noise, reference.x, seed=config.run.seed)
        training = next(dataset.batches(n, config.run.seed + 1)).x
        results[f"{name}_of_training_data"] = metric(training, reference.x, seed=config.run.seed)
    return results, samples
