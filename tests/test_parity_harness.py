"""`toolkit parity`: every shipped config passes, and a wrong implementation is caught by name."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests_paths import CONFIGS, PAPER_PATHS, PAPER_SMALLER, data_missing
from toolkit.cli import main
from toolkit.config import load_config
from toolkit.hookspecs import hookimpl
from toolkit.parity import run_parity
from toolkit.registry import get_registry, reset_registry

KEYS = {"component", "quantity", "max_abs", "max_rel", "rounding", "excess", "tol", "ok"}


#: Every shipped config that runs here: the paper configs (ImageNet latents, DiT up to XL/2) at
#: one of their blocks and on 8x8 latents (below), the others as they are.
CONFIGS_HERE = sorted(p.name for p in CONFIGS.glob("*.yaml") if not data_missing(p) or p.name in PAPER_PATHS)
#: float32 (four engines each, most of their time XLA compiling): the configs here but the paper
#: configs, and for the DiT path one twin of a paper config, the one with the most parts (the
#: improved-MeanFlow schedule, guidance, the DiT options of XL/2) on a tiny DiT
TWIN = "twins/meanflow_xl_improved.yaml"
FLOAT32_CONFIGS = [name for name in CONFIGS_HERE if name not in PAPER_PATHS] + [TWIN]
#: the float32 configs run again on another instruction set: an MLP (flow matching on 2-D
#: points) and a DiT (MeanFlow with its JVP, schedule and guidance), the two kinds of kernel
#: (matrix products of a few wide rows, attention and normalisation of many); the other
#: configs repeat them (two more took the suite 60 s over its time budget)
OTHER_KERNEL_CONFIGS = ["fm_toy2d.yaml", TWIN]


def parity_command(config: str, *options: str) -> list[str]:
    # a paper config: its own objective and guidance, at the size of PAPER_SMALLER (on 8x8 data,
    # 16 tokens instead of 256, compute was 85% of the test's time); a twin at one block too
    settings = PAPER_SMALLER.get(config) or (("model.depth=1",) if config.startswith("twins/") else ())
    smaller = [part for setting in settings for part in ("--set", setting)]
    return ["parity", str(CONFIGS / config), "--json", *options, *smaller]


@pytest.mark.parametrize("config", CONFIGS_HERE)
def test_every_shipped_config_passes_in_float64(capsys, config):
    code = main(parity_command(config))
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and all(set(row) == KEYS and row["ok"] for row in rows)
    quantities = {row["quantity"] for row in rows}
    assert {"output", "jvp tangent", "loss", "samples (1 NFE)" if "meanflow" in config else "samples (32 NFE)"} \
        <= quantities
    assert any(q.startswith("grad ") for q in quantities) and any(q.startswith("weight after one step") for q in quantities)


def test_float32_table(capsys):
    code = main(["parity", str(CONFIGS / "meanflow_toy2d.yaml"), "--dtype", "float32"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and out[0].split() == ["component", "quantity", "max", "abs", "max", "rel", "rounding", "excess",
                                            "tol", "pass"]
    rows = [line.split() for line in out[1:]]
    # every float32 row has a measured rounding allowance and the one float32 epsilon floor
    assert rows and all(row[-2] == "1.2e-07" and row[-1] == "ok" for row in rows)
    assert all(float(row[-4]) > 0 for row in rows if row[0] in ("backbone", "sampler"))


def test_float32_rows_are_explained_by_each_backends_own_rounding(capsys):
    """The derived rule on real numbers: each float32 difference is within the two backends'
    own float32 errors (measured against float64), and a 1e-4 error is far outside them."""
    registry = get_registry()
    config = load_config(CONFIGS / "meanflow_toy2d.yaml", [], registry)
    rows = run_parity(config, registry, dtype="float32")
    assert all(row.ok and row.max_rel <= row.rounding + row.tol for row in rows)
    worst = max(row.rounding for row in rows if row.quantity in ("loss", "output", "jvp tangent"))
    assert 0 < worst < 1e-4 / 10  # so a 1e-4 error in one backend would stand out by 10x


def test_adam_first_step_difference_is_what_the_gradients_explain():
    from toolkit.parity import adam_first_step_difference, compare

    lr, eps = 1e-3, 1e-8
    g_a = {"w": np.array([1.0, -2e-9, 3e-9, 0.0])}
    g_b = {"w": np.array([1.0 + 1e-7, 2e-9, 3.1e-9, 1e-12])}  # a sign flip and two entries near eps
    explained = adam_first_step_difference(g_a, g_b, lr, eps)["w"]
    step = lambda g: -lr * g / (np.abs(g) + eps)  # noqa: E731
    np.testing.assert_allclose(explained, np.abs(step(g_a["w"]) - step(g_b["w"])), rtol=1e-12, atol=1e-15)
    assert explained[1] == pytest.approx(lr * 2 * 2e-9 / 1.2e-8)  # a sign flip of a 2e-9 entry: lr / 3
    w = np.array([0.5, 0.1, -0.2, 0.3])
    assert compare(w + step(g_a["w"]), w + step(g_b["w"]), explained)[3] < 1e-15
    assert compare(w + step(g_a["w"]), w + step(g_b["w"]))[1] > 1e-4  # what the raw comparison saw
    # clipping scales both gradients before the update
    clipped = adam_first_step_difference({"w": np.array([10.0, 1e-8])}, {"w": np.array([10.0, 2e-8])}, lr, eps,
                                         clip=1.0)["w"]
    np.testing.assert_allclose(clipped[1], lr * abs(1e-9 / (1e-9 + eps) - 2e-9 / (2e-9 + eps)), rtol=1e-5)


def test_a_wrong_optimizer_step_is_caught(monkeypatch):
    from toolkit.backends.jax.engine import JaxEngine

    original = JaxEngine.train_step
    monkeypatch.setattr(JaxEngine, "train_step", lambda self, batch, draws, lr, noise:
                        original(self, batch, draws, lr * 1.01, noise))  # a 1% wrong learning rate
    registry = get_registry()
    rows = run_parity(load_config(CONFIGS / "fm_toy2d.yaml", [], registry), registry, dtype="float32")
    failed = {row.quantity for row in rows if not row.ok}
    # the weights after the step, and the samples drawn with them afterwards; nothing before it
    assert any(q.startswith("weight after one step") for q in failed)
    assert all(q.startswith(("weight after one step", "samples")) for q in failed)


class _WrongJaxFlowMatching:
    """Flow matching whose JAX loss is off by ``error`` relative, in float64 and in float32
    alike (a subtle port bug), or in float32 only (``float32_only``: what a less precise kernel
    of a correct port looks like, e.g. another summation order)."""

    error, float32_only = 1e-4, False

    def __init__(self, options, spec, ops):
        from toolkit.plugins.flow_matching.objective import FlowMatching

        self.inner = FlowMatching(options, spec, ops)

    def regression(self, *args):
        return self.inner.regression(*args)

    def loss(self, model, x, y, draws, noise):
        import jax.numpy as jnp

        loss, parts = self.inner.loss(model, x, y, draws, noise)
        if self.float32_only and loss.dtype != jnp.float32:
            return loss, parts
        return loss * (1 + self.error), parts


class _ImpreciseJaxFlowMatching(_WrongJaxFlowMatching):
    error, float32_only = 3e-5, True


class _WrongPlugin:
    @hookimpl
    def register_objectives(self, register):
        from toolkit.plugins.flow_matching import FlowMatchingOptions

        for name, jax_half in (("wrong_fm", _WrongJaxFlowMatching), ("imprecise_fm", _ImpreciseJaxFlowMatching)):
            register(name, {"torch": "toolkit.plugins.flow_matching.objective:FlowMatching", "jax": jax_half},
                     options=FlowMatchingOptions)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_wrong_jax_implementation_is_caught_and_named(capsys, dtype):
    get_registry().add_plugin(_WrongPlugin(), "wrong_plugin")
    code = main(["parity", str(CONFIGS / "fm_toy2d.yaml"), "--set", "objective.name=wrong_fm", "--dtype", dtype])
    out, err = capsys.readouterr()
    assert code == 1
    assert err.startswith("toolkit: parity failed for ") and err.endswith("first: objective wrong_fm: loss\n")
    failed = [line for line in out.splitlines() if line.endswith("FAIL")]
    assert any(line.startswith("objective wrong_fm") and " loss " in line for line in failed)
    assert any("grad layers.0.weight" in line for line in failed)
    assert not any(line.startswith("backbone") for line in failed)  # the backbone itself agrees


def test_float32_rounding_of_one_backend_is_not_a_parity_failure():
    """A JAX half that is exact in float64 but rounds 3e-5 worse in float32 than torch: a fixed
    1e-5 tolerance fails it (as one CPU's kernels failed the old fixed rule), the derived rule
    sees that its own float32 error explains the difference."""
    registry = get_registry()
    registry.add_plugin(_WrongPlugin(), "wrong_plugin")
    config = load_config(CONFIGS / "fm_toy2d.yaml", ["objective.name=imprecise_fm"], registry)
    derived = run_parity(config, registry, dtype="float32")
    assert all(row.ok for row in derived)
    loss = next(row for row in derived if row.quantity == "loss")
    # the allowance covers the difference (to float64 rounding of the two sums that measure them)
    assert loss.max_rel == pytest.approx(3e-5, rel=0.1) and loss.rounding >= loss.max_rel * (1 - 1e-9)
    fixed = run_parity(config, registry, dtype="float32", tol=1e-5)
    assert {row.quantity for row in fixed if not row.ok} >= {"loss"}
    assert all(row.ok for row in run_parity(config, registry))  # and float64 has nothing to find


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

    torch_engine.train_step(Batch(rng.standard_normal((8, 2))), config.objective.options.draw(rng, 8, 0, spec), 1e-2,
                            rng.standard_normal((8, 2)))
    after = jax_engine.state_arrays()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_run_parity_compares_any_two_backends_it_is_given():
    registry = get_registry()
    config = load_config(CONFIGS / "fm_toy2d.yaml", [], registry)
    rows = run_parity(config, registry, ("jax", "torch"))
    assert rows and all(row.ok for row in rows)


@pytest.mark.parametrize("config", FLOAT32_CONFIGS, ids=lambda c: c.replace("/", "-"))
def test_every_shipped_config_passes_in_float32(capsys, config):
    code = main(parity_command(config, "--dtype", "float32"))
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and rows and all(row["ok"] for row in rows)


class _BrokenBackbonePlugin:
    @hookimpl
    def register_backbones(self, register):
        register("needs_images", {"torch": "toolkit.plugins.dit.torch:DiT", "jax": "toolkit.plugins.dit.jax:DiT"},
                 options=None, examples=[{"data": {"shape": [2]}}])


def test_parity_all_covers_each_component_on_its_examples(capsys, monkeypatch):
    """Every component on each of its examples; one that cannot even be built fails alone (one
    `--all` run for both: most of its time is compiling the same components)."""
    monkeypatch.setenv("TOOLKIT_PLUGINS", "torch_backend,jax_backend,synthetic,mlp,meanflow,samplers")
    reset_registry()
    get_registry().add_plugin(_BrokenBackbonePlugin(), "broken_backbones")
    code = main(["parity", "--all", "--json"])
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert code == 1
    failed = [row for row in rows if not row["ok"]]
    assert [row["component"] for row in failed] == ["backbone needs_images"]
    assert failed[0]["quantity"] == "error: AttributeError: 'NoneType' object has no attribute 'patch'"
    rows = [row for row in rows if row["ok"]]
    labels = {row["component"] for row in rows}
    assert labels == {"backbone mlp [example 1]", "backbone mlp [example 2]", "objective meanflow [example 1]",
                      "objective meanflow [example 2]", "sampler meanflow [example 1]",
                      "sampler meanflow [example 2]", "sampler euler", "sampler heun"}
    by = lambda label: {row["quantity"] for row in rows if row["component"] == label}  # noqa: E731
    assert {"output", "output (null class)", "jvp tangent"} <= by("backbone mlp [example 1]")
    assert "output (null class)" not in by("backbone mlp [example 2]")  # its example is unconditional
    assert any(q.startswith("weight after one step") for q in by("backbone mlp [example 1]"))
    assert {"prediction", "target", "loss"} <= by("objective meanflow [example 1]")
    assert by("sampler heun") == {"samples (4 NFE)"}
    assert "parity failed" in captured.err and "backbone needs_images" in captured.err


def test_zero_initialised_layers_do_not_hide_a_wrong_network(monkeypatch):
    """DiT's adaLN-Zero layers make an untrained DiT output exactly 0 in any backend: the
    harness compares the networks off their initialisation, so a JAX DiT that modulates by
    ``scale`` instead of ``1 + scale`` fails on its output, JVP, gradients and samples."""
    import toolkit.plugins.dit.jax as dit_jax
    from toolkit.config import config_from_dict
    from toolkit.parity import example_configs

    registry = get_registry()
    example = example_configs(registry.get("backbone", "dit"))[0]  # its parity passes in test_components
    monkeypatch.setattr(dit_jax, "modulate", lambda x, shift, scale: x * scale + shift)
    failed = {row.quantity for row in run_parity(config_from_dict(example, "dit example", registry=registry),
                                                 registry) if not row.ok}
    assert {"output", "jvp tangent", "samples (2 NFE)"} <= failed
    assert any(quantity.startswith("grad ") for quantity in failed)


class _OneSidedRegression:
    """Flow matching whose JAX half does not provide ``regression``: a mismatch, not a pass."""

    def __init__(self, options, spec, ops):
        from toolkit.plugins.flow_matching.objective import FlowMatching

        self.loss = FlowMatching(options, spec, ops).loss


class _OneSidedPlugin:
    @hookimpl
    def register_objectives(self, register):
        from toolkit.plugins.flow_matching import FlowMatchingOptions

        register("one_sided", {"torch": "toolkit.plugins.flow_matching.objective:FlowMatching",
                               "jax": _OneSidedRegression}, options=FlowMatchingOptions)


def test_regression_in_one_backend_only_fails_on_prediction(capsys):
    get_registry().add_plugin(_OneSidedPlugin(), "one_sided_plugin")
    code = main(["parity", str(CONFIGS / "fm_toy2d.yaml"), "--set", "objective.name=one_sided"])
    out, err = capsys.readouterr()
    assert code == 1 and err.endswith("first: objective one_sided: prediction\n")
    assert any(line.startswith("objective one_sided") and " loss " in line and line.endswith(" ok")
               for line in out.splitlines())


#: Kernels other than the machine's own: torch's ATen without vector instructions, XLA's CPU
#: code generated for SSE4.2, MKL's SSE4.2 code path. The same on every x86 machine, and
#: another instruction set than any machine with AVX2 or AVX-512 picks for itself. XLA at its
#: default optimisation level (3 in jaxlib 0.10), which the rest of the suite lowers to 0 (tests/conftest.py).
OTHER_KERNELS = {"ATEN_CPU_CAPABILITY": "default",
                 "XLA_FLAGS": "--xla_cpu_max_isa=SSE4_2 --xla_backend_optimization_level=3",
                 "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}


def test_parity_holds_on_another_instruction_set(tmp_path):
    """float32 parity tests of this module again, in a process whose kernels are forced onto
    another instruction set: a tolerance that depended on the kernels chosen on this machine
    fails here on any machine. The injected bugs are still caught there."""
    import os
    import subprocess
    import sys

    env = {**os.environ, **OTHER_KERNELS}
    probe = subprocess.run([sys.executable, "-c", "import torch, jax.numpy as jnp; jnp.ones(2).sum().block_until_ready();"
                            " print(torch.backends.cpu.get_cpu_capability())"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0 and probe.stdout.split()[-1] == "DEFAULT", probe.stdout + probe.stderr
    # the float32 parity tests of this module on a config of each kind, and the injected bugs
    selected = [f"{__file__}::test_every_shipped_config_passes_in_float32[{config.replace('/', '-')}]"
                for config in OTHER_KERNEL_CONFIGS]
    selected += [f"{__file__}::{name}" for name in (
        "test_float32_table", "test_float32_rows_are_explained_by_each_backends_own_rounding",
        "test_a_wrong_optimizer_step_is_caught", "test_a_wrong_jax_implementation_is_caught_and_named",
        "test_float32_rounding_of_one_backend_is_not_a_parity_failure")]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             f"--basetemp={tmp_path / 'basetemp'}", *selected],
                            cwd=CONFIGS.parent, env=env, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert f"{len(selected) + 1} passed" in result.stdout  # the bug test runs in both dtypes
