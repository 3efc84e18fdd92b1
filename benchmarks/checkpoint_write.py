"""Time and memory of writing one training checkpoint (a benchmark, not a test).

Builds the engine of a config at its full size (the data replaced as by ``--smoke``, so no data
file is needed), gives it AdamW state as after a step, and writes one checkpoint with
``save_engine_checkpoint``, as a run does. Reports the seconds the write took and the resident
memory it added above the live state: the peak during the write (Linux's ``VmHWM``, reset just
before it) less the resident size before it.

    python benchmarks/checkpoint_write.py                                   # DiT-B/2 in torch
    python benchmarks/checkpoint_write.py configs/meanflow_b2.yaml --backend jax --json
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

GIB = 1024**3


def _status(key: str) -> int:
    """A ``/proc/self/status`` size in bytes (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def measure(config_path: str, backend: str) -> dict:
    from toolkit.checkpoint import checkpoint_metadata, save_engine_checkpoint
    from toolkit.config import load_config
    from toolkit.registry import get_registry
    from toolkit.train import data_spec, smoke_config

    registry = get_registry()
    config = smoke_config(load_config(config_path, [], registry, backend=backend), registry, backend)
    spec = data_spec(config, registry, backend)
    engine = registry.load("backend", backend, backend)(config, registry, spec)
    weights = engine.state_arrays()  # moments of the weights' sizes, as AdamW holds after a step
    engine.load_optimizer_arrays({"step": 1.0, **{f"mu.{k}": v for k, v in weights.items()},
                                  **{f"nu.{k}": v * v for k, v in weights.items()}})
    del weights
    gc.collect()
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "step_00000001.safetensors"
        before = _status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        started = time.perf_counter()
        save_engine_checkpoint(path, engine, config, checkpoint_metadata(1, backend, config, spec))
        seconds = time.perf_counter() - started
        peak = _status("VmHWM")
        size = path.stat().st_size
    return {"config": config_path, "backend": backend, "seconds": seconds, "file_gib": size / GIB,
            "resident_before_gib": before / GIB, "peak_during_write_gib": peak / GIB,
            "added_by_write_gib": (peak - before) / GIB}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/meanflow_b2.yaml")
    parser.add_argument("--backend", default="torch", choices=("torch", "jax"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = measure(args.config, args.backend)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['config']} ({result['backend']}): wrote {result['file_gib']:.2f} GiB in "
              f"{result['seconds']:.1f} s; resident {result['resident_before_gib']:.2f} GiB before, "
              f"{result['peak_during_write_gib']:.2f} GiB at the peak of the write "
              f"(+{result['added_by_write_gib']:.2f} GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
