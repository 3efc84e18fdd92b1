"""The training loop, written once for every backend.

YAML -> :class:`~toolkit.config.Config` -> registry look-ups -> the backend's engine ->
this loop -> checkpoints, TensorBoard events, samples and a final metric in ``out_dir``.
The engine owns the arrays (model, optimiser, noise); this loop owns everything that is
the same whatever the framework: data order, the objective's draws, the learning rate,
logging, checkpoints and evaluation.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from toolkit.checkpoint import checkpoint_metadata, checkpoint_path, prune_checkpoints, save_checkpoint
from toolkit.config import Config, OptimizerSection, to_dict
from toolkit.errors import DivergenceError, UsageError
from toolkit.events import EventLog


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


CALIBRATION_DRAWS = 2**16
RUN_FILES = ("run.json", "metrics.json", "samples.png", "checkpoints", "events.out.tfevents.*")


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Create ``out_dir``; a previous run there is an error unless ``overwrite`` removes it."""
    previous = [p for pattern in RUN_FILES for p in out_dir.glob(pattern)] if out_dir.is_dir() else []
    if previous and not overwrite:
        raise UsageError(f"{out_dir} already holds a run ({', '.join(sorted(p.name for p in previous))}); "
                         f"choose another --out, or pass --overwrite to replace it")
    for path in previous:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def train(config: Config, backend: str, registry, out_dir: Path | None = None,
          progress: bool | None = None, overwrite: bool = False) -> dict:
    """Train, checkpoint, evaluate. Returns the final metrics (also in ``metrics.json``)."""
    out_dir = Path(out_dir or default_out_dir(config, backend))
    prepare_out_dir(out_dir, overwrite)
    dataset = registry.load("dataset", config.data.name, backend)(config.data.options)
    spec = dataset.spec
    engine = registry.load("backend", backend, backend)(config, registry, spec)
    _write_run_info(out_dir / "run.json", config, backend)

    run, steps = config.run, config.run.steps
    draw = config.objective.options.draw
    schedule = None
    if config.schedule is not None:
        schedule = registry.load("schedule", config.schedule.name, backend)(config.schedule.options)
        schedule.calibrate(draw(np.random.default_rng([run.seed, 4]), CALIBRATION_DRAWS, 0, spec))

    draw_rng = np.random.default_rng([run.seed, 0])
    batches = dataset.batches(run.batch_size, run.seed)
    checkpoints = out_dir / "checkpoints"
    log = EventLog(out_dir)
    bar = _progress(steps, config.logging.progress if progress is None else progress)
    last_time, last_step, last_saved = time.perf_counter(), 0, None
    try:
        for step in range(1, steps + 1):
            lr = learning_rate(config.optimizer, step - 1, steps)
            batch = next(batches)
            draws = draw(draw_rng, run.batch_size, step - 1, spec)
            if schedule is not None:
                draws = schedule.apply(draws, step - 1, steps, draw_rng)
            try:
                values = engine.train_step(batch, draws, lr)
            except DivergenceError as error:
                kept = f"; the last good checkpoint is {last_saved}" if last_saved else ""
                raise DivergenceError(f"training diverged at step {step}: {error}{kept}") from None
            if step % config.logging.every == 0 or step == steps:
                now = time.perf_counter()
                rate = (step - last_step) / max(now - last_time, 1e-9)
                log.scalars({**values, "lr": lr, "steps_per_second": rate,
                             "samples_per_second": rate * run.batch_size}, step, prefix="train/")
                bar.update(step, values["loss"], rate)
                last_time, last_step = now, step
            if step % config.checkpoint.every == 0 or step == steps:
                last_saved = save_checkpoint(checkpoint_path(checkpoints, step),
                                             {f"model.{k}": v for k, v in engine.state_arrays().items()},
                                             checkpoint_metadata(step, backend, config, spec))
                prune_checkpoints(checkpoints, config.checkpoint.keep)
        bar.close()
        results = evaluate(config, backend, registry, engine, dataset, out_dir, log, steps)
    finally:
        bar.close()
        log.close()
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def evaluate(config: Config, backend: str, registry, engine, dataset, out_dir: Path, log: EventLog,
             step: int) -> dict:
    """Sample ``eval.num_samples`` with the configured sampler; compare with held-out data."""
    sampler = registry.load("sampler", config.sampler.name, backend)(config.sampler.options)
    reference = dataset.reference(config.eval.num_samples, config.run.seed)
    noise = np.random.default_rng([config.run.seed, 3]).standard_normal(reference.x.shape)
    samples = engine.sample(sampler, noise, reference.y)
    results = {"step": step, "nfe": sampler.nfe}
    if config.eval.metric is not None:
        metric = registry.load("metric", config.eval.metric.name, backend)(config.eval.metric.options)
        name = config.eval.metric.name
        results[name] = metric(samples, reference.x, seed=config.run.seed)
        # Two anchors for reading the number: untrained (the noise itself) and perfect (a
        # second held-out draw of the same size; finite samples put a floor under any metric).
        results[f"{name}_of_noise"] = metric(noise, reference.x, seed=config.run.seed)
        floor = dataset.reference(config.eval.num_samples, config.run.seed + 1).x
        results[f"{name}_floor"] = metric(floor, reference.x, seed=config.run.seed)
        log.scalars({name: results[name]}, step, prefix="eval/")
    if samples.ndim == 2 and samples.shape[1] == 2:
        from toolkit.plotting import scatter_against_data

        title = f"{config.run.name} ({backend}), step {step}, {sampler.nfe} NFE"
        rgb = scatter_against_data(samples, reference.x, out_dir / "samples.png", title)
        log.image("eval/samples", rgb, step)
    return results


class _progress:
    """A tqdm bar on a terminal; plain lines every 10% elsewhere (CI logs)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.bar, self.next_line = total, enabled, None, 0.1
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True)

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


def _write_run_info(path: Path, config: Config, backend: str) -> None:
    versions = {}
    for distribution in ("meanflow-toolkit", "numpy", "torch", "jax", "jaxlib", "equinox", "optax"):
        try:
            versions[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            pass
    info = {"backend": backend, "command": sys.argv, "python": platform.python_version(),
            "versions": versions, "git_revision": _git_revision(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": to_dict(config)}
    path.write_text(json.dumps(info, indent=2) + "\n")


def _git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
