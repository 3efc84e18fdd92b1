"""Run configs: loading, defaults, typed overrides, and errors that name file, key, value and expectation."""

from __future__ import annotations

import textwrap

import pytest

from toolkit.config import Choice, RunSection, config_from_dict, dump_yaml, load_config
from toolkit.errors import ConfigError
from tests_paths import CONFIGS

MINIMAL = {"data": {"name": "moons"}, "model": {"name": "mlp"}, "objective": {"name": "flow_matching"},
           "sampler": {"name": "euler"}}


def write(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path, text: str, overrides=()) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path, overrides)
    return str(error.value).replace(str(path), "run.yaml")


BASE = """
data: {name: moons}
model: {name: mlp}
objective: {name: flow_matching}
sampler: {name: euler}
"""


def test_shipped_config_loads_with_component_options():
    config = load_config(CONFIGS / "fm_toy2d.yaml")
    assert config.objective == Choice("flow_matching", config.objective.options)
    assert config.objective.options.time.distribution == "uniform"
    assert config.model.options.hidden == 512
    assert config.optimizer.lr == 2e-3  # written `1e-3`, which YAML 1.1 reads as a string
    assert config.optimizer.betas == (0.9, 0.999)
    assert config.eval.metric.options.projections == 256


def test_defaults_fill_missing_sections():
    config = config_from_dict(MINIMAL)
    assert config.run == RunSection()
    assert config.schedule is None
    assert config.model.options.time_inputs == "t_and_gap"


def test_unknown_key_names_file_dotted_key_and_closest(tmp_path):
    message = error_of(tmp_path, BASE + "optimizer: {lr: 1.0e-3, weight_decya: 0.1}\n")
    assert message == ("run.yaml: optimizer.weight_decya: unknown key (did you mean 'weight_decay'?); "
                       "valid keys here: lr, betas, eps, weight_decay, warmup_steps, decay, grad_clip")


def test_wrong_type_names_value_and_expectation(tmp_path):
    assert error_of(tmp_path, BASE + "run: {steps: many}\n") == \
        "run.yaml: run.steps: got 'many' (str), expected an integer"
    assert error_of(tmp_path, BASE + "logging: {progress: 3}\n") == \
        "run.yaml: logging.progress: got 3 (int), expected true or false"


def test_out_of_range_names_bound(tmp_path):
    assert error_of(tmp_path, BASE + "optimizer: {lr: -1}\n") == \
        "run.yaml: optimizer.lr: got -1.0, expected a value > 0"
    assert error_of(tmp_path, BASE + "optimizer: {betas: [0.9, 1.5]}\n") == \
        "run.yaml: optimizer.betas: got (0.9, 1.5), expected values in [0, 1)"


def test_component_options_are_validated_by_the_component(tmp_path):
    text = BASE.replace("objective: {name: flow_matching}",
                        "objective: {name: flow_matching, time: {distribution: logit_normal, sigma: 0}}")
    assert error_of(tmp_path, text) == "run.yaml: objective.time.sigma: got 0.0, expected a value > 0"
    text = BASE.replace("objective: {name: flow_matching}",
                        "objective: {name: flow_matching, time: {distribution: logitnormal}}")
    assert error_of(tmp_path, text) == ("run.yaml: objective.time.distribution: got 'logitnormal', expected one "
                                        "of 'uniform', 'logit_normal' (did you mean 'logit_normal'?)")
    text = BASE.replace("model: {name: mlp}", "model: {name: mlp, hiden: 3}")
    assert error_of(tmp_path, text).startswith("run.yaml: model.hiden: unknown key (did you mean 'hidden'?)")


def test_unknown_component_lists_available_and_closest(tmp_path):
    assert error_of(tmp_path, BASE.replace("name: moons", "name: moon")) == (
        "run.yaml: data.name: unknown dataset 'moon' (did you mean 'moons'?); "
        "available: checkerboard, eight_gaussians, gaussian, hdf5, moons, synthetic")


def test_missing_required_section(tmp_path):
    assert error_of(tmp_path, "data: {name: moons}\n").startswith(
        "run.yaml: model: is required: a mapping with a 'name' of a registered backbone")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: no such config file"):
        load_config(tmp_path / "nope.yaml")
    assert error_of(tmp_path, "data: [unclosed\n").startswith("run.yaml: not valid YAML")


def test_overrides_are_typed_and_validated(tmp_path):
    path = write(tmp_path, BASE)
    config = load_config(path, ["optimizer.lr=3e-4", "run.steps=10", "optimizer.betas=[0.5, 0.9]",
                                "objective.time.distribution=logit_normal", "optimizer.grad_clip=null"])
    assert (config.optimizer.lr, config.run.steps, config.optimizer.betas) == (3e-4, 10, (0.5, 0.9))
    assert config.objective.options.time.distribution == "logit_normal"
    assert config.optimizer.grad_clip is None
    with pytest.raises(ConfigError) as error:
        load_config(path, ["run.steps=-5"])
    assert str(error.value) == "--set run.steps=-5: run.steps: got -5, expected a value > 0"
    with pytest.raises(ConfigError, match=r"--set: steps: expected KEY=VALUE"):
        load_config(path, ["steps"])


def test_backend_support_is_checked_at_load(tmp_path):
    from toolkit.hookspecs import hookimpl
    from toolkit.registry import get_registry

    class TorchOnly:
        @hookimpl
        def register_samplers(self, register):
            register("torch_only_sampler", {"torch": "math:sqrt"})

    registry = get_registry()
    registry.add_plugin(TorchOnly(), "torch_only")
    path = write(tmp_path, BASE.replace("name: euler", "name: torch_only_sampler"))
    assert load_config(path, backend="torch").sampler.name == "torch_only_sampler"
    with pytest.raises(ConfigError) as error:
        load_config(path, backend="jax")
    assert str(error.value).endswith("sampler.name: sampler 'torch_only_sampler' has no jax implementation; "
                                     "it implements: torch")


def test_resolved_config_round_trips():
    config = load_config(CONFIGS / "fm_toy2d.yaml")
    import yaml

    assert config_from_dict(yaml.safe_load(dump_yaml(config))) == config


def test_backend_section_is_validated_by_each_backend(tmp_path):
    config = load_config(write(tmp_path, BASE + "backend: {torch: {compile: true, jvp: forward_ad}}\n"))
    options = config.backend_options("torch")
    assert (options.compile, options.jvp) == (True, "forward_ad")
    assert config.backend_options("jax", "default") == "default"
    assert error_of(tmp_path, BASE + "backend: {torch: {jvp: dual}}\n") == (
        "run.yaml: backend.torch.jvp: got 'dual', expected one of 'func', 'forward_ad'")
    assert error_of(tmp_path, BASE + "backend: {troch: {}}\n") == (
        "run.yaml: backend.troch: unknown backend 'troch' (did you mean 'torch'?); available: jax, torch")
    assert error_of(tmp_path, BASE + "backend: {jax: {compile: true}}\n") == (
        "run.yaml: backend.jax.compile: backend 'jax' takes no options")
