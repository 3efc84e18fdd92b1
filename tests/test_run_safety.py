"""No way to lose a run (issue 19): a run directory is one run's at a time, files are never left
half-written (a full disk, a signal, a second writer), a diverged model never replaces a good
checkpoint, and damaged or foreign files are errors naming them."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from tests_paths import CONFIGS
from toolkit.checkpoint import (checkpoint_metadata, list_checkpoints, load_checkpoint, save_checkpoint,
                                write_safetensors)
from toolkit.cli import main

FM_TOY = str(CONFIGS / "fm_toy2d.yaml")
#: a run of a few steps: the code paths of a whole run in well under a second of training
TINY = ["--set", "run.steps=4", "--set", "checkpoint.every=2", "--set", "checkpoint.keep=5", "--set",
        "eval.num_samples=50", "--set", "model.hidden=32", "--set", "logging.every=1", "--no-progress"]

# Data sets for runs that must be caught in the middle: "waiting" stops the training stream of a
# run from scratch at batch ``wait_at`` until a signal arrives (signal.pause: no timing involved);
# "unreadable" fails when it is opened, as a missing data file would.
DATASETS = """
    import signal
    import attrs
    from toolkit import hookimpl
    from toolkit.errors import UsageError
    from toolkit.plugins.toy2d import Checkerboard, Toy2DOptions

    @attrs.frozen
    class WaitingOptions:
        wait_at: int = 0

    class Waiting(Checkerboard):
        def __init__(self, options):
            super().__init__(Toy2DOptions())
            self.wait_at = options.wait_at

        def batches(self, batch_size, seed, start=0):
            for index, batch in enumerate(super().batches(batch_size, seed, start), start):
                if index == self.wait_at and self.wait_at and start == 0:
                    signal.pause()
                yield batch

    @attrs.frozen
    class UnreadableOptions:
        pass

    class Unreadable:
        def __init__(self, options):
            raise UsageError("data: the data file cannot be opened")

    @hookimpl
    def register_datasets(register):
        register("waiting", {"*": Waiting}, options=WaitingOptions)
        register("unreadable", {"*": Unreadable}, options=UnreadableOptions)
