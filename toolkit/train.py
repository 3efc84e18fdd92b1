"""The training loop, written once for every backend.

YAML -> :class:`~toolkit.config.Config` -> registry look-ups -> the backend's engine ->
this loop -> checkpoints, TensorBoard events, samples and a final metric in ``out_dir``.
The engine owns the arrays (model, optimiser, noise); this loop owns everything that is
the same whatever the framework: data order, the objective's draws, the learning rate,
logging, checkpoints and evaluation.
"""

from __future__ import annotations

import contextlib
import math
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Callable, Mapping

import attrs
import numpy as np

from toolkit.checkpoint import (NonFiniteArray, checkpoint_metadata, checkpoint_path, is_checkpoint_file,
                                latest_checkpoint, metadata_value, prune_checkpoints, restore_engine,
                                save_engine_checkpoint, stored_step)
from toolkit.config import Config, OptimizerSection, ema_decay, to_dict
from toolkit.dropout import with_dropout_seeds
from toolkit.errors import DivergenceError, UsageError
from toolkit.evaluation import (as_images, draw_samples, drawable, evaluate, evaluate_nfes, evaluation_nfes,
                                grid_size, make_sampler, picturable, prepared_metric, samples_picture,
                                sampling_weights)
from toolkit.events import EventLog
from toolkit.files import directory_lock, write_json
from toolkit.interfaces import DataSpec


def learning_rate(optimizer: OptimizerSection, step: int, total_steps: int) -> float:
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay to 0. ``step`` from 0."""
    lr = optimizer.lr
    if step < optimizer.warmup_steps:
        return lr * (step + 1) / optimizer.warmup_steps
    if optimizer.decay == "cosine":
        progress = (step - optimizer.warmup_steps) / max(1, total_steps - optimizer.warmup_steps)
        return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return lr


def default_out_dir(config: Config, backend: str) -> Path:
    return Path(config.run.out_dir or Path("runs") / f"{config.run.name}-{backend}")


#: ``--smoke``: steps and batch; the batch is small because the point is the code path of the
#: full architecture (a paper config's DiT-XL/2 on a CPU), and 4 keeps one r < t pair at ratio 0.25.
SMOKE_STEPS, SMOKE_BATCH = 3, 4


def data_spec(config: Config, registry, backend: str) -> DataSpec:
    """The shape and classes of the config's data: ``data.shape`` and ``data.num_classes`` when
    the data section states both (no file is opened), else the data set's own."""
    options = config.data.options
    shape, classes = getattr(options, "shape", None), getattr(options, "num_classes", None)
    if shape is not None and classes is not None:
        return DataSpec(tuple(shape), classes)
    return registry.load("dataset", config.data.name, backend)(options).spec


def smoke_config(config: Config, registry, backend: str) -> Config:
    """The run of ``config`` with its data replaced by random data of the same shape and classes
    (from ``data.shape``/``data.num_classes`` when the data section states them, else from the
    data set itself), :data:`SMOKE_STEPS` steps of :data:`SMOKE_BATCH`, and no metric (its
    reference data or weights may be missing too). Everything else, architecture included, is
    the config's."""
    from toolkit.config import Choice, EvalSection

    spec = data_spec(config, registry, backend)
    data = Choice("synthetic", registry.get("dataset", "synthetic").options(shape=spec.shape,
                                                                            num_classes=spec.num_classes))
    return attrs.evolve(
        config, data=data,
        run=attrs.evolve(config.run, steps=SMOKE_STEPS, batch_size=SMOKE_BATCH, name=f"{config.run.name}-smoke"),
        logging=attrs.evolve(config.logging, every=1, samples_every=None),
        checkpoint=attrs.evolve(config.checkpoint, every=SMOKE_STEPS),
        eval=EvalSection(metric=None, num_samples=SMOKE_BATCH, weights=config.eval.weights))


CALIBRATION_DRAWS = 2**16
RUN_FILES = ("run.json", "metrics.json", "samples.png", "checkpoints", "events.out.tfevents.*")


