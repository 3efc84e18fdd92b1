"""``toolkit plan``: parameter counts from shapes, memory arithmetic, the over-memory warning,
and that it runs on every shipped config."""

from __future__ import annotations

import json

import pytest
import yaml

from test_backbones import EXPECTED_MILLIONS
from tests_paths import CONFIGS
from toolkit.cli import main
from toolkit.config import load_config
from toolkit.plan import GIB, IMAGENET_TRAIN, make_plan
from toolkit.registry import get_registry

SHIPPED = sorted([p.relative_to(CONFIGS) for p in CONFIGS.glob("*.yaml")] +
                 [p.relative_to(CONFIGS) for p in CONFIGS.glob("twins/*.yaml")])


def plan_of(config="meanflow_xl.yaml", *overrides, **kwargs):
    registry = get_registry()
    return make_plan(load_config(CONFIGS / config, overrides, registry), registry, **kwargs)


def test_dit_xl_has_the_papers_parameter_count_without_allocating_it():
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    plan = plan_of()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert plan.parameters / 1e6 == pytest.approx(EXPECTED_MILLIONS["XL"], abs=0.05)
    assert grown < 1024**2  # < 1 GiB of peak growth: the 2.7 GB of float32 weights were never made
    assert plan.weight_bytes == plan.gradient_bytes == 4 * plan.parameters
    assert plan.optimizer_bytes == 2 * plan.weight_bytes and plan.ema_bytes == plan.weight_bytes


def test_training_length_in_images_and_epochs():
    plan = plan_of()  # the ImageNet latents are absent here: ImageNet's size is assumed
    assert plan.dataset_size == IMAGENET_TRAIN and plan.images == 1201095 * 256
    assert plan.epochs == pytest.approx(240.0, abs=1e-3)
    assert plan_of(dataset_size=1000).epochs == pytest.approx(1201095 * 256 / 1000)


def test_memory_scales_with_batch_devices_ema_and_dtype():
    base = plan_of()
    double = plan_of("meanflow_xl.yaml", "run.batch_size=512")
    assert double.activation_bytes == pytest.approx(2 * base.activation_bytes, rel=1e-9)
    assert (double.weight_bytes, double.optimizer_bytes) == (base.weight_bytes, base.optimizer_bytes)
    eight = plan_of(devices=8)
    assert eight.batch_per_device == 32
    assert eight.activation_bytes == pytest.approx(base.activation_bytes / 8, rel=1e-9)
    assert eight.weight_bytes + eight.optimizer_bytes + eight.ema_bytes == (
        base.weight_bytes + base.optimizer_bytes + base.ema_bytes)  # replicas: not divided
    three = plan_of("meanflow_xl.yaml", "ema.decays=[0.9999, 0.99995, 0.9996]")
    assert three.ema_bytes == 3 * base.ema_bytes
    bf16 = plan_of("meanflow_xl.yaml", "run.mixed_precision=bf16")
    assert bf16.activation_bytes == pytest.approx(base.activation_bytes / 2, rel=1e-9)
    assert bf16.weight_bytes == base.weight_bytes  # bf16 keeps float32 weights
    f64 = plan_of("meanflow_xl.yaml", "run.dtype=float64")
    assert f64.weight_bytes == 2 * base.weight_bytes and f64.activation_bytes == 2 * base.activation_bytes
    # the JVP's share: MeanFlow's factor grows with the fraction of pairs with r < t
    fm = plan_of("meanflow_xl.yaml", "objective.ratio=0.0")
    assert base.activation_bytes == pytest.approx(1.25 * fm.activation_bytes, rel=1e-9)


def test_the_activation_estimate_is_the_documented_formula():
    plan = plan_of()
    depth, tokens, width, heads = 28, 16 * 16, 1152, 16
    per_example = depth * tokens * (20 * width + 2 * heads * tokens)
    assert plan.activation_bytes == int(256 * per_example * 1.25 * 4)
    assert 200 * GIB < plan.activation_bytes < 300 * GIB  # one device: far over an H100


def test_the_warning_for_too_little_memory(capsys):
    assert main(["plan", str(CONFIGS / "twins" / "meanflow_xl.yaml")]) == 0
    assert "WARNING" not in capsys.readouterr().out
    assert main(["plan", str(CONFIGS / "twins" / "meanflow_xl.yaml"), "--memory", "0.001"]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("WARNING: the estimated")], out
    assert main(["plan", str(CONFIGS / "meanflow_xl.yaml"), "--devices", "8"]) == 0  # 46 GiB of 80
    assert "WARNING" not in capsys.readouterr().out
    assert main(["plan", str(CONFIGS / "meanflow_xl.yaml")]) == 0  # 279 GiB on one device
    assert "WARNING" in capsys.readouterr().out


def test_json_output(capsys):
    assert main(["plan", str(CONFIGS / "meanflow_b2.yaml"), "--devices", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["parameters"] / 1e6 == pytest.approx(EXPECTED_MILLIONS["B"], abs=0.05)
    assert result["batch_per_device"] == 64 and result["over_memory"] is False


@pytest.mark.parametrize("config", SHIPPED, ids=str)
def test_plan_runs_on_every_shipped_config(config, tmp_path, capsys):
    data = yaml.safe_load((CONFIGS / config).read_text())["data"]
    moved = ["--set", f"data.path={tmp_path / 'data.h5'}"] if data.get("source") else []  # no build in the repo
    assert main(["plan", str(CONFIGS / config), *moved]) == 0
    out = capsys.readouterr().out
    assert out.startswith("config:") and "parameters:" in out and "total" in out
