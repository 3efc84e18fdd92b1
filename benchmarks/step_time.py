"""One training step per engine, backbone and objective against its bound (a benchmark, not a
test): median seconds, the ratio to flow matching's step, the ratio to the bound, compile time
and peak memory.

One step = forward, the JVP or extra forwards the objective takes, backward, optimizer update.
Counting a backward pass as two forwards and a tangent pass as one, flow matching's step is 3
forward-equivalents, and a MeanFlow step costs at least

* ``B = 1 + ratio / 3`` flow-matching steps when the JVP's primal output is the prediction (the
  joint JVP, as under ``torch.compile`` and in JAX), and
* ``1 + 2 ratio / 3`` when the JVP is a separate pass without a graph (the eager torch recipe),

where ``ratio`` is the share of the batch with r < t, the only rows that take a JVP. SplitMeanFlow
adds two forwards without a graph on its r < t rows: ``1 + 2 ratio / 3``.

Settings (CPU-sized, from the paper configs' objectives):

* ``unet``: 2.40M parameters (channels 32, channel_mult 2, 2, 2, 2 blocks), 32x32x3, batch 16,
  MeanFlow as configs/meanflow_cifar10.yaml (the authors' v1 time sampler, ratio 0.75, p 0.75);
* ``dit``: width 128, depth 4, patch 2, 32x32x3, batch 64, MeanFlow as configs/meanflow_b2.yaml
  (ratio 0.25, p 1).

Every measurement runs in its own process (so its peak resident memory is its own), and the
rounds interleave the variants, so a machine whose speed drifts affects them alike; the figures
are the medians over rounds.

    python benchmarks/step_time.py                         # a table
    python benchmarks/step_time.py --json                  # the same figures as JSON
    python benchmarks/step_time.py --backbones unet --engines torch --rounds 1
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
OBJECTIVES = ("flow_matching", "meanflow", "splitmeanflow")
ENGINES = {"torch": ("torch", False), "torch_compile": ("torch", True), "jax": ("jax", False)}
BACKBONES = {
    "unet": {"model": {"name": "unet", "channels": 32, "channel_mult": [2, 2, 2], "blocks": 2},
             "batch": 16, "paper": "meanflow_cifar10.yaml"},
    "dit": {"model": {"name": "dit", "depth": 4, "width": 128, "heads": 4, "patch": 2},
            "batch": 64, "paper": "meanflow_b2.yaml"},
}
#: the objective settings taken from a paper config (its data and labels aside)
OBJECTIVE_KEYS = ("time", "r_time", "pairing", "ratio", "weight_power", "weight_eps")


def objective_section(objective: str, backbone: str) -> dict:
    if objective != "meanflow":
        return {"name": objective}
    from toolkit.config import read_yaml

    paper = read_yaml(CONFIGS / BACKBONES[backbone]["paper"])["objective"]
    return {"name": "meanflow", **{k: paper[k] for k in OBJECTIVE_KEYS if k in paper}}


def measure(engine_name: str, backbone: str, objective: str, steps: int, warmup: int) -> dict:
    """In this process: the median step, the warm-up's excess over it (compiling), the peak
    resident memory, and the share of the batch with r < t."""
    from toolkit.config import config_from_dict
    from toolkit.interfaces import Batch, DataSpec
    from toolkit.registry import get_registry

    backend, compile_ = ENGINES[engine_name]
    setting = BACKBONES[backbone]
    registry = get_registry()
    config = config_from_dict({
        "data": "gaussian", "objective": objective_section(objective, backbone), "sampler": "meanflow",
        "model": setting["model"], "run": {"batch_size": setting["batch"]},
        "backend": {"torch": {"compile": compile_}} if backend == "torch" else {},
    }, "<benchmark>", registry=registry, backend=backend)
    spec = DataSpec((3, 32, 32))
    engine = registry.load("backend", backend, backend)(config, registry, spec)
    rng = np.random.default_rng(0)
    draw, batch_size = config.objective.options.draw, setting["batch"]

    def step() -> float:
        batch = Batch(rng.standard_normal((batch_size, *spec.shape), dtype=np.float32))
        draws = draw(rng, batch_size, 0, spec)
        noise = rng.standard_normal((batch_size, *spec.shape), dtype=np.float32)
        started = time.perf_counter()
        values = engine.train_step(batch, draws, 1e-4, noise)
        float(values["loss"])  # the step leaves its values on the device: wait for it
        return time.perf_counter() - started

    warm = [step() for _ in range(warmup)]
    times = [step() for _ in range(steps)]
    median = statistics.median(times)
    ratio = getattr(config.objective.options, "ratio", 0.0) if objective != "flow_matching" else 0.0
    return {"seconds": median, "compile_seconds": max(0.0, sum(warm) - warmup * median),
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "ratio": ratio}


def bounds(objective: str, ratio: float) -> dict:
    if objective == "meanflow":
        return {"joint": 1 + ratio / 3, "separate": 1 + 2 * ratio / 3}
    if objective == "splitmeanflow":
        return {"extra_forwards": 1 + 2 * ratio / 3}
    return {}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--engines", default="torch,jax", help=f"of {', '.join(ENGINES)}")
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--worker", nargs=3, metavar=("ENGINE", "BACKBONE", "OBJECTIVE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(*args.worker, args.steps, args.warmup)))
        return 0
    cells = [(e, b, o) for b in args.backbones.split(",") for e in args.engines.split(",")
             for o in args.objectives.split(",")]
    rounds: dict[tuple, list[dict]] = {cell: [] for cell in cells}
    for index in range(args.rounds):
        for cell in (cells if index % 2 == 0 else cells[::-1]):  # interleaved, alternating order
            out = subprocess.run([sys.executable, __file__, "--worker", *cell, "--steps", str(args.steps),
                                  "--warmup", str(args.warmup)], check=True, capture_output=True, text=True)
            rounds[cell].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{' '.join(cell):36s} {rounds[cell][-1]['seconds']:.4f} s/step", file=sys.stderr, flush=True)
    results = []
    for engine, backbone, objective in cells:
        runs = rounds[(engine, backbone, objective)]
        seconds = statistics.median(r["seconds"] for r in runs)
        base = rounds.get((engine, backbone, "flow_matching"))
        to_fm = seconds / statistics.median(r["seconds"] for r in base) if base else None
        found = bounds(objective, runs[0]["ratio"])
        results.append({
            "engine": engine, "backbone": backbone, "objective": objective, "seconds": seconds,
            "x_flow_matching": to_fm, "bounds": found,
            "x_bound": {k: to_fm / b for k, b in found.items()} if to_fm else {},
            "compile_seconds": statistics.median(r["compile_seconds"] for r in runs),
            "peak_mib": max(r["peak_mib"] for r in runs)})
    if args.json:
        print(json.dumps({"settings": {k: {**v["model"], "batch": v["batch"]} for k, v in BACKBONES.items()},
                          "rounds": args.rounds, "steps": args.steps, "results": results}))
        return 0
    print(f"\nMedian of {args.rounds} rounds, each the median of {args.steps} steps after {args.warmup} warm-up steps")
    print(f"{'engine':14s} {'backbone':8s} {'objective':14s} {'s/step':>8s} {'x FM':>6s} {'bound B':>8s} "
          f"{'x B':>6s} {'compile s':>10s} {'peak MiB':>9s}")
    for r in results:
        b = r["bounds"].get("joint", r["bounds"].get("extra_forwards"))
        to_b = r["x_bound"].get("joint", r["x_bound"].get("extra_forwards"))
        print(f"{r['engine']:14s} {r['backbone']:8s} {r['objective']:14s} {r['seconds']:8.4f} "
              f"{r['x_flow_matching'] or 0:6.2f} {b or 1:8.3f} {to_b or 1:6.2f} {r['compile_seconds']:10.1f} "
              f"{r['peak_mib']:9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