"""
#: the caught runs: a checkpoint at step 20, then the stream waits at batch 25 (step 26)
CAUGHT = ["--set=run.steps=40", "--set=checkpoint.every=20", "--set=eval.num_samples=50", "--set=model.hidden=32",
          "--set=data.name=waiting", "--set=data.wait_at=25", "--no-progress"]
FIRST_CHECKPOINT = "step_00000020.safetensors"
#: the first layer of the MLP (``model.``, ``optimizer.mu.`` and ``.nu.`` of it), (32, 130) in TINY
WIDENED = "layers.0.weight"


def _start_caught_run(site, out) -> subprocess.Popen:
    command = [sys.executable, "-m", "toolkit.cli", "run", FM_TOY, "--out", str(out), *CAUGHT]
    # Ctrl-C as at a terminal, even where this process was started with SIGINT ignored (a background job)
    return subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(site)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(path, process: subprocess.Popen, limit: float = 300.0) -> None:
    """Poll until ``path`` exists (the process is then waiting in its data stream)."""
    deadline = time.monotonic() + limit
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before {path} existed: {process.communicate()[1]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {path} after {limit} s")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished run of :data:`TINY`, trained once; tests change copies of it (:func:`finished_run`)."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    assert main(["run", FM_TOY, "--out", str(out), *TINY]) == 0
    return out


@pytest.fixture
def finished_run(tiny_run, tmp_path):
    return shutil.copytree(tiny_run, tmp_path / "run")


def _leftovers(directory) -> list[str]:
    """Temporary files under ``directory`` (every atomic write's temporary starts with a dot, ends in .tmp)."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob(".*tmp"))


# 1. A run directory is one run's at a time.

def test_a_second_run_into_a_busy_directory_fails_at_once_and_the_lock_dies_with_its_process(
        install_plugin, tmp_path, capsys):
    site = install_plugin("toolkit-test-datasets", "testdata", DATASETS)
    out = tmp_path / "run"
    first = _start_caught_run(site, out)
    try:
        _wait_for(out / "checkpoints" / FIRST_CHECKPOINT, first)
        again = ["run", FM_TOY, "--out", str(out), *[c for c in CAUGHT if "wait_at" not in c]]
        assert main([*again, "--overwrite"]) == 1
        err = capsys.readouterr().err
        assert err.splitlines()[-1] == (f"toolkit: error: {out}: in use by another run (pid {first.pid}); wait for "
                                        f"it to end, or choose another --out")
        assert (out / "run.json").is_file() and [p.name for p in list_checkpoints(out / "checkpoints")] == [
            FIRST_CHECKPOINT]  # nothing of the running run was touched
        assert main(["run", FM_TOY, "--out", str(out), *CAUGHT, "--resume"]) == 1
        assert f"in use by another run (pid {first.pid})" in capsys.readouterr().err
    finally:
        first.kill()
        first.communicate()
    # killed (no clean-up at all): the lock went with the process, and the run resumes
    assert main(["run", FM_TOY, "--out", str(out), *CAUGHT, "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["step"] == 40


def test_two_writers_of_one_checkpoint_never_share_a_temporary_file(tmp_path, monkeypatch):
    """Two runs once wrote the same checkpoint through one temporary name: the file ended with the
    other run's arrays. Here a second writer replaces the file while the first is writing it."""
    import toolkit.checkpoint

    target = tmp_path / "step_00000002.safetensors"
    mine = {"model.w": np.ones(64, np.float32)}
    theirs = {"model.w": np.full(64, 2.0, np.float32), "optimizer.mu.w": np.full(64, 3.0, np.float32)}
    library = toolkit.checkpoint._save_file

    def writing(arrays, filename, metadata):  # the first writer's temporary is written, not yet renamed
        library(arrays, filename, metadata)
        monkeypatch.setattr(toolkit.checkpoint, "_save_file", library)
        save_checkpoint(target, theirs, {"step": 2})

    monkeypatch.setattr(toolkit.checkpoint, "_save_file", writing)
    write_safetensors(target, mine, {"toolkit": json.dumps({"step": 2})})
    arrays, metadata = load_checkpoint(target)
    assert sorted(arrays) == ["model.w"] and np.array_equal(arrays["model.w"], mine["model.w"])
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_full_disk_while_writing_a_checkpoint_names_it_and_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    """The safetensors library reports an I/O error as its own error type: the run names the
    checkpoint and the reason, as for any other file (the message is the library's own)."""
    import toolkit.checkpoint
    from safetensors import SafetensorError

    def filling(arrays, filename, metadata):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(toolkit.checkpoint, "_save_file", filling)
    assert main(["run", FM_TOY, "--out", str(tmp_path), *TINY]) == 1
    first = tmp_path / "checkpoints" / "step_00000002.safetensors"
    assert capsys.readouterr().err.splitlines()[-1] == f"toolkit: error: {first}: No space left on device"
    assert not list_checkpoints(tmp_path / "checkpoints") and not _leftovers(tmp_path)


# 5. --overwrite deletes only what toolkit wrote, and only once the new run starts.

def test_overwrite_keeps_a_foreign_checkpoints_folder(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "notes.txt").write_text("mine")
    (tmp_path / "run.json").write_text("{}")
    assert main(["run", FM_TOY, "--out", str(tmp_path), *TINY, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"toolkit: error: {tmp_path / 'checkpoints' / 'notes.txt'}: not a checkpoint of a run")
    assert len(err.splitlines()) == 1 and "--overwrite deletes only what toolkit wrote" in err
    assert (tmp_path / "checkpoints" / "notes.txt").read_text() == "mine" and (tmp_path / "run.json").is_file()


def test_overwrite_removes_the_old_run_only_once_the_new_one_starts(install_plugin, tmp_path, capsys):
    install_plugin("toolkit-test-datasets", "testdata", DATASETS)
    assert main(["run", FM_TOY, "--out", str(tmp_path), *TINY]) == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    stale = [tmp_path / "checkpoints" / name for name in (  # of killed runs, before and since names were unique
        ".step_00000004.safetensors.tmp", ".step_00000004.safetensors.4242.0a1b2c3d.tmp")]
    for path in stale:
        path.write_bytes(b"partial")
    capsys.readouterr()
    assert main(["run", FM_TOY, "--out", str(tmp_path), *TINY, "--set", "data.name=unreadable", "--overwrite"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == "toolkit: error: data: the data file cannot be opened"
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # the old run is all there
    assert len(list_checkpoints(tmp_path / "checkpoints")) == 2
    assert main(["run", FM_TOY, "--out", str(tmp_path), *TINY, "--overwrite"]) == 0  # checkpoints and temporaries go
    assert not any(path.exists() for path in stale) and len(list(tmp_path.glob("events.out.tfevents.*"))) == 1


# 6. A diverged model never replaces the last good checkpoint.

def test_non_finite_weights_are_never_saved(tmp_path, capsys, monkeypatch):
    """The engine's own check sees a non-finite loss or gradient; weights can still turn
    non-finite with finite ones (an update overflowing), as a JAX run showed: its "last good"
    checkpoint was all NaN. Here the weights are poisoned by step 4 (the loss of step 4 was finite)."""
    from toolkit.backends.torch.engine import TorchEngine

    train_step, steps = TorchEngine.train_step, []

    def poisoned(self, batch, draws, lr, noise):
        values = train_step(self, batch, draws, lr, noise)
        steps.append(1)
        if len(steps) == 4:
            self.load_state_arrays({k: np.full_like(v, np.nan) for k, v in self.state_arrays().items()})
        return values

    monkeypatch.setattr(TorchEngine, "train_step", poisoned)
    assert main(["run", FM_TOY, "--out", str(tmp_path), *TINY]) == 1
    err = capsys.readouterr().err
    good = tmp_path / "checkpoints" / "step_00000002.safetensors"
    assert err.splitlines()[-1].startswith("toolkit: error: training diverged at step 4: model.")
    assert err.splitlines()[-1].endswith(f"not finite (NaN or infinite values), so its checkpoint was not written; "
                                         f"the last good checkpoint is {good}")
    assert list_checkpoints(tmp_path / "checkpoints") == [good] and not _leftovers(tmp_path)
    assert all(np.isfinite(value).all() for value in load_checkpoint(good)[0].values())


# 10. metrics.json and run.json are written atomically; a damaged one is named.

@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(name)``: writing a file whose name contains ``name`` fails as on a full disk
    (ENOSPC, naming no file, as write(2) does) after half of the first write reached the disk."""
    real_open = builtins.open

    class Filling:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            self.handle.write(data[:len(data) // 2])
            self.handle.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *error):
            self.handle.close()

    def install(name: str) -> None:
        def opening(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            writing = (isinstance(file, (str, os.PathLike)) and name in os.path.basename(file)
                       and any(m in mode for m in "wax"))
            return Filling(handle) if writing else handle

        monkeypatch.setattr(builtins, "open", opening)
        monkeypatch.setattr(io, "open", opening)  # pathlib's

    return install


@pytest.mark.parametrize("name", ["run.json", "metrics.json", "samples.png"])
def test_a_full_disk_names_the_file_and_leaves_no_partial_file(tmp_path, capsys, full_disk, name):
    full_disk(name)
    assert main(["run", FM_TOY, "--out", str(tmp_path), *TINY]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == f"toolkit: error: {tmp_path / name}: No space left on device"
    assert not (tmp_path / name).exists() and not _leftovers(tmp_path)


def test_a_damaged_metrics_file_is_a_failed_cell_named_by_its_file(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "name": "tiny", "config": FM_TOY, "variants": {"small": {}}, "seeds": [0],
        "set": {"run.steps": 2, "checkpoint.every": 2, "eval.num_samples": 50, "model.hidden": 32}}))
    out = tmp_path / "out"
    assert main(["study", str(study), "--out", str(out), "--no-progress"]) == 0
    damaged = out / "small" / "seed0" / "metrics.json"
    damaged.write_text(damaged.read_text()[:40])  # as a run killed while writing it once left it
    capsys.readouterr()
    assert main(["study", str(study), "--out", str(out), "--report-only"]) == 0
    table = (out / "results.md").read_text()
    assert "Failed cells:" in table and f"- small (2 steps, seed 0): {damaged}: not valid JSON" in table
    assert main(["study", str(study), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"toolkit: 1 of 1 cells failed, first: small (2 steps, seed 0): {damaged}: "
                                           f"not valid JSON")
    assert "delete it and run the study again to evaluate the cell again" in err
    damaged.unlink()  # the way out the message gives: the cell is evaluated again from its last checkpoint
    assert main(["study", str(study), "--out", str(out), "--no-progress"]) == 0
    assert json.loads(damaged.read_text())["step"] == 2


# 12. A checkpoint of another model size names the file and the weight.

def test_resuming_from_weights_of_another_size_names_the_file_and_the_weight(finished_run, capsys):
    """The weights of a wider first layer under the run's own config (as when a data file of
    another shape replaced the run's, or a checkpoint was copied between runs)."""
    newest = list_checkpoints(finished_run / "checkpoints")[-1]
    arrays, metadata = load_checkpoint(newest)
    save_checkpoint(newest, {name: np.resize(value, (2 * value.shape[0], *value.shape[1:]))
                             if name.endswith(WIDENED) else value for name, value in arrays.items()}, metadata)
    (finished_run / "metrics.json").unlink()
    assert main(["run", FM_TOY, "--out", str(finished_run), *TINY, "--resume"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[-1] == (f"toolkit: error: {newest}: its weights do not fit a mlp of this run's "
                                         f"config in torch: {WIDENED}: got shape (64, 130), expected (32, 130)")


# 13. Ctrl-C and SIGTERM stop a run cleanly; it resumes.

@pytest.mark.parametrize("signum, code, message", [(signal.SIGTERM, 143, "toolkit: terminated (SIGTERM)"),
                                                   (signal.SIGINT, 130, "toolkit: interrupted")])
def test_a_signalled_run_stops_cleanly_and_resumes(install_plugin, tmp_path, signum, code, message):
    site = install_plugin("toolkit-test-datasets", "testdata", DATASETS)
    out = tmp_path / "run"
    process = _start_caught_run(site, out)
    try:
        _wait_for(out / "checkpoints" / FIRST_CHECKPOINT, process)
        process.send_signal(signum)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == code, err
    assert err.splitlines()[-1] == message
    assert [p.name for p in (out / "checkpoints").iterdir()] == [FIRST_CHECKPOINT] and not _leftovers(out)
    assert main(["run", FM_TOY, "--out", str(out), *CAUGHT, "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["step"] == 40


# 15. A resumed run that only evaluates keeps the run's loss.

def test_a_run_resumed_only_to_evaluate_keeps_its_loss(finished_run):
    finished = json.loads((finished_run / "metrics.json").read_text())
    (finished_run / "metrics.json").unlink()  # stopped after its last checkpoint, before its results
    assert main(["run", FM_TOY, "--out", str(finished_run), *TINY, "--resume"]) == 0
    again = json.loads((finished_run / "metrics.json").read_text())
    assert isinstance(finished["loss"], float) and again["loss"] == finished["loss"]


# 19. The smaller ones: NaN weights, tampered metadata, very long runs.

@pytest.fixture
def diverged_checkpoint(tiny_run, tmp_path):
    """A checkpoint of a run whose weights (and their averages) went NaN."""
    arrays, metadata = load_checkpoint(list_checkpoints(tiny_run / "checkpoints")[-1])
    path = tmp_path / "diverged.safetensors"
    save_checkpoint(path, {k: np.full_like(v, np.nan) if not k.startswith("optimizer.") else v
                           for k, v in arrays.items()}, metadata)
    return path


def test_eval_of_non_finite_samples_fails(diverged_checkpoint, capsys):
    capsys.readouterr()
    assert main(["eval", str(diverged_checkpoint), "--n", "50"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines()[-1].startswith(
        f"toolkit: error: {diverged_checkpoint}: sliced_wasserstein is nan: the samples are not finite")


def test_convert_names_non_finite_weights(diverged_checkpoint, capsys):
    capsys.readouterr()
    assert main(["convert", str(diverged_checkpoint), "--to", "jax"]) == 1
    err = capsys.readouterr().err
    assert re.fullmatch(rf"toolkit: error: {re.escape(str(diverged_checkpoint))}: (model|ema_[0-9.]+)\.\S+: the "
                        rf"weights are not finite \(NaN or infinite values\); .*", err.splitlines()[-1])
    assert "parity" not in err


@pytest.mark.parametrize("command, key, value, expected", [
    ("resume", "step", None, "metadata step: missing; expected a step number (an integer >= 0) (not written by "
                             "toolkit, or edited)"),
    ("eval", "step", "twenty", "metadata step: expected a step number (an integer >= 0), got 'twenty'"),
    ("sample", "spec", {"shape": [2]}, 'metadata spec: expected {"shape": [sizes], "num_classes": n}, got '
                                        "{'shape': [2]}"),
    ("resume", "config", [1, 2], "metadata config: expected the run config (a JSON object), got [1, 2]"),
])
def test_tampered_checkpoint_metadata_names_the_file_and_the_key(finished_run, capsys, command, key, value, expected):
    newest = list_checkpoints(finished_run / "checkpoints")[-1]
    arrays, metadata = load_checkpoint(newest)
    if value is None:
        del metadata[key]
    else:
        metadata[key] = value
    save_checkpoint(newest, arrays, metadata)
    (finished_run / "metrics.json").unlink()
    if command == "resume":
        code = main(["run", FM_TOY, "--out", str(finished_run), *TINY, "--resume"])
    elif command == "eval":
        code = main(["eval", str(finished_run), "--n", "20"])
    else:
        code = main(["sample", str(finished_run), "--n", "20", "--out", str(finished_run / "s.png")])
    assert code == 1 and capsys.readouterr().err.splitlines()[-1] == f"toolkit: error: {newest}: {expected}"


def test_checkpoints_past_step_99_999_999_are_listed_in_order(tmp_path):
    from toolkit.checkpoint import checkpoint_path

    steps = [99_999_999, 100_000_000, 5, 1_000_000_000]
    for step in steps:
        checkpoint_path(tmp_path, step).write_bytes(b"")
    (tmp_path / "step_00000007.jax.safetensors").write_bytes(b"")  # a `toolkit convert` output: not the run's
    assert [int(p.name[5:-12]) for p in list_checkpoints(tmp_path)] == sorted(steps)
