"""Training on two processes (torchrun, DistributedDataParallel) or two JAX devices gives the
loss curve and the weights of one process at the same global batch.

The runs are the CLI's, in subprocesses, as a user launches them. Tolerance: float32 training
of the same global batch in a different summation order (two half-batch sums, an all-reduce).
Measured over 30 steps of ``meanflow_toy2d`` (MLP width 256, global batch 64): the loss curves
differ by at most 1.1e-7 relative (torch and JAX alike; float32's epsilon is 1.2e-7) and the
final weights by at most 2.2e-8. The tolerances (1e-5 relative, 1e-6 absolute) leave a factor
of about 50 for other machines and libraries, and stay far below what a wrong split gives: the
loss changes by about 5% from one step to the next, and splitting the batch into contiguous
blocks instead (which mis-assigns MeanFlow's JVP slice) changes the gradient by 0.1-6%.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests_paths import CONFIGS
from toolkit.checkpoint import load_checkpoint
from toolkit.cli import main

STEPS = 30
SETTINGS = [f"run.steps={STEPS}", "logging.every=1", "run.batch_size=64", f"checkpoint.every={STEPS}",
            "eval.num_samples=200", "ema.decays=[0.9]"]
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-6
TWO_CPU_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def cli_run(out, backend, launcher=(), env=None, settings=SETTINGS, config="meanflow_toy2d.yaml"):
    command = [*(launcher or [sys.executable]), "-m", "toolkit.cli", "run", str(CONFIGS / config), "--backend",
               backend, "--out", str(out), "--no-progress", *[f"--set={s}" for s in settings]]
    environment = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "WORLD_SIZE", "JAX_NUM_PROCESSES")}
    return subprocess.run(command, env={**environment, **(env or {})}, capture_output=True, text=True, timeout=600)


def curve(out, tag="train/loss"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out), size_guidance={"scalars": 0})
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


def assert_same_training(one, two, devices):
    """``two`` (a run over ``devices`` devices) trained as ``one`` (a single-device run)."""
    info_one, info_two = (json.loads((out / "run.json").read_text())["data_parallel"] for out in (one, two))
    assert info_one["devices"] == 1
    assert info_two["devices"] == devices and info_two["per_device_batch"] == 64 // devices, info_two
    assert len(list(two.glob("events.out.tfevents.*"))) == 1  # one process wrote
    for tag in ("train/loss", "train/mse_r_lt_t", "train/grad_norm"):
        a, b = curve(one, tag), curve(two, tag)
        assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
        x, y = np.array([a[s] for s in sorted(a)]), np.array([b[s] for s in sorted(b)])
        worst = float(np.max(np.abs(x - y) / np.abs(x)))
        assert worst < LOSS_RTOL, f"{tag}: {devices} devices differ from one by {worst:.2e} (relative)"
    final = f"checkpoints/step_{STEPS:08d}.safetensors"
    (a, _), (b, _) = load_checkpoint(one / final), load_checkpoint(two / final)
    assert set(a) == set(b) and any(k.startswith("optimizer.mu.") for k in a) and any(k.startswith("ema_") for k in a)
    assert not any(k.startswith("module.") or ".module." in k for k in b)  # DDP's prefix stays out
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    assert worst < WEIGHT_ATOL, f"final weights and optimiser state differ by {worst:.2e}"
    metrics_one, metrics_two = (json.loads((out / "metrics.json").read_text()) for out in (one, two))
    assert metrics_two["sliced_wasserstein"] == pytest.approx(metrics_one["sliced_wasserstein"], rel=1e-4)


def test_torchrun_two_processes_train_as_one(tmp_path):
    one = cli_run(tmp_path / "one", "torch")
    assert one.returncode == 0, one.stderr
    two = cli_run(tmp_path / "two", "torch", launcher=TORCHRUN)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count('"sliced_wasserstein"') == 1  # only rank 0 evaluates and prints the metrics
    assert_same_training(tmp_path / "one", tmp_path / "two", devices=2)


@pytest.fixture(scope="module")
def jax_one_device(tmp_path_factory):
    """The single-device JAX run the multi-device ones are compared with (run once)."""
    out = tmp_path_factory.mktemp("jax") / "one"
    done = cli_run(out, "jax")
    assert done.returncode == 0, done.stderr
    return out


def test_jax_two_devices_train_as_one(tmp_path, jax_one_device):
    two = cli_run(tmp_path / "two", "jax", env=TWO_CPU_DEVICES)
    assert two.returncode == 0, two.stderr
    assert_same_training(jax_one_device, tmp_path / "two", devices=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_jax_two_processes_train_as_one(tmp_path, jax_one_device):
    """The multi-host path (``jax.distributed``) with two processes of one CPU device each on
    this machine, writing to the same run directory as hosts sharing a file system."""
    hosts = {"JAX_NUM_PROCESSES": "2", "JAX_COORDINATOR_ADDRESS": f"localhost:{free_port()}"}
    command = [sys.executable, "-m", "toolkit.cli", "run", str(CONFIGS / "meanflow_toy2d.yaml"), "--backend", "jax",
               "--out", str(tmp_path / "two"), "--no-progress", *[f"--set={s}" for s in SETTINGS]]
    environment = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    processes = [subprocess.Popen(command, env={**environment, **hosts, "JAX_PROCESS_ID": str(i)},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err
    assert '"sliced_wasserstein"' in outputs[0][0] and '"sliced_wasserstein"' not in outputs[1][0]  # 0 evaluates
    assert json.loads((tmp_path / "two" / "run.json").read_text())["data_parallel"]["processes"] == 2
    assert_same_training(jax_one_device, tmp_path / "two", devices=2)


# One DDP step against the single-process gradient of the whole global batch, step by step, with
# the replicas compared after every step (a JVP that bypassed the DDP wrapper, as torch.func.jvp
# of the wrapped module does, would leave the gradients unsynchronised).
DDP_GRADIENTS = """
    import copy, json, sys
    import numpy as np, torch
    from toolkit.backends.torch.jvp import jvp_mode
    from toolkit.config import load_config
    from toolkit.registry import get_registry

    registry = get_registry()
    config = load_config(sys.argv[1], ["run.batch_size=64", "optimizer.grad_clip=null", "optimizer.warmup_steps=0"],
                         registry, backend="torch")
    data = registry.load("dataset", config.data.name, "torch")(config.data.options)
    engine = registry.load("backend", "torch", "torch")(config, registry, data.spec)
    reference = copy.deepcopy(engine.model)
    batches, report = data.batches(64, 0), []
    for step in range(3):
        batch = next(batches)
        rng = np.random.default_rng([0, 0, step])
        draws = config.objective.options.draw(rng, 64, step, data.spec)
        noise = rng.standard_normal(batch.x.shape, dtype=np.float32)
        reference.load_state_dict(engine.model.state_dict())
        reference.zero_grad()
        with jvp_mode("func"):  # one process, the whole batch, no DDP
            loss, _ = engine.objective.loss(reference, engine.tensor(batch.x), engine.tensor(batch.y),
                                            {k: engine.tensor(v) for k, v in draws.items()}, engine.tensor(noise))
        loss.backward()
        values = engine.train_step(batch, draws, 1e-2, noise)  # the gradients stay in .grad (no clipping)
        scale = max(float(p.grad.abs().max()) for p in reference.parameters())
        error = max(float((p.grad - q.grad).abs().max()) for p, q in zip(engine.model.parameters(),
                                                                          reference.parameters()))
        report.append({"gradient_error": error / scale, "loss": float(values["loss"]), "reference_loss": float(loss),
                       "replica_divergence": engine.replicas.divergence(engine.model)})
    if engine.is_main:
        print(json.dumps({"world_size": engine.replicas.world_size, "jvp": engine.options.jvp, "steps": report}))
    engine.close()
