"""The plugin contract is documented and tested hook by hook: a meta-test over
toolkit/hookspecs.py, and third-party tests of the hooks no other test implements."""

from __future__ import annotations

import inspect
import json
import re

import numpy as np

from tests.test_training import read_events
from tests_paths import CONFIGS
from toolkit import hookspecs
from toolkit.cli import main
from toolkit.config import load_config
from toolkit.registry import Registry, get_registry, reset_registry
from toolkit.train import train

DOCS = CONFIGS.parent / "docs" / "plugins.md"
TESTS = CONFIGS.parent / "tests"


def hooks() -> dict[str, str]:
    """Hook name -> its signature as the docs write it, e.g. ``register_objectives(register)``."""
    found = {}
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction):
        if hasattr(function, f"{hookspecs.PROJECT}_spec"):
            found[name] = f"{name}({', '.join(inspect.signature(function).parameters)})"
    return found


def test_every_hook_has_a_documentation_entry_and_a_test():
    assert len(hooks()) == len(hookspecs.KIND_HOOKS) + 1  # the kinds and register_commands
    docs = DOCS.read_text()
    undocumented = [signature for signature in hooks().values() if f"### `{signature}`" not in docs]
    assert not undocumented, f"{DOCS} has no '### `signature`' entry for: {undocumented}"
    sources = [p.read_text() for p in TESTS.glob("test_*.py") if p.name != "test_plugin_docs.py"]
    sources.append((TESTS / "test_plugin_docs.py").read_text().rsplit("# -- the third-party tests", 1)[-1])
    untested = [name for name in hooks() if not any(re.search(rf"def {name}\(", s) for s in sources)]
    assert not untested, f"no test implements these hooks as a plugin would: {untested}"


# -- the third-party tests of hooks no other test file implements ------------------------------------

BACKEND_PLUGIN = """
    from toolkit.hookspecs import hookimpl
    from toolkit.backends.torch.engine import TorchEngine

    class TwinEngine(TorchEngine):
        '''The torch engine under another name: its components are torch's.'''

    @hookimpl
    def register_backends(register):
        register("torch_twin", {"torch_twin": TwinEngine})
"""

SCHEDULE_PLUGIN = """
    import attrs
    from toolkit.hookspecs import hookimpl

    @attrs.frozen
    class DoubleOptions:
        '''Weights every example by 2.'''
        factor: float = 2.0

    class Double:
        def __init__(self, options):
            self.options = options

        def calibrate(self, draws):
            pass

        def apply(self, draws, step, total_steps, rng):
            return {**draws, "weight": self.options.factor + 0 * draws["t"]}

    @hookimpl
    def register_schedules(register):
        register("double", {"*": Double}, options=DoubleOptions)
"""


def test_a_third_party_backend_is_listed_and_compared_by_parity(install_plugin, capsys):
    install_plugin("toolkit-twin", "twin", BACKEND_PLUGIN)
    reset_registry()
    assert main(["plugins"]) == 0
    assert re.search(r"backend\s+torch_twin", capsys.readouterr().out)
    code = main(["parity", str(CONFIGS / "fm_toy2d.yaml"), "--backends", "torch,torch_twin", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and rows and all(row["max_abs"] == 0.0 for row in rows)  # the same engine: no difference


def test_a_third_party_schedule_weights_the_loss_in_both_backends(install_plugin, tmp_path):
    install_plugin("toolkit-double", "double", SCHEDULE_PLUGIN)
    reset_registry()
    registry = Registry.from_entry_points()
    assert "double" in registry.names("schedule")
    losses = {}
    for backend in ("torch", "jax"):
        for schedule in ("null", "{name: double, factor: 3.0}"):
            config = load_config(CONFIGS / "fm_toy2d.yaml", ["run.steps=1", "logging.progress=false",
                                                             "eval.metric=null", f"schedule={schedule}"],
                                 get_registry(), backend=backend)
            out = tmp_path / f"{backend}-{schedule[:5]}"
            train(config, backend, get_registry(), out_dir=out)
            losses[backend, schedule[:5]] = read_events(out).Scalars("train/loss")[0].value
    for backend in ("torch", "jax"):
        np.testing.assert_allclose(losses[backend, "{name"], 3.0 * losses[backend, "null"], rtol=1e-5)
