"""Shared fixtures: the backend parametrisation and throw-away plugin distributions."""

from __future__ import annotations

import os

# `make test` runs the suite in one pytest-xdist worker per core. torch computes on the worker's
# share of the cores: two workers of two OpenMP threads each on two cores would fight for them
# (OpenMP threads spin while they wait). Set before torch is imported, as it reads it then.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, _threads)

# XLA compiles at LLVM's lowest optimisation level in the tests: compiling is most of JAX's time
# here, and level 0 took a quarter off the compile-bound tests (tests/test_parity.py,
# test_backbones.py, test_unet.py: 120 s -> 90 s) for a quarter more on the few long training
# runs. The float32 parity tests run again at XLA's default level (3), in the instruction-set run
# of tests/test_parity_harness.py (it sets XLA_FLAGS itself).
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

import importlib
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from toolkit.registry import Registry, reset_registry

REPO = Path(__file__).resolve().parents[1]

# The ``backend`` fixture (every test that takes it runs once per registered backend, and fails
# when a framework is missing) and ComponentChecks come from the toolkit's pytest plugin, which a
# project turns on for itself, as this suite does:
pytest_plugins = ["toolkit.testing"]

XLA_CACHE = pytest.StashKey[Path]()


def pytest_configure(config):
    """XLA programs go to one compilation cache on disk for the length of the run, shared by the
    pytest-xdist workers and every process the tests start (through JAX's environment
    variables), so a program compiled once (the same config's step, the same eager operation on
    the same shape) is read back instead of compiled again: engines are rebuilt in almost every
    test, and compilation is most of JAX's time here (a float32 parity run of a paper config:
    51 s with an empty cache, 28 s with the programs of an earlier one). Every program is kept,
    however fast it compiled. No size limit: with one, JAX locks the folder and lists every entry
    at each write, which made eager-heavy tests twice as slow. Without the lock, a process may
    read an entry that another is still writing; JAX then warns and compiles the program itself.
    The key covers the XLA flags, so a process on other flags (the instruction-set run of the
    parity tests) compiles its own."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:  # the run's first process: its owner
        cache = tempfile.mkdtemp(prefix="toolkit-tests-xla-cache-")
        config.stash[XLA_CACHE] = Path(cache)
        os.environ.update({"JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"})
    if "jax" in sys.modules:  # JAX reads its environment once, at import
        import jax

        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def pytest_unconfigure(config):
    if XLA_CACHE in config.stash:
        shutil.rmtree(config.stash[XLA_CACHE], ignore_errors=True)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module. Every XLA CPU executable keeps
    memory mappings of its code. Without this, one process compiling the whole suite's programs
    held about 26,000 mappings a third of the way through, on course for Linux's limit of 65,530
    per process (vm.max_map_count), and later crashed with a segmentation fault inside XLA's
    compiler; with it, the count sampled every 20 s peaked at 18,760 and the suite passed."""
    yield
    if "jax" in sys.modules:
        import gc

        sys.modules["jax"].clear_caches()
        gc.collect()


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch):
    monkeypatch.delenv("TOOLKIT_PLUGINS", raising=False)
    monkeypatch.delenv("TOOLKIT_DISABLE_PLUGINS", raising=False)
    reset_registry()
    yield
    reset_registry()


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """Install a plugin as a real distribution with a ``toolkit`` entry point.

    ``install_plugin("dist-name", "entry_name", source)`` writes ``source`` as a module and a
    ``.dist-info`` folder declaring the entry point, on a fresh ``sys.path`` entry; the
    import machinery and ``importlib.metadata`` then see it exactly as after ``pip install``.
    Returns the folder, for ``PYTHONPATH`` in subprocess tests.
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def install(distribution: str, entry_name: str, source: str, version: str = "0.1", module: str = "") -> Path:
        module = module or f"{entry_name}_plugin_module"
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"{distribution.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[toolkit]\n{entry_name} = {module}\n")
        importlib.invalidate_caches()
        sys.modules.pop(module, None)
        return site

    yield install
    importlib.invalidate_caches()


@pytest.fixture
def registry() -> Registry:
    return Registry.from_entry_points()


@pytest.fixture(scope="session")
def inception_files(tmp_path_factory):
    """A randomly initialised InceptionV3 (He-normal convolutions, so activations stay O(1) through
    the depth), saved as safetensors and as a torch state_dict."""
    import torch
    from safetensors.torch import save_file

    from toolkit.plugins.inception.network import InceptionV3

    torch.manual_seed(0)
    network = InceptionV3()
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    state = network.state_dict()
    folder = tmp_path_factory.mktemp("inception")
    save_file(state, str(folder / "inception.safetensors"))
    torch.save(state, folder / "inception.pth")
    return folder / "inception.safetensors", folder / "inception.pth", state