"""


def test_ddp_gradients_are_the_global_batch_gradient(tmp_path):
    script = tmp_path / "ddp_gradients.py"
    script.write_text(textwrap.dedent(DDP_GRADIENTS))
    done = subprocess.run([*TORCHRUN, str(script), str(CONFIGS / "meanflow_toy2d.yaml")], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["world_size"] == 2 and report["jvp"] == "forward_ad"
    for step in report["steps"]:
        assert step["gradient_error"] < 1e-5, step  # measured: 1e-7 (float32 summation order)
        assert step["loss"] == pytest.approx(step["reference_loss"], rel=1e-6)
        assert step["replica_divergence"] == 0.0, step  # identical gradients, identical updates


# The sharding itself, not only its result: inputs split over both devices, weights replicated,
# and the compiled step all-reduces.
JAX_SHARDING = """
    import json, sys
    import jax, numpy as np
    from toolkit.config import load_config
    from toolkit.registry import get_registry

    registry = get_registry()
    config = load_config(sys.argv[1], ["run.batch_size=64"], registry, backend="jax")
    data = registry.load("dataset", config.data.name, "jax")(config.data.options)
    engine = registry.load("backend", "jax", "jax")(config, registry, data.spec)
    batch = next(data.batches(64, 0))
    rng = np.random.default_rng([0, 0, 1])
    draws = config.objective.options.draw(rng, 64, 0, data.spec)
    noise = rng.standard_normal(batch.x.shape, dtype=np.float32)
    x, y, d, n = engine.sharding.shard(engine.array(batch.x), engine.array(batch.y),
                                       {k: engine.array(v) for k, v in draws.items()}, engine.array(noise))
    program = engine._grads.lower(engine.model, x, y, d, n).compile().as_text()
    engine.train_step(batch, draws, 1e-3, noise)
    weights = [leaf for leaf in jax.tree_util.tree_leaves((engine.model, engine.opt_state))
               if isinstance(leaf, jax.Array)]
    print(json.dumps({
        "devices": jax.device_count(),
        "input_shards": [list(s.data.shape) for s in x.addressable_shards],
        "noise_shards": [list(s.data.shape) for s in n.addressable_shards],
        "draw_shards": [list(s.data.shape) for s in d["t"].addressable_shards],
        "input_devices": len(x.sharding.device_set),
        "weights_replicated": all(w.sharding.is_fully_replicated and len(w.sharding.device_set) == 2
                                  for w in weights),
        "all_reduce": "all-reduce" in program}))
