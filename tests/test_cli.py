"""The `toolkit` command line: exit codes, one-line errors, the plugin listing, config show,
and each backend working with the other framework absent."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests_paths import CONFIGS, REPO
from toolkit.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_and_version(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "run" in out and "plugins" in out and "config" in out
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and "0.1.0" in out


def test_plugins_json_shape(capsys):
    code, out, err = run_cli(capsys, "plugins", "--json")
    assert code == 0 and err == ""
    rows = json.loads(out)
    assert all(set(row) == {"kind", "name", "plugin", "version", "backends", "summary"} for row in rows)
    assert {"kind": "objective", "name": "flow_matching", "plugin": "meanflow-toolkit", "version": "0.1.0",
            "backends": ["jax", "torch"],
            "summary": "Flow matching: velocity regression on the linear path (baseline)."} in rows
    assert {"kind": "backend", "name": "jax", "plugin": "meanflow-toolkit", "version": "0.1.0",
            "backends": ["jax"], "summary": "JAX/Equinox engine (jit-compiled step, optax)"} in rows


def test_plugins_table(capsys):
    code, out, _ = run_cli(capsys, "plugins")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["KIND", "NAME", "PLUGIN", "VERSION", "BACKENDS", "SUMMARY"]
    assert any(line.split()[:2] == ["dataset", "checkerboard"] and "jax, torch" in line for line in lines)
    # the summary a component registers (or its options' first docstring line) is shown
    assert any(line.split()[:2] == ["objective", "meanflow"]
               and line.endswith("MeanFlow: average velocity from the MeanFlow identity (one JVP per step).")
               for line in lines)


def test_plugins_reports_a_broken_plugin_and_lists_the_rest(capsys, install_plugin):
    install_plugin("toolkit-broken", "broken", "import not_a_module_anywhere\n")
    code, out, err = run_cli(capsys, "plugins", "--json")
    assert code == 0
    assert err == ("toolkit: warning: plugin 'broken' (toolkit-broken 0.1) failed to load: "
                   "ModuleNotFoundError: No module named 'not_a_module_anywhere'\n")
    assert any(row["name"] == "flow_matching" for row in json.loads(out))


def test_config_show_resolves_defaults_and_overrides(capsys):
    code, out, _ = run_cli(capsys, "config", "show", str(CONFIGS / "fm_toy2d.yaml"), "--set", "run.steps=7")
    assert code == 0
    assert "  steps: 7\n" in out and "  time_inputs: t_and_gap\n" in out and "schedule: null\n" in out


def test_bad_config_exits_2_with_one_line(capsys, tmp_path):
    code, out, err = run_cli(capsys, "run", str(CONFIGS / "fm_toy2d.yaml"), "--set", "optimizer.lr=0")
    assert code == 2 and out == ""
    assert err == "toolkit: error: --set optimizer.lr=0: optimizer.lr: got 0.0, expected a value > 0\n"


def test_unknown_backend_exits_2(capsys):
    code, _, err = run_cli(capsys, "run", str(CONFIGS / "fm_toy2d.yaml"), "--backend", "jaxx")
    assert code == 2
    assert err == "toolkit: error: unknown backend 'jaxx' (did you mean 'jax'?); available: jax, torch\n"


def test_bad_usage_exits_2(capsys):
    code, _, err = run_cli(capsys, "run")
    assert code == 2 and "Missing argument 'CONFIG'" in err


def test_runtime_failure_exits_1_without_traceback_unless_debug(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    argv = ["run", str(CONFIGS / "fm_toy2d.yaml"), "--set", "run.steps=1", "--out", str(blocker / "run")]
    code, _, err = run_cli(capsys, *argv)
    assert code == 1
    assert err.splitlines()[-1] == f"toolkit: error: {blocker / 'run'}: Not a directory"  # an OSError names its file
    assert "Traceback" not in err
    with pytest.raises(NotADirectoryError):
        main(["--debug", *argv])


def _without(framework: str, *argv: str, cwd) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter where importing ``framework`` fails, as if absent."""
    code = (f"import sys; sys.modules[{framework!r}] = None\n"
            "from toolkit.cli import main\n"
            f"sys.exit(main({list(argv)!r}))")
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


