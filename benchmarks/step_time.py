"""Median time of one training step per backend and objective (a benchmark, not a test).

One step = forward, the JVP where the objective takes one, backward, optimizer update, on
the same small DiT and batch (SPEC.md section 7: width 128, depth 4, batch 64, 32x32x3).
Compilation (torch.compile, JAX jit) happens in the warm-up steps and is reported apart.

    python benchmarks/step_time.py            # a table
    python benchmarks/step_time.py --json     # {"torch": {"meanflow": seconds, ...}, ...}
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from toolkit.config import config_from_dict
from toolkit.interfaces import Batch, DataSpec
from toolkit.registry import get_registry

OBJECTIVES = ("flow_matching", "meanflow", "splitmeanflow")
VARIANTS = {"torch": ("torch", False), "torch_compile": ("torch", True), "jax": ("jax", False)}


def measure(variant: str, objective: str, args) -> tuple[float, float]:
    """(median step seconds, seconds spent compiling in the warm-up)."""
    backend, compile_ = VARIANTS[variant]
    registry = get_registry()
    config = config_from_dict({
        "data": "gaussian", "objective": objective, "sampler": "meanflow",
        "model": {"name": "dit", "depth": args.depth, "width": args.width, "heads": 4, "patch": 2},
        "run": {"batch_size": args.batch},
        "backend": {"torch": {"compile": compile_}},
    }, "<benchmark>", registry=registry, backend=backend)
    spec = DataSpec((3, args.size, args.size))
    engine = registry.load("backend", backend, backend)(config, registry, spec)
    rng = np.random.default_rng(0)
    draw = config.objective.options.draw

    def step():
        batch = Batch(rng.standard_normal((args.batch, *spec.shape)))
        draws, noise = draw(rng, args.batch, 0, spec), rng.standard_normal((args.batch, *spec.shape), dtype=np.float32)
        started = time.perf_counter()
        float(engine.train_step(batch, draws, 1e-4, noise)["grad_norm"])  # waits for the step's update
        return time.perf_counter() - started

    warm = [step() for _ in range(args.warmup)]
    times = [step() for _ in range(args.steps)]
    median = statistics.median(times)
    return median, max(0.0, sum(warm) - args.warmup * median)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    results, compile_times = {}, {}
    for variant in args.variants.split(","):
        for objective in args.objectives.split(","):
            median, compiling = measure(variant, objective, args)
            results.setdefault(variant, {})[objective] = median
            compile_times.setdefault(variant, {})[objective] = compiling
            print(f"{variant:14s} {objective:14s} {median:.4f} s/step", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"\nDiT width {args.width}, depth {args.depth}, batch {args.batch}, {args.size}x{args.size}x3; "
          f"median of {args.steps} steps after {args.warmup} warm-up steps")
    print(f"{'backend':14s} {'objective':14s} {'s/step':>8s} {'x flow_matching':>16s} {'compile s':>10s}")
    for variant, row in results.items():
        base = row.get("flow_matching")
        for objective, seconds in row.items():
            ratio = f"{seconds / base:.2f}" if base else "-"
            print(f"{variant:14s} {objective:14s} {seconds:8.4f} {ratio:>16s} {compile_times[variant][objective]:10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