"""


def test_jax_batch_is_sharded_over_the_devices(tmp_path):
    script = tmp_path / "jax_sharding.py"
    script.write_text(textwrap.dedent(JAX_SHARDING))
    done = subprocess.run([sys.executable, str(script), str(CONFIGS / "meanflow_toy2d.yaml")], capture_output=True,
                          text=True, timeout=600, env={**os.environ, **TWO_CPU_DEVICES})
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts == {"devices": 2, "input_shards": [[32, 2], [32, 2]], "noise_shards": [[32, 2], [32, 2]],
                     "draw_shards": [[32], [32]], "input_devices": 2, "weights_replicated": True,
                     "all_reduce": True}


def test_a_global_batch_that_does_not_split_is_an_error(tmp_path, monkeypatch, capsys):
    # torch: the check runs before joining the process group, so a pretend world of 2 suffices
    monkeypatch.setenv("WORLD_SIZE", "2")
    common = ["run", str(CONFIGS / "meanflow_toy2d.yaml"), "--backend", "torch", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "a"), "--set", "run.batch_size=63"]) == 2
    assert "run.batch_size=63 (the global batch) is not divisible by the world size (2 processes)" in \
        capsys.readouterr().err
    # 64 pairs with ratio 0.3: 19 have r < t, which two processes cannot share equally
    assert main([*common, "--out", str(tmp_path / "b"), "--set", "run.batch_size=64", "--set",
                 "objective.ratio=0.3"]) == 2
    err = capsys.readouterr().err
    assert "run.batch_size=64 with objective.ratio=0.3 gives 19 pairs with r < t" in err and "(2 processes" in err
    # the JAX backend under torchrun: every process would train alone and write the same files
    assert main([*common[:2], "--backend", "jax", "--no-progress", "--out", str(tmp_path / "j")]) == 2
    assert "--backend jax was launched by torchrun (WORLD_SIZE=2)" in capsys.readouterr().err
    monkeypatch.delenv("WORLD_SIZE")
    # jax: two devices need a subprocess (XLA_FLAGS is read when JAX starts)
    done = cli_run(tmp_path / "c", "jax", env=TWO_CPU_DEVICES, settings=["run.batch_size=63"])
    assert done.returncode == 2, done.stderr
    assert "run.batch_size=63 (the global batch) is not divisible by the number of JAX devices (2)" in done.stderr


@pytest.mark.slow
def test_compiled_jvp_under_torchrun_is_a_clear_error(tmp_path):
    # torch.compile + DDP + a JVP objective fails inside torch (no forward-mode derivative for
    # the separately compiled model); flow matching compiles and trains under DDP.
    done = cli_run(tmp_path / "run", "torch", launcher=TORCHRUN,
                   settings=["run.steps=2", "run.batch_size=64", "backend.torch.compile=true"])
    assert done.returncode != 0
    assert "backend.torch.compile=true does not work under torchrun for an objective that takes a JVP" in done.stderr
