"""Checkpoints as safetensors files: named arrays plus JSON metadata. No pickle, so loading
a checkpoint cannot run code. Writes are atomic (temporary file, fsync, rename).

The format is the same for every backend (``toolkit convert`` moves a file between them):

* arrays ``model.<name>``: the backbone's weights, ``<name>`` being the torch ``state_dict``
  key, which is also the dotted Equinox pytree path. Shapes are the writing backend's; they
  differ between backends only by singleton axes (Equinox stores a conv bias as (C, 1, 1),
  torch as (C,)), so a reader reshapes by size in the same element order;
* arrays ``ema_<decay>.<name>``: the moving average of the weights with that decay (the
  config's ``ema.decays``, written by Python's ``repr``: ``ema_0.9999.<name>``);
* arrays ``optimizer.step``, ``optimizer.mu.<name>``, ``optimizer.nu.<name>``: AdamW's step
  count and moments (what torch calls ``exp_avg``/``exp_avg_sq`` and optax ``mu``/``nu``);
* metadata (the JSON string under the key ``toolkit``): ``step``, ``backend`` (that wrote
  it), ``config`` (the resolved run config, as ``toolkit config show`` prints it) and
  ``spec`` (``shape`` and ``num_classes`` of the data, so the network can be rebuilt
  without the data set), and ``loss`` (the training loss last logged, when there is one).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file
from safetensors.numpy import save_file as _save_file

from toolkit.config import InvalidValue, ema_average
from toolkit.errors import ToolkitError, UsageError, quoted
from toolkit.files import atomic_path, temporary_target

METADATA_KEY = "toolkit"


def save_checkpoint(path: str | Path, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> Path:
    """Write ``arrays`` and ``metadata`` to ``path`` atomically; a crash leaves the old file intact."""
    return write_safetensors(path, arrays, {METADATA_KEY: json.dumps(metadata)})


def save_engine_checkpoint(path: str | Path, engine, config, metadata: Mapping[str, Any]) -> Path:
    """:func:`save_checkpoint` of :func:`engine_arrays`, read from the engine's memory itself
    (its ``array_views``) where it can: the write adds no copy of the state to the run's memory
    (B/2 in torch: +0.01 GiB, against +2.45 GiB when every array was copied first;
    ``benchmarks/checkpoint_write.py``). An engine on a GPU can only hand over host copies, and
    the library takes all arrays at once, so there the write holds a host copy of the state.
    Non-finite arrays are a :class:`NonFiniteArray` and write nothing: a diverged model must not
    replace a good checkpoint."""
    return write_safetensors(path, engine_arrays(engine, config, views=True), {METADATA_KEY: json.dumps(metadata)},
                             finite=True)


class NonFiniteArray(ValueError):
    """An array holding NaN or infinite values, where only finite ones make sense."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"{name}: not finite (NaN or infinite values)")


def non_finite_array(arrays: Mapping[str, np.ndarray]) -> str | None:
    """The name of the first floating-point array holding NaN or infinite values, else None."""
    return next((name for name, value in arrays.items() if not _finite(np.asarray(value))), None)


def _finite(value: np.ndarray) -> bool:
    try:
        return bool(np.isfinite(value).all())
    except TypeError:  # not numbers (no such array in a checkpoint, but nothing to check either)
        return True


