"""The pytest plugin as a third party uses it: a pip-installed plugin package whose test module
is one line gets the shared checks and the parity harness, which catch a wrong JAX half."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

PLUGIN = """
    from toolkit import hookimpl
    from toolkit.plugins.flow_matching import FlowMatchingOptions


    class WrongJaxFlowMatching:
        # the JAX half of a port with a subtle bug: the loss is 1e-4 too large
        def __init__(self, options, spec):
            from toolkit.plugins.flow_matching.jax import FlowMatching

            self.inner = FlowMatching(options, spec)

        def regression(self, *args):
            return self.inner.regression(*args)

        def loss(self, *args):
            loss, parts = self.inner.loss(*args)
            return loss * 1.0001, parts


    @hookimpl
    def register_objectives(register):
        register("my_fm", {"torch": "toolkit.plugins.flow_matching.torch:FlowMatching",
                           "jax": JAX_IMPLEMENTATION}, options=FlowMatchingOptions,
                 examples=[{"objective": {"label_dropout": 0.5}}])
"""
TEST_MODULE = """
from toolkit.testing import ComponentChecks


class TestMyPlugin(ComponentChecks): components = ["objective my_fm"]


def test_the_backend_fixture_runs_per_backend(backend):
    assert backend in ("torch", "jax")
"""


def run_plugin_tests(install_plugin, tmp_path, jax_implementation: str) -> subprocess.CompletedProcess:
    source = PLUGIN.replace("JAX_IMPLEMENTATION", jax_implementation)
    site = install_plugin("toolkit-my-fm", "my_fm", source)
    tests = tmp_path / "plugin_tests"
    tests.mkdir(exist_ok=True)
    (tests / "test_my_fm.py").write_text(textwrap.dedent(TEST_MODULE))
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_a_plugin_package_gets_the_shared_checks_with_one_line(install_plugin, tmp_path):
    result = run_plugin_tests(install_plugin, tmp_path, '"toolkit.plugins.flow_matching.jax:FlowMatching"')
    assert result.returncode == 0, result.stdout + result.stderr
    # parity (1) + loss/gradients (2 backends) + train_step (2 backends) + the fixture test (2);
    # the checks of other kinds (backbones, samplers, schedules) are deselected, not skipped
    assert "7 passed" in result.stdout and "deselected" in result.stdout and "skipped" not in result.stdout


def test_the_shared_checks_catch_a_wrong_jax_implementation(install_plugin, tmp_path):
    result = run_plugin_tests(install_plugin, tmp_path, "WrongJaxFlowMatching")
    assert result.returncode == 1
    assert "FAILED plugin_tests/test_my_fm.py::TestMyPlugin::test_parity_float64[objective-my_fm-1]" in result.stdout
    assert "objective my_fm: loss (max rel 1.00e-04 > 1e-10)" in result.stdout
    assert "6 passed" in result.stdout  # the backend's own behaviour is fine; only the comparison fails


def test_selecting_nothing_is_an_error_not_an_empty_pass(tmp_path):
    (tmp_path / "test_empty.py").write_text("from toolkit.testing import ComponentChecks\n\n\n"
                                            "class TestNothing(ComponentChecks):\n    distribution = 'not-installed'\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "TestNothing selects no components" in result.stdout + result.stderr
