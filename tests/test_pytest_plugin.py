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
        def __init__(self, options, spec, ops):
            from toolkit.plugins.flow_matching.objective import FlowMatching

            self.inner = FlowMatching(options, spec, ops)

        def regression(self, *args):
            return self.inner.regression(*args)

        def loss(self, *args):
            loss, parts = self.inner.loss(*args)
            return loss * 1.0001, parts


    @hookimpl
    def register_objectives(register):
        register("my_fm", {"torch": "toolkit.plugins.flow_matching.objective:FlowMatching",
                           "jax": JAX_IMPLEMENTATION}, options=FlowMatchingOptions,
                 examples=[{"objective": {"label_dropout": 0.5}}])
"""
OPT_IN = 'pytest_plugins = ["toolkit.testing"]\n'
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
    (tests / "conftest.py").write_text(OPT_IN)
    return pytest_in(tmp_path, {"PYTHONPATH": str(site)}, tests)


def run_checks_of(install_plugin, tmp_path, distribution: str, source: str, selection: str):
    """Install ``source`` as the plugin ``distribution`` and run ``ComponentChecks`` with
    ``components = [selection]`` on it in a subprocess: ``(result, sorted names of the failed
    tests)``."""
    site = install_plugin(distribution, distribution.removeprefix("toolkit-").replace("-", "_"), source)
    tests = tmp_path / "plugin_tests"
    tests.mkdir()
    (tests / "test_checks.py").write_text("from toolkit.testing import ComponentChecks\n\n\n"
                                          f"class TestChecks(ComponentChecks):\n    components = {selection!r}\n")
    (tests / "conftest.py").write_text(OPT_IN)
    result = pytest_in(tmp_path, {"PYTHONPATH": str(site)}, tests)
    failed = sorted(line.split("::")[-1].split(" ")[0] for line in result.stdout.splitlines()
                    if line.startswith("FAILED"))
    return result, failed


def pytest_in(folder, env=None, *args) -> subprocess.CompletedProcess:
    """pytest in a subprocess from ``folder``, its own temporary folders inside ``folder``."""
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"--basetemp={folder / 'basetemp'}", *map(str, args)],
                          cwd=folder, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=600)


def test_a_plugin_package_gets_the_shared_checks_with_one_line(install_plugin, tmp_path):
    result = run_plugin_tests(install_plugin, tmp_path, '"toolkit.plugins.flow_matching.objective:FlowMatching"')
    assert result.returncode == 0, result.stdout + result.stderr
    # parity (1) + loss/gradients, train_step and the exact field (2 backends each) + the
    # fixture test (2);
    # the checks of other kinds (backbones, samplers, schedules) are deselected, not skipped
    assert "9 passed" in result.stdout and "deselected" in result.stdout and "skipped" not in result.stdout


def test_the_shared_checks_catch_a_wrong_jax_implementation(install_plugin, tmp_path):
    result = run_plugin_tests(install_plugin, tmp_path, "WrongJaxFlowMatching")
    assert result.returncode == 1
    assert "FAILED plugin_tests/test_my_fm.py::TestMyPlugin::test_parity_float64[objective-my_fm-1]" in result.stdout
    assert "objective my_fm: loss (differs by 1.00e-04 relative; tolerance 1.0e-10)" in result.stdout
    assert "8 passed" in result.stdout  # the backend's own behaviour is fine; only the comparison fails


def test_selecting_nothing_is_an_error_not_an_empty_pass(tmp_path):
    (tmp_path / "conftest.py").write_text(OPT_IN)
    (tmp_path / "test_empty.py").write_text("from toolkit.testing import ComponentChecks\n\n\n"
                                            "class TestNothing(ComponentChecks):\n    distribution = 'not-installed'\n")
    result = pytest_in(tmp_path, None, tmp_path / "test_empty.py")
    assert result.returncode != 0
    assert "TestNothing selects no components" in result.stdout + result.stderr


def test_a_project_that_did_not_ask_for_the_plugin_is_left_alone(tmp_path):
    """Another project installed beside the toolkit, with a ``backend`` fixture of its own: its
    test runs once, with its own fixture; nothing of the toolkit's is loaded."""
    (tmp_path / "conftest.py").write_text("import pytest\n\n\n@pytest.fixture\ndef backend():\n    return 'mine'\n")
    (tmp_path / "test_other.py").write_text("import sys\n\n\ndef test_own_fixture(backend):\n"
                                            "    assert backend == 'mine'\n"
                                            "    assert 'toolkit.testing' not in sys.modules\n")
    result = pytest_in(tmp_path, None, tmp_path / "test_other.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout  # once, not once per backend


def test_the_shared_checks_without_the_plugin_say_how_to_turn_it_on(tmp_path):
    (tmp_path / "test_checks.py").write_text("from toolkit.testing import ComponentChecks\n\n\n"
                                             "class TestMine(ComponentChecks):\n    components = ['sampler euler']\n")
    result = pytest_in(tmp_path, None, tmp_path / "test_checks.py")
    assert result.returncode != 0
    assert ('TestMine needs the toolkit\'s pytest plugin: add pytest_plugins = ["toolkit.testing"] to the '
            'conftest.py at the top of your tests') in result.stdout + result.stderr
