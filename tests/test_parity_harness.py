"""`toolkit parity`: every shipped config passes, and a wrong implementation is caught by name."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests_paths import CONFIGS
from toolkit.cli import main
from toolkit.config import load_config
from toolkit.hookspecs import hookimpl
from toolkit.parity import run_parity
from toolkit.registry import get_registry

KEYS = {"component", "quantity", "max_abs", "max_rel", "tol", "ok"}


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_config_passes_in_float64(capsys, config):
    code = main(["parity", str(CONFIGS / config), "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and all(set(row) == KEYS and row["ok"] for row in rows)
    quantities = {row["quantity"] for row in rows}
    assert {"output", "jvp tangent", "loss", "samples (1 NFE)" if "meanflow" in config else "samples (32 NFE)"} \
        <= quantities
    assert any(q.startswith("grad ") for q in quantities) and any(q.startswith("weight after one step") for q in quantities)


def test_float32_table(capsys):
    code = main(["parity", str(CONFIGS / "meanflow_toy2d.yaml"), "--dtype", "float32"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and out[0].split() == ["component", "quantity", "max", "abs", "max", "rel", "tol", "pass"]
    assert any(line.startswith("optimizer adamw") and "1e-03" in line for line in out)  # the documented override
    assert any(line.startswith("objective meanflow") and "1e-05" in line for line in out)


class _WrongJaxFlowMatching:
    """Flow matching whose JAX loss is off by 1e-4 relative: what a subtle port bug looks like."""

    def __init__(self, options, spec):
        from toolkit.plugins.flow_matching.jax import FlowMatching

        self.inner = FlowMatching(options, spec)

    def regression(self, *args):
        return self.inner.regression(*args)

    def loss(self, model, x, y, draws, noise):
        loss, parts = self.inner.loss(model, x, y, draws, noise)
        return loss * 1.0001, parts


class _WrongPlugin:
    @hookimpl
    def register_objectives(self, register):
        from toolkit.plugins.flow_matching import FlowMatchingOptions

        register("wrong_fm", {"torch": "toolkit.plugins.flow_matching.torch:FlowMatching",
                              "jax": _WrongJaxFlowMatching}, options=FlowMatchingOptions)


def test_a_wrong_jax_implementation_is_caught_and_named(capsys):
    get_registry().add_plugin(_WrongPlugin(), "wrong_plugin")
    code = main(["parity", str(CONFIGS / "fm_toy2d.yaml"), "--set", "objective.name=wrong_fm"])
    out, err = capsys.readouterr()
    assert code == 1
    assert err.startswith("toolkit: parity failed for ") and err.endswith("first: objective wrong_fm: loss\n")
    failed = [line for line in out.splitlines() if line.endswith("FAIL")]
    assert any(line.startswith("objective wrong_fm") and " loss " in line for line in failed)
    assert any("grad layers.0.weight" in line for line in failed)
    assert not any(line.startswith("backbone") for line in failed)  # the backbone itself agrees


def test_weights_copied_between_backends_do_not_alias():
    """A torch optimiser step must not move weights that were copied into the JAX engine."""
    registry = get_registry()
    config = load_config(CONFIGS / "fm_toy2d.yaml", [], registry)
    spec = registry.load("dataset", config.data.name, "torch")(config.data.options).spec
    torch_engine, jax_engine = (registry.load("backend", b, b)(config, registry, spec) for b in ("torch", "jax"))
    jax_engine.load_state_arrays(torch_engine.state_arrays())
    before = {k: v.copy() for k, v in jax_engine.state_arrays().items()}
    rng = np.random.default_rng(0)
    from toolkit.interfaces import Batch

    torch_engine.train_step(Batch(rng.standard_normal((8, 2))), config.objective.options.draw(rng, 8, 0, spec), 1e-2)
    after = jax_engine.state_arrays()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_run_parity_compares_any_two_backends_it_is_given():
    registry = get_registry()
    config = load_config(CONFIGS / "fm_toy2d.yaml", [], registry)
    rows = run_parity(config, registry, ("jax", "torch"))
    assert rows and all(row.ok for row in rows)
