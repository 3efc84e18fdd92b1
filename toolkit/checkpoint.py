"""Checkpoints as safetensors files: named arrays plus JSON metadata. No pickle, so loading
a checkpoint cannot run code. Writes are atomic (temporary file, fsync, rename).

The format is the same for every backend (``toolkit convert`` moves a file between them):

* arrays ``model.<name>``: the backbone's weights, ``<name>`` being the torch ``state_dict``
  key, which is also the dotted Equinox pytree path. Shapes are the writing backend's; they
  differ between backends only by singleton axes (Equinox stores a conv bias as (C, 1, 1),
  torch as (C,)), so a reader reshapes by size in the same element order;
* metadata (the JSON string under the key ``toolkit``): ``step``, ``backend`` (that wrote
  it), ``config`` (the resolved run config, as ``toolkit config show`` prints it) and
  ``spec`` (``shape`` and ``num_classes`` of the data, so the network can be rebuilt
  without the data set).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from safetensors.numpy import load_file, save_file
from safetensors import safe_open

from toolkit.errors import ToolkitError

METADATA_KEY = "toolkit"


def save_checkpoint(path: str | Path, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> Path:
    """Write ``arrays`` and ``metadata`` to ``path`` atomically; a crash leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    save_file({name: np.ascontiguousarray(value) for name, value in arrays.items()}, str(temporary),
              metadata={METADATA_KEY: json.dumps(metadata)})
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"{path}: no such checkpoint")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = json.loads((handle.metadata() or {}).get(METADATA_KEY, "{}"))
        return load_file(str(path)), metadata
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise ToolkitError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from None


def checkpoint_metadata(step: int, backend: str, config, spec) -> dict[str, Any]:
    from toolkit.config import to_dict

    return {"step": step, "backend": backend, "config": to_dict(config),
            "spec": {"shape": list(spec.shape), "num_classes": spec.num_classes}}


MODEL_PREFIX = "model."


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step_{step:08d}.safetensors"


_CHECKPOINT_NAME = re.compile(r"^step_\d{8}\.safetensors$")


def list_checkpoints(directory: Path) -> list[Path]:
    """The run's own checkpoints, oldest first (not, e.g., ``toolkit convert`` outputs beside them)."""
    return sorted(p for p in directory.glob("step_*.safetensors") if _CHECKPOINT_NAME.match(p.name))


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink()
