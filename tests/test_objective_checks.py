"""The shared objective check that parity cannot replace: an error written alike in every
backend (here a flipped sign of the target in an objective written once) passes parity and
fails the exactness check on Gaussian data, in each backend."""

from __future__ import annotations

import textwrap

from test_pytest_plugin import OPT_IN, pytest_in

SIGN_FLIPPED = """
    import attrs

    from toolkit.api import hookimpl


    @attrs.frozen
    class Options:
        \"\"\"Flow matching with its target's sign flipped.\"\"\"

        def draw(self, rng, batch_size, step, spec):
            t = 0.05 + 0.9 * rng.random(batch_size)
            return {"t": t, "r": t.copy()}


    class SignFlipped:
        def __init__(self, options, spec, ops):
            self.ops = ops

        def regression(self, model, x, y, draws, noise):
            z, v = self.ops.interpolate(x, noise, draws["t"])
            return self.ops.batched(model)(z, draws["t"], draws["r"], y), -v  # the error

        def loss(self, model, x, y, draws, noise):
            prediction, target = self.regression(model, x, y, draws, noise)
            error = self.ops.squared_error(prediction, target)
            return error.mean(), {"mse": self.ops.stop_gradient(error).mean()}


    @hookimpl
    def register_objectives(register):
        register("sign_flipped", {"*": SignFlipped}, options=Options)
"""
TESTS = """
    from toolkit.testing import ComponentChecks


    class TestSignFlipped(ComponentChecks):
        components = ["objective sign_flipped"]
"""


def test_a_sign_error_in_every_backend_passes_parity_and_fails_the_exactness_check(install_plugin, tmp_path):
    site = install_plugin("toolkit-sign-flipped", "sign_flipped", SIGN_FLIPPED)
    tests = tmp_path / "plugin_tests"
    tests.mkdir()
    (tests / "test_sign_flipped.py").write_text(textwrap.dedent(TESTS))
    (tests / "conftest.py").write_text(OPT_IN)
    result = pytest_in(tmp_path, {"PYTHONPATH": str(site)}, tests)
    failed = sorted(line.split("::")[-1].split(" ")[0] for line in result.stdout.splitlines()
                    if line.startswith("FAILED"))
    assert failed == ["test_objective_target_is_the_exact_field[objective-sign_flipped-1-jax]",
                      "test_objective_target_is_the_exact_field[objective-sign_flipped-1-torch]"], result.stdout
    assert "prediction and target differ for the exact field" in result.stdout
    assert "5 passed" in result.stdout  # parity, and the loss, gradient and step checks in both backends
