"""The toy vertical slice, end to end, in each backend: what a run writes, that it is
reproducible, that it learns, and that divergence stops it cleanly."""

from __future__ import annotations

import json
import os

import attrs
import numpy as np
import pytest

from tests_paths import CONFIGS, PAPER_PATHS, PAPER_SMALLER, data_missing
from toolkit.checkpoint import load_checkpoint
from toolkit.config import load_config
from toolkit.errors import DivergenceError, UsageError
from toolkit.hookspecs import hookimpl
from toolkit.registry import get_registry
from toolkit.config import ema_decay
from toolkit.train import learning_rate, train


def toy_run(backend, out_dir, *overrides, config=CONFIGS / "fm_toy2d.yaml"):
    registry = get_registry()
    cfg = load_config(config, ["logging.progress=false", *overrides], registry, backend=backend)
    return train(cfg, backend, registry, out_dir=out_dir)


def read_events(out_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_a_run_writes_events_checkpoints_plot_and_run_info(backend, tmp_path):
    results = toy_run(backend, tmp_path, "run.steps=120", "logging.every=20", "checkpoint.every=50",
                      "checkpoint.keep=2", "eval.num_samples=300")
    events = read_events(tmp_path)
    tags = events.Tags()
    for tag in ["train/loss", "train/lr", "train/steps_per_second", "train/samples_per_second",
                "train/grad_norm", "train/mse", "eval/sliced_wasserstein"]:
        assert tag in tags["scalars"], tag
    assert [e.step for e in events.Scalars("train/loss")] == [20, 40, 60, 80, 100, 120]
    assert all(np.isfinite(e.value) and e.value > 0 for e in events.Scalars("train/loss"))
    # warm-up 200 steps of a cosine schedule: the logged rate is the schedule's
    assert events.Scalars("train/lr")[0].value == pytest.approx(2e-3 * 20 / 200, rel=1e-6)
    assert tags["images"] == ["eval/samples"]

    saved = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert saved == ["step_00000100.safetensors", "step_00000120.safetensors"]  # keep: 2
    arrays, meta = load_checkpoint(tmp_path / "checkpoints" / "step_00000120.safetensors")
    assert meta["step"] == 120 and meta["backend"] == backend and meta["config"]["model"]["name"] == "mlp"
    assert {"model.layers.0.weight", "model.layers.3.bias"} <= set(arrays)

    assert (tmp_path / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["backend"] == backend and info["config"]["run"]["steps"] == 120
    assert {"meanflow-toolkit", "numpy", backend} <= set(info["versions"])
    assert json.loads((tmp_path / "metrics.json").read_text()) == results
    assert results["nfe"] == 32 and results["step"] == 120


def test_same_seed_gives_the_same_loss_curve(backend, tmp_path):
    curves = []
    for name in ["a", "b"]:
        toy_run(backend, tmp_path / name, "run.steps=40", "logging.every=5", "eval.num_samples=50")
        curves.append([e.value for e in read_events(tmp_path / name).Scalars("train/loss")])
    assert curves[0] == curves[1]
    toy_run(backend, tmp_path / "c", "run.steps=40", "logging.every=5", "eval.num_samples=50", "run.seed=1")
    assert [e.value for e in read_events(tmp_path / "c").Scalars("train/loss")] != curves[0]


@pytest.mark.slow
def test_shipped_config_learns_the_checkerboard(backend, tmp_path):
    # 3000 of the config's 8000 steps (the suite's time budget): measured 0.267 of the noise's
    # distance in both backends at 3000, 0.256 at 4000.
    results = toy_run(backend, tmp_path, "run.steps=3000")
    assert results["sliced_wasserstein"] < 0.3 * results["sliced_wasserstein_of_noise"], results


class _PoisonedData:
    """A dataset plugin whose 5th batch holds a NaN."""

    @hookimpl
    def register_datasets(self, register):
        register("poisoned", {"*": PoisonedDataset})


class PoisonedDataset:
    def __init__(self, options):
        from toolkit.interfaces import DataSpec

        self.spec = DataSpec((2,))

    def batches(self, batch_size, seed, start=0):
        from toolkit.interfaces import Batch

        rng = np.random.default_rng(seed)
        for index in range(1, 10**9):
            x = rng.standard_normal((batch_size, 2))
            if index == 5:
                x[0, 0] = np.nan
            yield Batch(x)

    def reference(self, n, seed):
        raise AssertionError("a diverged run is not evaluated")


def test_divergence_names_the_step_and_keeps_the_last_checkpoint(backend, tmp_path):
    get_registry().add_plugin(_PoisonedData(), "poisoned_data")
    with pytest.raises(DivergenceError) as error:
        toy_run(backend, tmp_path, "data.name=poisoned", "run.steps=10", "checkpoint.every=2")
    last = tmp_path / "checkpoints" / "step_00000004.safetensors"
    assert str(error.value) == (f"training diverged at step 5: non-finite loss (loss nan, gradient norm nan); "
                                f"the last good checkpoint is {last}")
    arrays, meta = load_checkpoint(last)
    assert meta["step"] == 4 and all(np.isfinite(a).all() for a in arrays.values())


def test_divergence_between_reads_stops_the_run_where_it_reads(backend, tmp_path):
    """Step 5's loss is NaN, but the loop reads no value until step 7 (a checkpoint and the end):
    it stops there, naming step 5, and writes nothing from the weights after it."""
    get_registry().add_plugin(_PoisonedData(), "poisoned_data")
    with pytest.raises(DivergenceError) as error:
        toy_run(backend, tmp_path, "data.name=poisoned", "run.steps=7", "checkpoint.every=4", "logging.every=50")
    last = tmp_path / "checkpoints" / "step_00000004.safetensors"
    assert str(error.value) == (f"training diverged at step 5: non-finite loss (loss nan, gradient norm nan); "
                                f"the last good checkpoint is {last}")
    assert sorted((tmp_path / "checkpoints").iterdir()) == [last]
    assert all(np.isfinite(a).all() for a in load_checkpoint(last)[0].values())


def test_a_non_finite_step_changes_nothing(backend):
    """The engine skips the update of a step whose loss is not finite (weights, AdamW's moments
    and step count) without raising: the loop finds out when it next reads the values."""
    from toolkit.interfaces import Batch

    registry = get_registry()
    config = load_config(CONFIGS / "fm_toy2d.yaml", ["model.hidden=32"], registry, backend=backend)
    spec = registry.load("dataset", config.data.name, backend)(config.data.options).spec
    engine = registry.load("backend", backend, backend)(config, registry, spec)
    rng = np.random.default_rng(0)

    def step(x):
        draws = config.objective.options.draw(rng, len(x), 0, spec)
        values = engine.train_step(Batch(x), draws, 1e-2, rng.standard_normal(x.shape).astype(np.float32))
        return {key: float(value) for key, value in values.items()}

    step(rng.standard_normal((8, 2)))
    weights, moments = engine.state_arrays(), engine.optimizer_arrays()
    poisoned = rng.standard_normal((8, 2))
    poisoned[3, 1] = np.nan
    values = step(poisoned)
    assert np.isnan(values["loss"]) and np.isnan(values["grad_norm"])
    for before, after in ((weights, engine.state_arrays()), (moments, engine.optimizer_arrays())):
        assert set(before) == set(after) and all(np.array_equal(before[k], after[k]) for k in before)
    assert np.isfinite(step(rng.standard_normal((8, 2)))["loss"])  # and the next finite step is taken
    assert float(engine.optimizer_arrays()["step"]) == 2
    assert any(not np.array_equal(weights[k], v) for k, v in engine.state_arrays().items())


def _spy_on_host_reads(backend, monkeypatch, on_read) -> None:
    """Call ``on_read()`` whenever a framework value is read back to the host (the reads that
    make the host wait for the device). JAX's CPU arrays: ``float``, ``int``, ``bool``,
    ``tolist``, ``jax.device_get``, ``block_until_ready`` (``np.asarray`` reads through the
    buffer protocol, which no Python hook sees); torch: those of ``Tensor``, ``.cpu()`` included."""
    if backend == "jax":
        from jax._src.array import ArrayImpl as kind

        names = ("_value", "block_until_ready")
    else:
        import torch

        kind, names = torch.Tensor, ("__float__", "__int__", "__bool__", "item", "tolist", "numpy", "cpu")

    def spy(original):
        if isinstance(original, property):
            return property(lambda self: (on_read(), original.fget(self))[1])
        return lambda self, *args, **kwargs: (on_read(), original(self, *args, **kwargs))[1]

    for name in names:
        monkeypatch.setattr(kind, name, spy(getattr(kind, name)))


def test_the_host_waits_for_the_device_only_where_the_loop_reads(backend, tmp_path, monkeypatch):
    """Between the steps that log (every 5 of 12), the first and the last, no step reads a value
    back: a step on an accelerator is queued while the one before it runs."""
    engine_class = get_registry().load("backend", backend, backend)
    train_step, now, read_at = engine_class.train_step, {"step": 0}, set()

    def counted(self, *args, **kwargs):
        now["step"] += 1
        return train_step(self, *args, **kwargs)

    monkeypatch.setattr(engine_class, "train_step", counted)
    _spy_on_host_reads(backend, monkeypatch, lambda: read_at.add(now["step"]))
    toy_run(backend, tmp_path, "run.steps=12", "logging.every=5", "checkpoint.every=null", "model.hidden=32",
            "eval.num_samples=50")
    assert now["step"] == 12
    assert read_at - {0} == {1, 5, 10, 12}  # 0: building the engine; 12: the end, evaluation included


def test_learning_rate_schedule():
    from toolkit.config import OptimizerSection

    warm = OptimizerSection(lr=1.0, warmup_steps=4, decay="cosine")
    assert [learning_rate(warm, s, 104) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert learning_rate(warm, 54, 104) == pytest.approx(0.5)
    assert learning_rate(warm, 104, 104) == pytest.approx(0.0)
    assert learning_rate(OptimizerSection(lr=0.1), 10**6, 10) == 0.1


def test_meanflow_learns_one_step_sampling(backend, tmp_path):
    results = toy_run(backend, tmp_path, "run.steps=2000", "eval.num_samples=8000",
                      config=CONFIGS / "meanflow_toy2d.yaml")
    assert results["nfe"] == 1
    assert results["sliced_wasserstein"] < 0.4 * results["sliced_wasserstein_of_noise"], results


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml")
                                           if not data_missing(p) or p.name in PAPER_PATHS))
def test_every_shipped_config_validates_and_runs(backend, tmp_path, config):
    """Three steps of each config. A paper config, whose data (ImageNet latents, CIFAR-10) is
    not on this machine, runs as `toolkit run --smoke` does, at the size of PAPER_SMALLER: every
    other setting is the paper's (configs/twins/ train them all on digits)."""
    import yaml

    from toolkit.train import smoke_config

    data = yaml.safe_load((CONFIGS / config).read_text())["data"]
    if data_missing(CONFIGS / config):
        registry = get_registry()
        # PAPER_SMALLER: one block, on 8x8 data (16 tokens instead of 256: the layers are the same)
        cfg = load_config(CONFIGS / config, ["logging.progress=false", *PAPER_SMALLER[config]], registry,
                          backend=backend)
        smoke = smoke_config(cfg, registry, backend)
        # nothing here reads a checkpoint (they are 100s of MB at this width; saving is tested elsewhere)
        smoke = attrs.evolve(smoke, checkpoint=attrs.evolve(smoke.checkpoint, every=None))
        results = train(smoke, backend, registry, out_dir=tmp_path)
        assert not (tmp_path / "checkpoints").exists()
    else:
        # a data file the config builds itself goes into tmp_path, not the working directory
        moved = [f"data.path={tmp_path / 'data.h5'}"] if isinstance(data, dict) and data.get("source") else []
        results = toy_run(backend, tmp_path, "run.steps=3", "eval.num_samples=64", *moved, config=CONFIGS / config)
    assert results["step"] == 3
    assert all(np.isfinite(v) for k, v in results.items() if k != "weights"), results


def test_ema_follows_its_recursion(backend):
    """a_k = a_{k-1} + (1 - d_k)(w_k - a_{k-1}) from a_0 = w_0, with d_k the warmed-up decay,
    checked against the weights each step leaves (two steps, two decays)."""
    from toolkit.plugins.toy2d import Checkerboard, Toy2DOptions

    registry = get_registry()
    config = load_config(CONFIGS / "meanflow_toy2d.yaml", ["ema.decays=[0.5, 0.999]"], registry, backend=backend)
    dataset = Checkerboard(Toy2DOptions(conditional=True))
    engine = registry.load("backend", backend, backend)(config, registry, dataset.spec)
    rng = np.random.default_rng(0)
    expected = [engine.state_arrays()] * 2
    for step in (1, 40):
        batch = next(dataset.batches(32, 0, start=step))
        draws = config.objective.options.draw(rng, 32, step, dataset.spec)
        engine.train_step(batch, draws, 1e-2, rng.standard_normal(batch.x.shape).astype(np.float32))
        decays = [ema_decay(d, step, warmup=True) for d in config.ema.decays]
        engine.update_ema(decays)
        weights = engine.state_arrays()
        expected = [{k: a[k] + (1 - d) * (weights[k] - a[k]) for k in a} for a, d in zip(expected, decays)]
    assert decays == [0.5, 41 / 50]  # the warm-up caps 0.999 at (1 + 40) / (10 + 40)
    for average, wanted in zip(engine.ema_arrays(), expected):
        for name in wanted:
            np.testing.assert_allclose(average[name], wanted[name], rtol=1e-6, atol=1e-7, err_msg=name)
    assert not np.allclose(engine.ema_arrays()[1]["layers.0.weight"], weights["layers.0.weight"])


def test_evaluation_uses_the_first_average(backend, tmp_path):
    common = ["run.steps=30", "eval.num_samples=100", "checkpoint.every=30"]
    ema = toy_run(backend, tmp_path / "ema", *common, "ema.decays=[0.99, 0.5]")
    raw = toy_run(backend, tmp_path / "raw", *common, "ema.decays=[0.99, 0.5]", "eval.weights=model")
    assert ema["weights"] == "ema 0.99" and raw["weights"] == "model"
    assert ema["sliced_wasserstein"] != raw["sliced_wasserstein"]
    arrays, _ = load_checkpoint(tmp_path / "ema" / "checkpoints" / "step_00000030.safetensors")
    assert {"ema_0.99.layers.0.weight", "ema_0.5.layers.0.weight", "model.layers.0.weight"} <= set(arrays)


def test_ema_warmup():
    assert ema_decay(0.9999, 1, warmup=True) == pytest.approx(2 / 11)
    assert ema_decay(0.9999, 10**6, warmup=True) == 0.9999
    assert ema_decay(0.9999, 1, warmup=False) == 0.9999


def test_bf16_mixed_precision(backend, tmp_path):
    """torch computes in bfloat16 under autocast: a different, nearby loss curve. JAX asks for
    bfloat16 matrix products, which XLA's CPU backend ignores: the float32 curve exactly."""
    common = ["run.steps=20", "logging.every=5", "eval.num_samples=50"]
    toy_run(backend, tmp_path / "f32", *common)
    toy_run(backend, tmp_path / "bf16", *common, "run.mixed_precision=bf16")
    f32, bf16 = ([e.value for e in read_events(tmp_path / n).Scalars("train/loss")] for n in ("f32", "bf16"))
    assert np.all(np.isfinite(bf16))
    if backend == "torch":
        assert f32 != bf16
        np.testing.assert_allclose(bf16, f32, rtol=5e-2)
    else:
        import jax

        registry = get_registry()
        config = load_config(CONFIGS / "fm_toy2d.yaml", ["run.mixed_precision=bf16"], registry)
        spec = registry.load("dataset", config.data.name, "jax")(config.data.options).spec
        with registry.load("backend", "jax", "jax")(config, registry, spec).numerics():
            assert jax.config.jax_default_matmul_precision == "bfloat16"  # asked for, in its calls
        assert bf16 == f32


def test_torch_device_option(tmp_path):
    """``auto`` is the CPU on these machines; a device torch cannot use is a clear error."""
    results = toy_run("torch", tmp_path / "cpu", "run.steps=5", "eval.num_samples=50", "backend.torch.device=cpu")
    assert results["step"] == 5
    import torch

    wrong = [("gpu", "expected auto, cpu, cuda or cuda:N")]
    if not torch.cuda.is_available():
        wrong.append(("cuda:0", "torch sees no GPU"))
    for device, message in wrong:
        with pytest.raises(UsageError, match=f"backend.torch.device: got '{device}'.*{message}"):
            toy_run("torch", tmp_path / device, "run.steps=5", f"backend.torch.device={device}")



def test_torch_threads_option(tmp_path, monkeypatch):
    """``backend.torch.threads`` sets torch's CPU threads; ``auto`` follows OMP_NUM_THREADS, else
    the CPUs the process may use; anything else is a clear error."""
    import torch

    from toolkit.backends.torch import TorchOptions
    from toolkit.errors import ConfigError

    before = torch.get_num_threads()
    try:
        toy_run("torch", tmp_path / "one", "run.steps=2", "eval.num_samples=50", "backend.torch.threads=1")
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert TorchOptions().thread_count() == 3
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert TorchOptions().thread_count() == len(os.sched_getaffinity(0))
        for wrong, expected in (("0", "auto or a number of threads >= 1"), ("'many'", "an integer or 'auto'")):
            with pytest.raises(ConfigError, match=f"backend.torch.threads: got {wrong}, expected {expected}"):
                toy_run("torch", tmp_path / "wrong", "run.steps=2", f"backend.torch.threads={wrong.strip(chr(39))}")
    finally:
        torch.set_num_threads(before)


def test_smoke_runs_without_the_data_and_a_missing_file_says_how_to_make_it(backend, tmp_path, capsys):
    from toolkit.cli import main

    missing = tmp_path / "absent.h5"
    common = [str(CONFIGS / "meanflow_digits.yaml"), "--backend", backend, "--no-progress",
              "--set", f"data.path={missing}", "--set", "data.source=null"]
    prepare = f"toolkit data build sklearn:digits --out {missing}"
    assert main(["run", *common, "--out", str(tmp_path / "real"), "--set", f"data.prepare={prepare}"]) == 2
    err = capsys.readouterr().err
    assert f"data.path: {missing} does not exist. Prepare it with:\n    {prepare}\n" in err and "--smoke" in err
    assert main(["run", *common, "--smoke", "--out", str(tmp_path / "smoke"), "--set", "data.shape=[1, 8, 8]",
                 "--set", "data.num_classes=10"]) == 0
    printed = json.loads(capsys.readouterr().out)  # no metric: what was run, and how long it took
    assert {key: printed.pop(key) for key in ("step", "nfe", "weights")} == {"step": 3, "nfe": 1, "weights": "ema 0.999"}
    assert printed.pop("compile_seconds") >= 0  # the first step's time beyond the steady-state one
    assert set(printed) == {"loss", "seconds_per_step", "wall_seconds"} and all(v > 0 for v in printed.values())
    arrays, meta = load_checkpoint(tmp_path / "smoke" / "checkpoints" / "step_00000003.safetensors")
    assert meta["config"]["data"] == {"name": "synthetic", "shape": [1, 8, 8], "num_classes": 10}
    assert meta["config"]["model"]["hidden"] == 512 and meta["config"]["objective"]["ratio"] == 0.75  # the config's own
    assert not missing.exists()


def test_data_shape_and_classes_are_checked_against_the_file(tmp_path):
    from toolkit.plugins.hdf5 import HDF5Options
    from toolkit.plugins.hdf5.dataset import HDF5Dataset
    from toolkit.plugins.hdf5.format import DataError

    path = str(tmp_path / "digits.h5")
    assert HDF5Dataset(HDF5Options(path=path, source="sklearn:digits", shape=(1, 8, 8), num_classes=10)).spec.num_classes == 10
    with pytest.raises(DataError, match=r"holds shape \(1, 8, 8\), but the config's data.shape expects \(4, 32, 32\)"):
        HDF5Dataset(HDF5Options(path=path, shape=(4, 32, 32)))
    with pytest.raises(DataError, match="holds num_classes 10, but the config's data.num_classes expects 1000"):
        HDF5Dataset(HDF5Options(path=path, num_classes=1000))


def test_checkpoints_are_safetensors_files(tmp_path):
    """The writer's file is what safetensors itself reads back, for every dtype a checkpoint
    holds, a 0-d and a column-major array included; an engine's views and copies are the same."""
    import ml_dtypes
    from safetensors import safe_open

    from toolkit.checkpoint import engine_arrays, save_checkpoint

    rng = np.random.default_rng(0)
    arrays = {"model.w": rng.standard_normal((3, 5)).astype(np.float32), "optimizer.step": np.asarray(3.0),
              "b": rng.standard_normal(4).astype(ml_dtypes.bfloat16), "i": np.arange(7), "empty": np.zeros((0, 4)),
              "flags": np.array([True, False]), "t": np.asfortranarray(rng.standard_normal((2, 3)))}
    save_checkpoint(tmp_path / "c.safetensors", arrays, {"step": 3})
    back, metadata = load_checkpoint(tmp_path / "c.safetensors")
    assert metadata == {"step": 3} and sorted(back) == sorted(arrays)
    for name, value in arrays.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape
        np.testing.assert_array_equal(back[name].astype(np.float64), value.astype(np.float64))
    with safe_open(str(tmp_path / "c.safetensors"), framework="numpy") as handle:
        assert sorted(handle.keys()) == sorted(arrays)

    registry = get_registry()
    config = load_config(CONFIGS / "meanflow_toy2d.yaml", ["ema.decays=[0.9, 0.99]"], registry)
    engine = registry.load("backend", "torch", "torch")(config, registry, train_spec(config, registry))
    views, copies = engine_arrays(engine, config, views=True), engine_arrays(engine, config)
    assert {name.split(".layers")[0] for name in views} == {"model", "ema_0.9", "ema_0.99"}  # no AdamW state yet
    assert sorted(views) == sorted(copies) and all(np.array_equal(views[k], copies[k]) for k in copies)
    weight = dict(engine.model.named_parameters())["layers.0.weight"].detach().numpy()
    assert np.shares_memory(views["model.layers.0.weight"], weight)  # views: nothing copied
    assert not np.shares_memory(copies["model.layers.0.weight"], weight)


def test_a_checkpoint_holds_the_engine_bit_for_bit_and_loads_so_in_both_backends(backend, tmp_path):
    """What a run writes (``save_engine_checkpoint``, from the engine's own memory) is every array
    the engine holds, weights, both averages and AdamW's state, bit for bit, and restores bit for
    bit in either backend: a writer that drops, renames or corrupts an array fails here. The write
    reads no copy of the state (the copying methods are made to fail during it)."""
    from toolkit.checkpoint import (checkpoint_metadata, engine_arrays, restore_engine, save_engine_checkpoint)
    from toolkit.plugins.toy2d import Checkerboard, Toy2DOptions

    registry = get_registry()
    dataset = Checkerboard(Toy2DOptions(conditional=True))

    def engine_of(name):
        config = load_config(CONFIGS / "meanflow_toy2d.yaml", ["ema.decays=[0.9, 0.99]"], registry, backend=name)
        return config, registry.load("backend", name, name)(config, registry, dataset.spec)

    config, engine = engine_of(backend)
    rng = np.random.default_rng(0)
    for step in (1, 2):
        batch = next(dataset.batches(32, 0, start=step))
        draws = config.objective.options.draw(rng, 32, step, dataset.spec)
        engine.train_step(batch, draws, 1e-2, rng.standard_normal(batch.x.shape).astype(np.float32))
        engine.update_ema([0.9, 0.99])
    held = engine_arrays(engine, config)

    def copying(*args):
        raise AssertionError("the checkpoint writer copied the engine's state")

    for method in ("state_arrays", "ema_arrays", "optimizer_arrays"):
        setattr(engine, method, copying)
    path = save_engine_checkpoint(tmp_path / "step_00000002.safetensors", engine, config,
                                  checkpoint_metadata(2, backend, config, dataset.spec))
    for method in ("state_arrays", "ema_arrays", "optimizer_arrays"):
        delattr(engine, method)
    engine.train_step(batch, draws, 1e-2, rng.standard_normal(batch.x.shape).astype(np.float32))  # trains on after it

    def same(written, wanted):  # names, dtypes and bytes; shapes by size (a conv bias differs by backend)
        assert sorted(written) == sorted(wanted)
        for name, value in wanted.items():
            assert written[name].dtype == value.dtype and written[name].size == value.size, name
            assert written[name].tobytes() == value.tobytes(), name

    arrays, metadata = load_checkpoint(path)
    assert metadata["step"] == 2 and any(name.startswith("optimizer.nu.") for name in arrays)
    same(arrays, held)
    for target in ("torch", "jax"):
        target_config, fresh = engine_of(target)
        restore_engine(fresh, target_config, arrays, path, target)
        same(engine_arrays(fresh, target_config), held)


def train_spec(config, registry):
    from toolkit.train import data_spec

    return data_spec(config, registry, "torch")
