"""How a torch training step slows down when other processes share the CPU (a benchmark, not a
test): the digits demo's step (MeanFlow, MLP 3 x 512, batch 128, 64 dimensions) under each thread
policy, on an idle machine and beside busy processes that this script starts.

Each policy runs in its own process (OpenMP reads its settings when torch loads), the policies
and loads interleaved, so a machine whose speed drifts affects them alike:

* ``spin``: torch's default threads with OpenMP's default wait policy (its threads spin between
  parallel regions, so on a loaded machine they burn the time slices their partners need): the
  toolkit's default, ``backend.torch.threads: auto``;
* ``passive``: the same threads with ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep);
* ``short_spin``: the same threads with ``GOMP_SPINCOUNT=1000`` (a short spin, then sleep);
* ``one``: one thread (``backend.torch.threads: 1``).

A load of L is L processes spinning in pure Python. With one load process per two CPUs a
process that uses every CPU is owed two thirds of the machine; with one per CPU, half.

    python benchmarks/shared_cpu.py            # a table
    python benchmarks/shared_cpu.py --json     # {"spin": {"0": ms, "1": ms, ...}, ...}
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

POLICIES = {"spin": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "short_spin": {"GOMP_SPINCOUNT": "1000"},
            "one": {"OMP_NUM_THREADS": "1"}}


def step_times(steps: int, warmup: int) -> list[float]:
    """Seconds of each of ``steps`` training steps of the digits demo's MeanFlow MLP."""
    import numpy as np

    from toolkit.config import config_from_dict
    from toolkit.interfaces import Batch, DataSpec
    from toolkit.registry import get_registry

    registry = get_registry()
    config = config_from_dict({
        "data": "gaussian", "objective": "meanflow", "sampler": "meanflow",
        "model": {"name": "mlp", "hidden": 512, "depth": 3}, "run": {"batch_size": 128},
    }, "<benchmark>", registry=registry, backend="torch")
    spec = DataSpec((64,))
    engine = registry.load("backend", "torch", "torch")(config, registry, spec)
    rng = np.random.default_rng(0)
    draw = config.objective.options.draw

    def step() -> float:
        batch = Batch(rng.standard_normal((128, 64), dtype=np.float32))
        draws, noise = draw(rng, 128, 0, spec), rng.standard_normal((128, 64), dtype=np.float32)
        started = time.perf_counter()
        engine.train_step(batch, draws, 1e-4, noise)
        return time.perf_counter() - started

    for _ in range(warmup):
        step()
    return [step() for _ in range(steps)]


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def measure(policy: str, load: int, args) -> dict:
    """Mean and median milliseconds per step of ``policy`` beside ``load`` spinning processes."""
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(load)]
    for spinner in spinners:
        spinner.start()
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        out = subprocess.run([sys.executable, __file__, "--worker", "--steps", str(args.steps),
                              "--warmup", str(args.warmup)], env={**env, **POLICIES[policy]}, check=True,
                             capture_output=True, text=True)
        times = json.loads(out.stdout)
    finally:
        stop.set()
        for spinner in spinners:
            spinner.join()
    return {"mean_ms": 1000 * statistics.mean(times), "median_ms": 1000 * statistics.median(times)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--loads", default=None, help="numbers of spinning processes [default: 0, CPUs/2, CPUs]")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions; the figures are the medians")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(step_times(args.steps, args.warmup)))
        return 0
    cpus = len(os.sched_getaffinity(0))
    loads = [int(n) for n in args.loads.split(",")] if args.loads else sorted({0, max(1, cpus // 2), cpus})
    policies = args.policies.split(",")
    rounds: dict[str, dict[int, list[dict]]] = {p: {n: [] for n in loads} for p in policies}
    for _ in range(args.rounds):
        for load in loads:
            for policy in policies:
                result = measure(policy, load, args)
                rounds[policy][load].append(result)
                print(f"{policy:8s} load {load}: mean {result['mean_ms']:.1f} ms, median {result['median_ms']:.1f} ms",
                      file=sys.stderr, flush=True)
    results = {p: {str(n): statistics.median(r["mean_ms"] for r in rounds[p][n]) for n in loads} for p in policies}
    if args.json:
        print(json.dumps({"cpus": cpus, "mean_ms_per_step": results}))
        return 0
    print(f"\nThe digits demo's torch step (MeanFlow, MLP 3 x 512, batch 128) on {cpus} CPUs: mean ms per step "
          f"(median of {args.rounds} rounds of {args.steps} steps), and the speed kept against the idle machine")
    print(f"{'policy':8s} " + " ".join(f"{f'load {n}':>16s}" for n in loads))
    for policy in policies:
        idle = results[policy][str(loads[0])]
        print(f"{policy:8s} " + " ".join(f"{results[policy][str(n)]:7.1f} ({idle / results[policy][str(n)]:4.2f}x)"
                                         .rjust(16) for n in loads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