def write_safetensors(path: str | Path, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str],
                      finite: bool = False) -> Path:
    """A safetensors file of ``arrays`` and ``metadata``, written atomically by the safetensors
    library (``save_file``), which writes each array from its own memory: views of an engine's
    state are written without copying them. Its peak is that of a hand-written writer streaming
    the same views (measured: +0.001 GiB and +0.000 GiB for B/2's 1.95 GiB). ``finite``: a
    floating-point array with NaN or infinite values is a :class:`NonFiniteArray`, found before
    any file is opened."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if finite and (name := non_finite_array(arrays)) is not None:
        raise NonFiniteArray(name)
    # the library writes an array's memory as it lies, and the format's order is row-major
    arrays = {name: np.require(value, requirements="C") for name, value in arrays.items()}
    with atomic_path(path) as temporary:
        try:
            _save_file(arrays, temporary, dict(metadata))
        except SafetensorError as error:  # an I/O error (a full disk) as the OSError it is, naming the file
            code = re.search(r"os error (\d+)", str(error))
            if code is None:
                raise
            raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from error
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"{path}: no such checkpoint")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = json.loads((handle.metadata() or {}).get(METADATA_KEY, "{}"))
        arrays = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise ToolkitError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(metadata, dict):
        raise ToolkitError(f"{path}: metadata {METADATA_KEY}: expected a JSON object, got {metadata!r}")
    return arrays, metadata


_REQUIRED = object()


def metadata_value(path: Path, metadata: Mapping[str, Any], key: str, parse: Callable[[Any], Any], expected: str,
                   default: Any = _REQUIRED) -> Any:
    """``parse(metadata[key])`` of a checkpoint's metadata (``default`` when the key is absent and
    a default is given); a missing or garbled value is one error naming the file and the key."""
    if key not in metadata:
        if default is not _REQUIRED:
            return default
        raise ToolkitError(f"{path}: metadata {key}: missing; expected {expected} (not written by toolkit, or "
                           f"edited)")
    try:
        return parse(metadata[key])
    except (TypeError, ValueError, KeyError, AttributeError):
        raise ToolkitError(f"{path}: metadata {key}: expected {expected}, got {metadata[key]!r}") from None


def stored_step(path: Path, metadata: Mapping[str, Any], default: Any = _REQUIRED) -> int:
    """The training step a checkpoint's metadata records."""
    return metadata_value(path, metadata, "step", _count, "a step number (an integer >= 0)", default)


