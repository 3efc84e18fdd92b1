"""The example plugin package, examples/imf (iMF, arXiv 2512.02012), as a user meets it: installed
with pip (by `make test`), listed by `toolkit plugins`, trained from its config by name in both
backends, covered by `toolkit parity`, and sampled at a guidance scale chosen after training."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from tests_paths import REPO
from toolkit.cli import main

EXAMPLE = REPO / "examples" / "imf"
CONFIG = EXAMPLE / "configs" / "imf_digits.yaml"
SHORT = ["run.steps=300", "checkpoint.every=300", "logging.every=50", "logging.samples_every=300",
         "eval.num_samples=500", "ema.decays=[0.99]"]


def toolkit(*args: str) -> str:
    """The installed `toolkit` command, in a fresh process (entry points read from scratch)."""
    command = Path(sys.executable).with_name("toolkit")
    done = subprocess.run([str(command), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_package_is_installed_not_imported_from_the_repository():
    import toolkit_imf

    assert metadata.distribution("toolkit-imf").entry_points.select(group="toolkit")
    assert EXAMPLE not in Path(toolkit_imf.__file__).resolve().parents, (
        f"toolkit_imf comes from {toolkit_imf.__file__}: install it with pip (make test does)")


def test_toolkit_plugins_lists_its_objective_and_sampler():
    rows = [line.split() for line in toolkit("plugins").splitlines()]
    assert ["objective", "imf", "toolkit-imf"] in [row[:3] for row in rows]
    assert ["sampler", "imf", "toolkit-imf"] in [row[:3] for row in rows]


def test_toolkit_parity_covers_it():
    out = toolkit("parity", str(CONFIG), "--dtype", "float64")
    assert "objective imf" in out and "sampler imf" in out and "FAIL" not in out, out


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory):
    runs = {}
    data = tmp_path_factory.mktemp("data") / "digits.h5"

    def run(backend):
        if backend not in runs:
            out = tmp_path_factory.mktemp(f"imf-{backend}")
            argv = ["run", str(CONFIG), "--backend", backend, "--out", str(out), "--no-progress",
                    *[f"--set={s}" for s in [*SHORT, f"data.path={data}"]]]
            assert main(argv) == 0
            runs[backend] = out
        return runs[backend]

    return run


def test_toolkit_run_trains_it_from_its_config(backend, short_runs):
    out = short_runs(backend)
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["objective"]["name"] == "imf" and run["config"]["sampler"]["name"] == "imf"
    results = json.loads((out / "metrics.json").read_text())
    fd, noise, floor = (results[k] for k in ("classifier_fd", "classifier_fd_of_noise",
                                             "classifier_fd_of_training_data"))
    assert results["nfe"] == 1 and np.isfinite(fd) and floor < fd < 0.5 * noise, results


def test_the_guidance_scale_is_a_sampling_option(backend, short_runs, tmp_path, capsys):
    out = short_runs(backend)
    pictures = {}
    for scale in (1.0, 4.0):
        path = tmp_path / f"omega{scale}.png"
        assert main(["sample", str(out), "--backend", backend, "--n", "20", "--guidance", str(scale),
                     "--out", str(path)]) == 0
        pictures[scale] = np.load(path.with_suffix(".npy"))
    assert np.abs(pictures[1.0] - pictures[4.0]).mean() > 1e-3
    assert main(["eval", str(out), "--backend", backend, "--n", "200", "--set", "sampler.guidance=2.5",
                 "--json"]) == 0
    assert np.isfinite(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["classifier_fd"])