def previous_run(out_dir: Path, overwrite: bool) -> list[Path]:
    """The files of an earlier run in ``out_dir``, which only ``overwrite`` may replace (with
    :func:`remove_previous_run`). Only what the toolkit wrote is replaced: a ``checkpoints``
    folder holding anything but checkpoints is an error naming the stranger."""
    previous = [p for pattern in RUN_FILES for p in out_dir.glob(pattern)] if out_dir.is_dir() else []
    if previous and not overwrite:
        raise UsageError(f"{out_dir} already holds a run ({', '.join(sorted(p.name for p in previous))}); "
                         f"choose another --out, or pass --overwrite to replace it")
    checkpoints = out_dir / "checkpoints"
    if checkpoints.is_dir():
        strangers = sorted(p for p in checkpoints.iterdir() if not (p.is_file() and is_checkpoint_file(p.name)))
        if strangers:
            raise UsageError(f"{strangers[0]}: not a checkpoint of a run (expected only step_<N>.safetensors files "
                             f"in {checkpoints}); --overwrite deletes only what toolkit wrote: move it away, or "
                             f"choose another --out")
    return previous


def remove_previous_run(previous: list[Path]) -> None:
    for path in previous:
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def train(config: Config, backend: str, registry, out_dir: Path | None = None,
          progress: bool | None = None, overwrite: bool = False, resume: bool = False,
          on_log: Callable[[int, dict], None] | None = None) -> dict | None:
    """Train, checkpoint, evaluate. Returns the final metrics (also in ``metrics.json``); None in
    the processes of a multi-process run other than the main one (``engine.is_main``), which write
    nothing and do not evaluate. ``on_log(step, values)`` is called with what is logged every
    ``logging.every`` steps (the train values, and ``eval/`` values when measured).

    ``metrics.json`` holds the metric at the sampler's NFE (``<metric>``, with its anchors) and at
    each of ``eval.nfe`` (``<metric>_<n>nfe``), the final training loss, and ``seconds_per_step``:
    the steady-state wall time of a training step (no evaluation, pictures or checkpoints), over
    the steps this process ran after its first; ``compile_seconds``: how much longer the first
    step took (JAX's jit and ``torch.compile`` compile in it); both None when it ran fewer than
    two steps; ``wall_seconds``: all of this call, evaluation included.

    The engine's step leaves its values on the device and skips its own update when the loss or
    the gradient norm is not finite. The loop reads them back only at the first step and where
    it logs, evaluates, draws pictures, checkpoints or ends, so the host does not wait for the
    device in between; there it raises :class:`DivergenceError` naming the first non-finite step
    since the last read, before anything is written, so no checkpoint follows a diverged step.

    ``resume`` continues from the newest checkpoint in ``out_dir``: every random input of
    step i (batch, draws, noise) is a pure function of (seed, i), and the checkpoint holds
    the weights and the optimiser state, so the resumed run repeats the uninterrupted one.

    The process that writes holds a lock on ``out_dir`` (:func:`~toolkit.files.directory_lock`)
    from before it writes or deletes anything there until it returns."""
    out_dir = Path(out_dir or default_out_dir(config, backend))
    with contextlib.ExitStack() as held:
        return _train(config, backend, registry, out_dir, progress, overwrite, resume, on_log, held)