@pytest.mark.parametrize("absent, present", [("torch", "jax"), ("jax", "torch")])
def test_each_backend_runs_with_the_other_framework_absent(tmp_path, absent, present):
    listing = _without(absent, "plugins", "--json", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert {"torch", "jax"} <= {row["name"] for row in json.loads(listing.stdout) if row["kind"] == "backend"}
    assert _without(absent, "--help", cwd=tmp_path).returncode == 0
    run = _without(absent, "run", str(CONFIGS / "fm_toy2d.yaml"), "--backend", present, "--set", "run.steps=20",
                   "--set", "eval.num_samples=100", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["step"] == 20
    missing = _without(absent, "run", str(CONFIGS / "fm_toy2d.yaml"), "--backend", absent,
                       "--set", "run.steps=1", "--out", str(tmp_path / "run2"), cwd=tmp_path)
    assert missing.returncode == 2
    hint = {"torch": "PyTorch", "jax": "JAX"}[absent]
    assert missing.stderr.splitlines()[-1] == (
        f"toolkit: error: backend {absent!r} needs {hint} for the {absent} backend, and it is not installed: "
        f"pip install 'meanflow-toolkit[{absent}]'")


def test_a_previous_run_is_kept_unless_overwrite(capsys, tmp_path):
    argv = ["run", str(CONFIGS / "fm_toy2d.yaml"), "--set", "run.steps=2", "--set", "eval.num_samples=10",
            "--out", str(tmp_path), "--no-progress"]
    assert run_cli(capsys, *argv)[0] == 0
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith(f"toolkit: error: {tmp_path} already holds a run (checkpoints, events.out.tfevents.")
    assert err.endswith("metrics.json, run.json, samples.png); choose another --out, or pass --overwrite to replace it\n")
    assert run_cli(capsys, *argv, "--overwrite")[0] == 0
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only the run's own files are replaced


def test_broken_plugins_never_break_the_cli_for_the_rest(capsys, install_plugin, tmp_path):
    """The three ways a plugin goes wrong, installed at once: one raises on import, one registers a
    malformed component, one implements a single backend. Each is named with its reason; every
    other component keeps working, in both backends."""
    install_plugin("toolkit-raises", "raises", "raise RuntimeError('boom at import')\n")
    install_plugin("toolkit-malformed", "malformed", """
        from toolkit.hookspecs import hookimpl

        @hookimpl
        def register_samplers(register):
            register("half_registered", {"*": "no_colon_here"})
    """)
    install_plugin("toolkit-torch-only", "torch_only", """
        from toolkit.hookspecs import hookimpl
        from toolkit.plugins.flow_matching import FlowMatchingOptions

        @hookimpl
        def register_objectives(register):
            register("torch_only_fm", {"torch": "toolkit.plugins.flow_matching.objective:FlowMatching"},
                     options=FlowMatchingOptions)
    """)
    code, out, err = run_cli(capsys, "plugins")
    assert code == 0
    assert "toolkit: warning: plugin 'raises' (toolkit-raises 0.1) failed to load: RuntimeError: boom at import" in err
    assert "plugin 'malformed' (toolkit-malformed 0.1) failed while registering" in err
    assert "sampler 'half_registered': implementation 'no_colon_here' for '*' is not 'module:attribute'" in err
    rows = [line.split() for line in out.splitlines()]
    assert ["objective", "torch_only_fm", "toolkit-torch-only", "0.1", "torch"] in [row[:5] for row in rows]
    assert "half_registered" not in out

    short = ["--no-progress", "--set", "run.steps=2", "--set", "logging.every=1", "--set", "eval.num_samples=64"]
    config = str(CONFIGS / "fm_toy2d.yaml")
    for backend in ("torch", "jax"):  # the rest trains, in the backend the one-backend plugin lacks too
        assert main(["run", config, "--backend", backend, "--out", str(tmp_path / backend), *short]) == 0
    torch_only = ["--set", "objective={name: torch_only_fm}"]
    assert main(["run", config, "--backend", "torch", "--out", str(tmp_path / "only"), *short, *torch_only]) == 0
    capsys.readouterr()
    code = main(["run", config, "--backend", "jax", "--out", str(tmp_path / "no"), *short, *torch_only])
    err = capsys.readouterr().err
    assert code == 2 and "torch_only_fm" in err and "no jax implementation; it implements: torch" in err, err
