"""Checkpoints as safetensors files: named arrays plus JSON metadata. No pickle, so loading
a checkpoint cannot run code. Writes are atomic (temporary file, fsync, rename)."""

from __future__ import annotations

import json
import os
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


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step_{step:08d}.safetensors"


def list_checkpoints(directory: Path) -> list[Path]:
    return sorted(directory.glob("step_*.safetensors"))


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink()