def _train(config: Config, backend: str, registry, out_dir: Path, progress: bool | None, overwrite: bool,
           resume: bool, on_log: Callable[[int, dict], None] | None, held: contextlib.ExitStack) -> dict | None:
    began = time.perf_counter()
    checkpoints = out_dir / "checkpoints"
    restored = latest_checkpoint(out_dir, config) if resume else None
    if not resume:
        previous_run(out_dir, overwrite)  # refused now; removed once this run is known to start
    dataset = registry.load("dataset", config.data.name, backend)(config.data.options)
    spec = dataset.spec
    engine = registry.load("backend", backend, backend)(config, registry, spec)
    main = getattr(engine, "is_main", True)  # of several processes (torchrun, JAX hosts) only one writes
    start, loss = 0, None
    if restored is not None:
        path, arrays, metadata = restored
        restore_engine(engine, config, arrays, path, backend, whose="this run's config")
        start = stored_step(path, metadata)
        loss = metadata_value(path, metadata, "loss", float, "a number", default=None)  # if no step is left to log it

    run, steps = config.run, config.run.steps
    draw = config.objective.options.draw
    schedule = None
    if config.schedule is not None:
        schedule = registry.load("schedule", config.schedule.name, backend)(config.schedule.options)
        schedule.calibrate(draw(np.random.default_rng([run.seed, 4]), CALIBRATION_DRAWS, 0, spec))

    metric = prepared_metric(config, backend, registry, dataset)  # now: a metric that cannot fit fails early
    for nfe in evaluation_nfes(config):  # and a sampler that cannot take an eval.nfe
        make_sampler(config, backend, registry, nfe=nfe)
    if main:
        held.enter_context(directory_lock(out_dir))
        if not resume:
            remove_previous_run(previous_run(out_dir, overwrite))  # as it is now that the directory is this run's
        _write_run_info(out_dir / "run.json", config, backend, resumed_from=start,
                        data_parallel=getattr(engine, "data_parallel", None))
    batches = dataset.batches(run.batch_size, run.seed, start=start)
    log = EventLog(out_dir, purge_step=start + 1 if start else None) if main else _NoLog()
    bar = _progress(steps, main and (config.logging.progress if progress is None else progress), start)
    last_time, last_step, last_saved = time.perf_counter(), start, restored[0] if restored else None
    first_step_seconds, train_seconds = None, 0.0  # the first step (compiling) apart from the rest
    unread: list[tuple[int, Mapping]] = []  # the values of the steps since they were last read
    try:
        for step in range(start + 1, steps + 1):
            step_began = time.perf_counter()
            lr = learning_rate(config.optimizer, step - 1, steps)
            batch = next(batches)
            rng = np.random.default_rng([run.seed, 0, step])  # this step's draws and noise, and nothing else's
            draws = draw(rng, run.batch_size, step - 1, spec)
            if schedule is not None:
                draws = schedule.apply(draws, step - 1, steps, rng)
            draws = with_dropout_seeds(draws, config, run.seed, step, run.batch_size)
            noise = rng.standard_normal(batch.x.shape, dtype=np.float32)
            try:
                unread.append((step, engine.train_step(batch, draws, lr, noise)))
            except DivergenceError as error:
                raise _diverged(step, error, last_saved) from None
            if config.ema.decays:
                engine.update_ema([ema_decay(d, step, config.ema.warmup) for d in config.ema.decays])
            logs = step % config.logging.every == 0 or step == steps
            evaluates = metric is not None and config.eval.every and step % config.eval.every == 0 and step < steps
            pictures = config.logging.samples_every and (step % config.logging.samples_every == 0 or step == steps)
            saves = config.checkpoint.every and (step % config.checkpoint.every == 0 or step == steps)
            # Reading a value waits for the device, so values are read only where the loop needs
            # them, and before anything is written from weights a diverged step may have followed.
            # The same steps in every process (not ``main`` alone): all stop at the same one.
            if step == start + 1 or logs or evaluates or pictures or saves:
                values = _read(unread, last_saved)
                unread, loss = [], values["loss"]
            step_seconds = time.perf_counter() - step_began
            if step == start + 1:
                first_step_seconds = step_seconds
            else:
                train_seconds += step_seconds
            logged = {}
            if logs:
                now = time.perf_counter()
                rate = (step - last_step) / max(now - last_time, 1e-9)
                logged = {**values, "lr": lr, "steps_per_second": rate, "samples_per_second": rate * run.batch_size}
                log.scalars(logged, step, prefix="train/")
                bar.update(step, loss, rate)
            if step == start + 1 or logs:  # the rate of the steps after the first, which compiles
                last_time, last_step = time.perf_counter(), step
            if main and evaluates:
                measured = evaluate_nfes(config, backend, registry, engine, dataset, step, metric)
                log.scalars(measured, step, prefix="eval/")
                logged.update({f"eval/{key}": value for key, value in measured.items()})
                last_time = time.perf_counter()  # the rate is of training, not of measuring
            if on_log is not None and logged:
                on_log(step, logged)
            if main and pictures:
                log_sample_grids(config, backend, registry, engine, dataset, log, step)
            if main and saves:
                log.flush()  # the curve up to a checkpoint survives a kill with it
                try:
                    last_saved = save_engine_checkpoint(checkpoint_path(checkpoints, step), engine, config,
                                                        checkpoint_metadata(step, backend, config, spec, loss))
                except NonFiniteArray as error:
                    raise _diverged(step, f"{error}, so its checkpoint was not written", last_saved) from None
                prune_checkpoints(checkpoints, config.checkpoint.keep)
        bar.close()
        if not main:  # the main process evaluates alone; the others are done
            return None
        results, samples = evaluate(config, backend, registry, engine, dataset, steps, metric=metric)
        name = config.eval.metric.name if config.eval.metric else None
        if name:
            results.update(evaluate_nfes(config, backend, registry, engine, dataset, steps, metric,
                                         known={results["nfe"]: results[name]}))
            measured = {key: value for key, value in results.items() if key.startswith(name)}
            log.scalars(measured, steps, prefix="eval/")
            if on_log is not None:
                on_log(steps, {f"eval/{key}": value for key, value in measured.items()})
        ran = steps - start
        steady = train_seconds / (ran - 1) if ran > 1 else None
        results.update({"loss": loss, "seconds_per_step": steady,
                        "compile_seconds": max(0.0, first_step_seconds - steady) if steady is not None else None,
                        "wall_seconds": time.perf_counter() - began})
        title = f"{config.run.name} ({backend}), step {steps}, {results['nfe']} NFE, {results['weights']} weights"
        if samples.ndim == 2 and picturable(samples):  # points: all of them, beside the held-out data
            rgb = samples_picture(samples, out_dir / "samples.png", title,
                                  dataset.reference(len(samples), config.run.seed).x)
            log.image("eval/samples", rgb, steps)
        elif samples.ndim == 4 and drawable(spec, dataset):
            # images (or latents, decoded): a row per class, as during training
            with sampling_weights(engine, config, config.eval.weights):
                grid = as_images(draw_samples(engine, make_sampler(config, backend, registry), spec,
                                              grid_size(spec), config.run.seed), dataset)
            if grid is not None:
                log.image("eval/samples", samples_picture(grid, out_dir / "samples.png", title), steps)
    finally:
        bar.close()
        log.close()
        if hasattr(engine, "close"):
            engine.close()  # leaves a multi-process run's process group
    write_json(out_dir / "metrics.json", results)
    return results


