"""The shared checks that parity cannot replace, each shown catching an error written alike in
every backend (a component written once): a flipped sign of an objective's target, and a
sampler step that evaluates the field at a stale point."""

from __future__ import annotations

from test_pytest_plugin import run_checks_of

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
def test_a_sign_error_in_every_backend_passes_parity_and_fails_the_exactness_check(install_plugin, tmp_path):
    result, failed = run_checks_of(install_plugin, tmp_path, "toolkit-sign-flipped", SIGN_FLIPPED,
                                   ["objective sign_flipped"])
    assert failed == ["test_objective_target_is_the_exact_field[objective-sign_flipped-1-jax]",
                      "test_objective_target_is_the_exact_field[objective-sign_flipped-1-torch]"], result.stdout
    assert "prediction and target differ for the exact field" in result.stdout
    assert "5 passed" in result.stdout  # parity, and the loss, gradient and step checks in both backends


WRONG_STEP = """
    import attrs

    from toolkit.api import hookimpl, time_grid


    @attrs.frozen
    class Options:
        \"\"\"Few-step sampling of an average-velocity model, with a stale evaluation point.\"\"\"

        nfe: int = 2


    class StaleStep:
        def __init__(self, options):
            self.nfe = options.nfe

        def sample(self, model_fn, noise, y=None):
            z, grid = noise, time_grid(self.nfe)
            for t, r in zip(grid[:-1], grid[1:]):
                z = z - (t - r) * model_fn(noise, t, r, y)  # the error: the field at the noise, not at z
            return z


    @hookimpl
    def register_samplers(register):
        register("stale_step", {"*": StaleStep}, options=Options)
"""


def test_a_wrong_sampler_step_passes_the_constant_field_and_fails_the_exact_field(install_plugin, tmp_path):
    result, failed = run_checks_of(install_plugin, tmp_path, "toolkit-stale-step", WRONG_STEP, ["sampler stale_step"])
    assert failed == ["test_sampler_follows_the_exact_field[sampler-stale_step-1-jax]",
                      "test_sampler_follows_the_exact_field[sampler-stale_step-1-torch]"], result.stdout
    assert "the exact average field does not carry the noise to m + s e" in result.stdout
    assert "3 passed" in result.stdout  # parity and the constant field in both backends
