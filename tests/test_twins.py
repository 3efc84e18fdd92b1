"""The CPU-sized twins of the paper configs (configs/twins/): they must agree with their paper
config on every setting except an explicit allow-list, and they must run in both backends."""

from __future__ import annotations

import numpy as np
import pytest

from tests_paths import CONFIGS, PAPER_PATHS
from toolkit.config import load_config, to_dict
from toolkit.registry import get_registry
from toolkit.train import train

TWINS = CONFIGS / "twins"
PAPERS = sorted(p.name for p in TWINS.glob("*.yaml"))
#: What a twin may change: the model's size (a U-Net's levels, blocks and width included), the data, the run's length and batch (and name),
#: and what is logged, saved and measured. Everything else (objective, schedule, sampler,
#: optimizer, EMA, numerics, seed) must be the paper config's.
ALLOWED = ("run.name", "run.steps", "run.batch_size", "run.out_dir", "data", "model.size", "model.depth",
           "model.width", "model.heads", "model.channels", "model.channel_mult", "model.blocks", "logging", "checkpoint",
           "eval")


def flat(value, prefix=""):
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}.{key}" if prefix else key).items()}
    return {prefix: value}


def differences(paper, twin) -> list[str]:
    """Dotted keys outside :data:`ALLOWED` whose resolved values differ (or exist in one only)."""
    a, b = flat(to_dict(paper)), flat(to_dict(twin))
    allowed = lambda key: any(key == p or key.startswith(p + ".") for p in ALLOWED)  # noqa: E731
    return sorted(k for k in set(a) | set(b) if not allowed(k) and a.get(k, KeyError) != b.get(k, KeyError))


def test_every_paper_config_on_imagenet_latents_or_cifar10_has_a_twin():
    import yaml

    papers = {p.name for p in CONFIGS.glob("*.yaml")
              if any(name in str(yaml.safe_load(p.read_text())["data"].get("path", ""))
                     for name in ("imagenet", "cifar10"))}
    assert papers and papers == set(PAPERS)


@pytest.mark.parametrize("name", PAPERS)
def test_twin_agrees_with_its_paper_config(name):
    registry = get_registry()
    paper, twin = (load_config(path, (), registry) for path in (CONFIGS / name, TWINS / name))
    assert differences(paper, twin) == []
    size = (twin.model.options.resolved_depth if twin.model.name == "dit" else twin.model.options.blocks)
    assert size <= 2 and twin.run.steps <= 500  # it is CPU-sized


def test_a_drifted_twin_is_caught():
    registry = get_registry()
    paper = load_config(CONFIGS / "meanflow_xl.yaml", (), registry)
    drifted = load_config(TWINS / "meanflow_xl.yaml", ["objective.guidance.kappa=0.9", "optimizer.betas=[0.9,0.999]",
                                                       "schedule={name: meanflow_curriculum}", "model.patch=4"],
                          registry)
    assert differences(paper, drifted) == ["model.patch", "objective.guidance.kappa", "optimizer.betas", "schedule",
                                           *(f"schedule.{key}" for key in sorted(
                                               ["dtd_clusters", "dtd_fraction", "gap_weighting", "min_snr_gamma",
                                                "mode", "name", "power", "steps", "v_formation", "v_time"]))]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from toolkit.plugins.hdf5.commands import build_file

    path = tmp_path_factory.mktemp("data") / "digits.h5"
    build_file("sklearn:digits", path)
    return path


#: the twins that run: those of the paper configs the suite does not smoke-run itself
#: (tests/test_training.py runs the others at PAPER_SMALLER, every setting but size and data
#: theirs; the twins' data, the digits, runs here through these)
RUN = [name for name in PAPERS if name not in PAPER_PATHS]


@pytest.mark.parametrize("name", RUN)
def test_twin_runs(backend, name, digits, tmp_path):
    registry = get_registry()
    # no metric: it is not what the twin checks (tests/test_digits.py covers classifier_fd), and it is slow
    config = load_config(TWINS / name, ["run.steps=3", "eval.metric=null", "eval.num_samples=16",
                                        f"data.path={digits}", "logging.progress=false"], registry, backend=backend)
    results = train(config, backend, registry, out_dir=tmp_path)
    assert results["step"] == 3
    assert all(np.isfinite(v) for k, v in results.items() if k != "weights"), results