def _read(unread: list[tuple[int, Mapping]], last_saved: Path | None) -> dict[str, float]:
    """The values of the last of the ``unread`` steps as floats (a wait for the device); raises
    :class:`DivergenceError` naming the first of them whose loss or gradient norm is not finite.
    The engine skipped that step's update (and any later non-finite one), so the weights are
    finite, but the run stops there, as the step's data or the model has gone wrong."""
    for step, values in unread:
        loss, grad_norm = float(values["loss"]), float(values["grad_norm"])
        if not math.isfinite(loss) or not math.isfinite(grad_norm):
            raise _diverged(step, f"non-finite {'loss' if not math.isfinite(loss) else 'gradient'} "
                                  f"(loss {loss}, gradient norm {grad_norm})", last_saved)
    return {key: float(value) for key, value in unread[-1][1].items()}


def _diverged(step: int, why: Exception | str, last_saved: Path | None) -> DivergenceError:
    kept = f"; the last good checkpoint is {last_saved}" if last_saved else ""
    return DivergenceError(f"training diverged at step {step}: {why}{kept}")


def log_sample_grids(config: Config, backend: str, registry, engine, dataset, log: EventLog, step: int) -> None:
    """Pictures of samples at each of ``logging.sample_nfe`` (the same noise every time, so
    successive pictures show the model changing, not the noise). Latents are decoded by the
    data set; samples that are neither pictures nor decodable are not drawn."""
    spec = dataset.spec
    n = grid_size(spec)
    if not drawable(spec, dataset):
        return  # nothing to draw: not worth sampling
    with sampling_weights(engine, config, config.eval.weights):
        for nfe in config.logging.sample_nfe:
            samples = draw_samples(engine, make_sampler(config, backend, registry, nfe=nfe), spec, n, config.run.seed)
            images = as_images(samples, dataset)
            if images is not None:
                log.image(f"samples/{nfe}_nfe", samples_picture(images, None, f"step {step}, {nfe} NFE"), step)


class _progress:
    """A tqdm bar on a terminal; plain lines every 10% elsewhere (CI logs)."""

    def __init__(self, total: int, enabled: bool, start: int = 0):
        self.total, self.enabled, self.bar = total, enabled, None
        self.next_line = math.floor(10 * start / total + 1) / 10
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(self, step: int, loss: float, rate: float) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4g}")
        elif self.enabled and step >= self.next_line * self.total:
            eta = (self.total - step) / max(rate, 1e-9)
            print(f"step {step}/{self.total}  loss {loss:.4g}  {rate:.0f} steps/s  eta {eta:.0f}s",
                  file=sys.stderr, flush=True)
            self.next_line = math.floor(10 * step / self.total + 1) / 10

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _NoLog:
    """The event log of a process that writes nothing (not the main one of a multi-process run)."""

    def scalars(self, *args, **kwargs) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _write_run_info(path: Path, config: Config, backend: str, resumed_from: int = 0,
                    data_parallel: dict | None = None) -> None:
    versions = {}
    for distribution in ("meanflow-toolkit", "numpy", "torch", "jax", "jaxlib", "equinox", "optax"):
        try:
            versions[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            pass
    info = {"backend": backend, "command": sys.argv, "python": platform.python_version(),
            "versions": versions, "git_revision": _git_revision(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumed_from_step": resumed_from,
            "data_parallel": data_parallel, "config": to_dict(config)}
    write_json(path, info)


def _git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
