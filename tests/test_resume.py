"""A run killed with SIGKILL and resumed ends exactly where the uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np

from tests_paths import CONFIGS
from toolkit.checkpoint import list_checkpoints, load_checkpoint
from toolkit.cli import main

# A data set that kills its own process (SIGKILL: no clean-up, no finally) when the training
# stream reaches batch ``kill_at``: a kill at an exact, reproducible point between checkpoints
# (only in a run that starts from scratch, so the resumed run goes through).
KILLER = """
    import os, signal
    import attrs
    from toolkit import hookimpl
    from toolkit.plugins.toy2d import Checkerboard, Toy2DOptions

    @attrs.frozen
    class KillerOptions:
        kill_at: int = 0

    class Killer(Checkerboard):
        def __init__(self, options):
            super().__init__(Toy2DOptions(conditional=True))
            self.kill_at = options.kill_at

        def batches(self, batch_size, seed, start=0):
            for index, batch in enumerate(super().batches(batch_size, seed, start), start):
                if index == self.kill_at and self.kill_at and start == 0:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield batch

    @hookimpl
    def register_datasets(register):
        register("killer", {"*": Killer}, options=KillerOptions)
"""
STEPS, EVERY, KILL_AT = 120, 40, 100


def run(site, out, backend, *extra):
    settings = [f"run.steps={STEPS}", f"checkpoint.every={EVERY}", "checkpoint.keep=5", "logging.every=10",
                "eval.num_samples=200", "data.name=killer", "model.hidden=64", "run.batch_size=64",
                "ema.decays=[0.9, 0.99]"]
    command = [sys.executable, "-m", "toolkit.cli", "run", str(CONFIGS / "meanflow_toy2d.yaml"), "--backend",
               backend, "--out", str(out), "--no-progress", *[f"--set={s}" for s in settings], *extra]
    return subprocess.run(command, env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True,
                          timeout=600)


def scalars(out, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out), size_guidance={"scalars": 0})
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


def test_a_killed_run_resumes_exactly(install_plugin, tmp_path, backend):
    site = install_plugin("toolkit-killer", "killer", KILLER)
    whole = run(site, tmp_path / "whole", backend)
    assert whole.returncode == 0, whole.stderr

    killed = run(site, tmp_path / "killed", backend, f"--set=data.kill_at={KILL_AT}")
    assert killed.returncode == -signal.SIGKILL
    kept = [p.name for p in list_checkpoints(tmp_path / "killed" / "checkpoints")]
    assert kept == ["step_00000040.safetensors", "step_00000080.safetensors"]  # none half-written

    resumed = run(site, tmp_path / "killed", backend, "--resume", f"--set=data.kill_at={KILL_AT}")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr

    final = f"checkpoints/step_{STEPS:08d}.safetensors"
    (a, meta_a), (b, meta_b) = load_checkpoint(tmp_path / "whole" / final), load_checkpoint(tmp_path / "killed" / final)
    assert set(a) == set(b) and any(k.startswith("optimizer.mu.") for k in a) and any(k.startswith("ema_0.99.") for k in a)
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    assert worst == 0.0, f"resumed weights differ from the uninterrupted run by {worst}"
    losses_whole, losses_resumed = scalars(tmp_path / "whole", "train/loss"), scalars(tmp_path / "killed", "train/loss")
    assert losses_whole == losses_resumed  # the killed run's steps 81..99 are purged from the view
    whole, resumed = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("whole", "killed"))
    for timing in ("seconds_per_step", "wall_seconds"):  # wall times: the one difference
        assert whole.pop(timing) > 0 and resumed.pop(timing) > 0
    assert whole.pop("compile_seconds") >= 0 and resumed.pop("compile_seconds") >= 0
    assert whole == resumed


def test_resume_errors(tmp_path, capsys):
    config = str(CONFIGS / "fm_toy2d.yaml")
    assert main(["run", config, "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err
    assert main(["run", config, "--out", str(tmp_path), "--resume", "--overwrite"]) == 2
    capsys.readouterr()
    common = ["--out", str(tmp_path / "r"), "--no-progress", "--set", "run.steps=20", "--set", "checkpoint.every=10",
              "--set", "eval.num_samples=100"]
    assert main(["run", config, *common]) == 0
    capsys.readouterr()
    assert main(["run", config, *common, "--resume"]) == 2
    assert "already reached step 20 of run.steps=20" in capsys.readouterr().err
    # stopped after its last checkpoint but before its results: resuming only evaluates, to the same numbers
    finished = json.loads((tmp_path / "r" / "metrics.json").read_text())
    (tmp_path / "r" / "metrics.json").unlink()
    assert main(["run", config, *common, "--resume"]) == 0
    again = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert again["sliced_wasserstein"] == finished["sliced_wasserstein"] and again["seconds_per_step"] is None
    assert again["compile_seconds"] is None
    assert main(["run", config, *common, "--resume", "--set", "run.steps=30", "--set", "optimizer.lr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume with a different config (optimizer.lr: 0.002 in the checkpoint, 0.1 now)" in err
    assert main(["run", config, *common, "--resume", "--set", "run.steps=30"]) == 0  # a longer run is fine