def stored_config(path: Path, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved run config a checkpoint's metadata records, as plain data."""
    return metadata_value(path, metadata, "config", _mapping, "the run config (a JSON object)")


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(value)
    return value


def _mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(value)
    return value


def checkpoint_metadata(step: int, backend: str, config, spec, loss: float | None = None) -> dict[str, Any]:
    """``loss``: the training loss last logged, which a run resumed only to evaluate reports."""
    from toolkit.config import to_dict

    return {"step": step, "backend": backend, "config": to_dict(config),
            "spec": {"shape": list(spec.shape), "num_classes": spec.num_classes},
            **({"loss": loss} if loss is not None else {})}


MODEL_PREFIX = "model."
OPTIMIZER_PREFIX = "optimizer."
#: config keys a resumed run may change: they do not alter what is computed at a step.
RESUMABLE_CHANGES = ("run.steps", "run.out_dir", "logging.", "checkpoint.", "eval.")


def ema_prefix(decay: float) -> str:
    return f"ema_{decay!r}."


def prefixed(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays whose names start with ``prefix``, without it."""
    return {name[len(prefix):]: value for name, value in arrays.items() if name.startswith(prefix)}


def engine_arrays(engine, config, views: bool = False) -> dict[str, np.ndarray]:
    """Everything of an engine a checkpoint holds, under the names above: the weights, each
    average, the optimiser state. ``views``: the engine's ``array_views()`` where it has them,
    which share its memory and so are valid only until its next call (a writer done before
    then copies nothing); else, and without it, its copies."""
    if views and hasattr(engine, "array_views"):
        weights, averages, optimizer = engine.array_views()
    else:
        weights, averages, optimizer = engine.state_arrays(), engine.ema_arrays(), engine.optimizer_arrays()
    arrays = {f"{MODEL_PREFIX}{k}": v for k, v in weights.items()}
    for decay, average in zip(config.ema.decays, averages):
        arrays.update({f"{ema_prefix(decay)}{k}": v for k, v in average.items()})
    arrays.update({f"{OPTIMIZER_PREFIX}{k}": v for k, v in optimizer.items()})
    return arrays


def load_engine_arrays(engine, config, arrays: Mapping[str, np.ndarray]) -> None:
    """Restore :func:`engine_arrays` (of any backend). A checkpoint without an average of one
    of the config's decays starts that average from the weights."""
    model = prefixed(arrays, MODEL_PREFIX)
    engine.load_state_arrays(model)
    engine.load_ema_arrays([prefixed(arrays, ema_prefix(decay)) or model for decay in config.ema.decays])
    engine.load_optimizer_arrays(prefixed(arrays, OPTIMIZER_PREFIX))


def restore_engine(engine, config, arrays: Mapping[str, np.ndarray], path: Path, backend: str,
                   whose: str = "its own config") -> None:
    """:func:`load_engine_arrays`; weights that do not fit the engine's network (missing, or of
    another size) are one error naming the file and the weight."""
    try:
        load_engine_arrays(engine, config, arrays)
    except (ValueError, RuntimeError, KeyError) as error:
        raise ToolkitError(f"{path}: its weights do not fit a {config.model.name} of {whose} in {backend}: "
                           f"{error}") from None


def chosen_average(config, weights: str = "ema") -> float | None:
    """The EMA decay whose average to sample with (None: the raw weights), as
    :func:`~toolkit.config.ema_average` reads ``weights``; the checkpoint holds the run's decays."""
    try:
        return ema_average(weights, tuple(config.ema.decays))
    except InvalidValue as error:
        stored = ", ".join(["model", *(repr(d) for d in config.ema.decays)])
        raise UsageError(f"no EMA weights with decay {quoted(error.value)} in the checkpoint; "
                         f"it has: {stored}") from None


def latest_checkpoint(out_dir: Path, config) -> tuple[Path, dict[str, np.ndarray], dict[str, Any]]:
    """The newest checkpoint of the run in ``out_dir``, checked against ``config``."""
    found = list_checkpoints(Path(out_dir) / "checkpoints")
    if not found:
        raise UsageError(f"{out_dir}: no checkpoint to resume from (looked for "
                         f"{Path(out_dir) / 'checkpoints' / 'step_*.safetensors'}); run without --resume")
    path = found[-1]
    arrays, metadata = load_checkpoint(path)
    changed = config_differences(stored_config(path, metadata), config, ignore=RESUMABLE_CHANGES)
    if changed:
        details = "; ".join(f"{key}: {old!r} in the checkpoint, {new!r} now" for key, old, new in changed[:5])
        raise UsageError(f"{path}: cannot resume with a different config ({details}). Only "
                         f"{', '.join(RESUMABLE_CHANGES)} may change")
    step = stored_step(path, metadata)
    # a run stopped after its last step but before its results (metrics.json) resumes to evaluate
    if step > config.run.steps or (step == config.run.steps and (Path(out_dir) / "metrics.json").exists()):
        raise UsageError(f"{path}: the run already reached step {step} of run.steps="
                         f"{config.run.steps}; raise run.steps to train further")
    return path, arrays, metadata


def config_differences(stored: Mapping[str, Any], config, ignore: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """``(dotted key, stored value, current value)`` wherever a stored config (plain data, as in a
    checkpoint or run.json) differs from ``config``, except keys starting with one of ``ignore``."""
    from toolkit.config import to_dict

    old, new = _flatten(stored), _flatten(json.loads(json.dumps(to_dict(config))))
    return [(key, old.get(key), new.get(key)) for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key) and not key.startswith(ignore)]


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping):
        out = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step_{step:08d}.safetensors"


def checkpoint_step(path: Path) -> int:
    """The step of a checkpoint named by :func:`checkpoint_path` (without opening it)."""
    return int(Path(path).stem.split("_")[1])


#: any number of digits: a step past 99,999,999 takes more than the usual 8
_CHECKPOINT_NAME = re.compile(r"^step_\d+\.safetensors$")


def list_checkpoints(directory: Path) -> list[Path]:
    """The run's own checkpoints, oldest first (not, e.g., ``toolkit convert`` outputs beside them)."""
    return sorted((p for p in directory.glob("step_*.safetensors") if _CHECKPOINT_NAME.match(p.name)),
                  key=checkpoint_step)


def is_checkpoint_file(name: str) -> bool:
    """Whether ``name`` is a run's checkpoint (:func:`checkpoint_path`), or a temporary file of one."""
    return bool(_CHECKPOINT_NAME.match(temporary_target(name) or name))


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink()
