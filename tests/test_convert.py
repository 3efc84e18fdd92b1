"""`toolkit convert`: a checkpoint trained in one backend samples identically in the other."""

from __future__ import annotations

import numpy as np
import pytest

from tests_paths import CONFIGS
from toolkit.checkpoint import checkpoint_metadata, list_checkpoints, load_checkpoint, save_checkpoint
from toolkit.cli import main
from toolkit.config import config_from_dict, load_config, to_dict
from toolkit.evaluation import checkpoint_engine
from toolkit.parity import compare, example_configs
from toolkit.registry import get_registry
from toolkit.train import train

OTHER = {"torch": "jax", "jax": "torch"}


@pytest.mark.parametrize("source", ["torch", "jax"])
def test_a_trained_model_samples_the_same_after_conversion(source, tmp_path, capsys):
    registry = get_registry()
    config = load_config(CONFIGS / "meanflow_toy2d.yaml", ["run.steps=30", "eval.num_samples=64",
                                                           "logging.progress=false"], registry)
    train(config, source, registry, out_dir=tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000030.safetensors"
    target = OTHER[source]
    assert main(["convert", str(checkpoint), "--to", target]) == 0
    out = capsys.readouterr().out
    converted = checkpoint.with_name(f"step_00000030.{target}.safetensors")
    assert f"-> {converted} ({target})" in out and "outputs agree to" in out
    # The converted file beside the run's checkpoints is not taken for one of them.
    assert list_checkpoints(checkpoint.parent) == [checkpoint]

    arrays, meta = load_checkpoint(converted)
    assert meta["backend"] == target and meta["step"] == 30 and meta["config"] == load_checkpoint(checkpoint)[1]["config"]
    engines = [checkpoint_engine(p, *load_checkpoint(p), b, registry)[0]
               for p, b in ((checkpoint, source), (converted, target))]
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((256, 2))
    sampler = registry.load("sampler", config.sampler.name, source)(config.sampler.options)
    first, second = (engine.sample(sampler, noise, None) for engine in engines)
    assert compare(first, second)[1] < 1e-5  # float32 end to end


def test_shapes_follow_the_target_backend_and_names_do_not_change(tmp_path):
    """Equinox stores a conv bias as (C, 1, 1), torch as (C,): the converted file has the
    target's shapes, and converting back restores the original file's arrays exactly."""
    registry = get_registry()
    data = example_configs(registry.get("backbone", "unet"))[0]
    config = config_from_dict(data, "unet example", registry=registry)
    spec = registry.load("dataset", config.data.name, "jax")(config.data.options).spec
    engine = registry.load("backend", "jax", "jax")(config, registry, spec)
    original = tmp_path / "jax.safetensors"
    save_checkpoint(original, {f"model.{k}": v for k, v in engine.state_arrays().items()},
                    checkpoint_metadata(0, "jax", config, spec))
    assert main(["convert", str(original), "--to", "torch", "--out", str(tmp_path / "torch.safetensors")]) == 0
    assert main(["convert", str(tmp_path / "torch.safetensors"), "--to", "jax", "--out",
                 str(tmp_path / "back.safetensors")]) == 0
    jax_arrays, torch_arrays, back = (load_checkpoint(tmp_path / f)[0]
                                      for f in ("jax.safetensors", "torch.safetensors", "back.safetensors"))
    assert set(jax_arrays) == set(torch_arrays) == set(back)
    reshaped = [k for k in jax_arrays if jax_arrays[k].shape != torch_arrays[k].shape]
    assert reshaped and all(jax_arrays[k].shape[1:] == (1, 1) and torch_arrays[k].ndim == 1 for k in reshaped)
    assert all(np.array_equal(jax_arrays[k], back[k]) and jax_arrays[k].shape == back[k].shape for k in jax_arrays)


def test_conversion_errors_name_the_file(tmp_path, capsys):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint")
    assert main(["convert", str(garbage), "--to", "torch"]) == 1
    assert f"{garbage}: not a readable checkpoint" in capsys.readouterr().err

    registry = get_registry()
    config = load_config(CONFIGS / "fm_toy2d.yaml", [], registry)
    engine = registry.load("backend", "torch", "torch")(config, registry,
                                                        registry.load("dataset", "checkerboard", "torch")(
                                                            config.data.options).spec)
    arrays = {f"model.{k}": v for k, v in engine.state_arrays().items()}
    missing = sorted(arrays)[0]
    incomplete = tmp_path / "incomplete.safetensors"
    save_checkpoint(incomplete, {k: v for k, v in arrays.items() if k != missing},
                    {"step": 1, "backend": "torch", "config": to_dict(config)})
    assert main(["convert", str(incomplete), "--to", "jax"]) == 1
    err = capsys.readouterr().err
    assert f"{incomplete}: its weights do not fit a mlp" in err and missing.removeprefix("model.") in err

    no_config = tmp_path / "foreign.safetensors"
    save_checkpoint(no_config, arrays, {"step": 1})
    assert main(["convert", str(no_config), "--to", "jax"]) == 1
    assert "carries no run config" in capsys.readouterr().err

    assert main(["convert", str(incomplete), "--to", "jax", "--out", str(incomplete)]) == 1
    assert "would overwrite the input" in capsys.readouterr().err
    assert main(["convert", str(incomplete), "--to", "tensorflow"]) == 2
    assert "tensorflow" in capsys.readouterr().err

