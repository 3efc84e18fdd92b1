"""`toolkit plugin new`: the rendered package installs with pip, is found through its entry
point, passes its own tests (the toolkit's shared checks and parity), and those tests catch a
loss deliberately wrong in JAX alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from toolkit.cli import main

#: pytest in a subprocess, its temporary folders inside this test's own (removed when it passes)
PYTEST = ("-q", "-p", "no:cacheprovider")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("template")
    assert main(["plugin", "new", "scaled_fm", "--out", str(root / "pkg")]) == 0
    return root


def install(package, target):
    """pip install into a folder of its own, not the test environment: the entry point would
    otherwise stay visible to every later test."""
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(package)], check=True, capture_output=True, text=True, timeout=300)


def run(args, site, cwd):
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_rendered_package_installs_registers_and_passes_its_tests(rendered):
    files = sorted(p.relative_to(rendered / "pkg").as_posix() for p in (rendered / "pkg").rglob("*") if p.is_file())
    assert files == ["pyproject.toml", "scaled_fm/__init__.py", "scaled_fm/objective.py", "scaled_fm/plugin.py",
                     "tests/conftest.py", "tests/test_scaled_fm.py"]
    install(rendered / "pkg", rendered / "site")
    listed = run(["-m", "toolkit.cli", "plugins"], rendered / "site", rendered)
    assert listed.returncode == 0 and "scaled_fm" in listed.stdout and "toolkit-scaled-fm" in listed.stdout
    tests = run(["-m", "pytest", *PYTEST, f"--basetemp={rendered / 'basetemp'}", "pkg/tests"], rendered / "site",
                rendered)
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert "failed" not in tests.stdout and " passed" in tests.stdout


def test_its_tests_catch_a_loss_that_differs_in_jax(rendered, tmp_path):
    import shutil

    package = tmp_path / "pkg"
    shutil.copytree(rendered / "pkg", package)
    objective = package / "scaled_fm" / "objective.py"
    source = objective.read_text()
    assert "return self.options.scale * mse" in source
    objective.write_text(source.replace("return self.options.scale * mse",
                                        "return (1.0001 if ops.name == 'jax' else 1) * self.options.scale * mse"))
    install(package, tmp_path / "site")
    tests = run(["-m", "pytest", *PYTEST, f"--basetemp={tmp_path / 'basetemp'}", "pkg/tests"], tmp_path / "site",
                tmp_path)
    assert tests.returncode == 1
    assert "test_parity_float64" in tests.stdout and "objective scaled_fm" in tests.stdout


def test_bad_names_and_occupied_folders_are_refused(tmp_path, capsys):
    assert main(["plugin", "new", "My-Objective", "--out", str(tmp_path / "a")]) == 2
    assert "expected a lowercase Python identifier" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("")
    assert main(["plugin", "new", "fine", "--out", str(tmp_path / "b")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_a_name_whose_distribution_is_installed_is_refused(tmp_path, capsys, install_plugin):
    """pip would replace the installed toolkit-ghost with the new package without a word."""
    install_plugin("toolkit-ghost", "someone_else", "")
    assert main(["plugin", "new", "ghost", "--out", str(tmp_path / "pkg")]) == 2
    err = capsys.readouterr().err
    assert "distribution toolkit-ghost is installed already (version 0.1)" in err and not (tmp_path / "pkg").exists()


def test_the_template_objective_logs_parts_without_a_graph(rendered):
    """Loss parts are logged, not trained: one that carries a graph makes torch warn at every
    logged step (converting a tensor that requires grad to a number)."""
    import importlib.util

    import torch

    from toolkit.backends.torch.ops import OPS

    spec = importlib.util.spec_from_file_location("template_objective", rendered / "pkg" / "scaled_fm" / "objective.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    options = type("Options", (), {"scale": 2.0})()
    objective = module.Objective(options, None, OPS)
    model = torch.nn.Linear(2, 2).double()
    network = lambda z, t, r, y: model(z) * t[:, None]  # noqa: E731
    x, noise, t = torch.randn(8, 2, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64), torch.rand(8).double()
    loss, parts = objective.loss(network, x, None, {"t": t, "r": t}, noise)
    assert loss.requires_grad and not any(part.requires_grad for part in parts.values())
