"""The shared checks of data sets: every built-in that needs no file passes them, and they catch
a held-out split that is the training stream, a stream that is not a function of (seed, i), and
labels outside the spec (each a plugin written as a third party would)."""

from __future__ import annotations

from test_pytest_plugin import run_checks_of
from toolkit.testing import ComponentChecks


class TestBuiltInDatasets(ComponentChecks):
    components = ["dataset synthetic", "dataset gaussian", "dataset moons", "dataset checkerboard",
                  "dataset eight_gaussians"]


FAULTY = """
    import itertools

    import numpy as np

    from toolkit.api import Batch, DataSpec, hookimpl


    class Faulty:
        def __init__(self, options):
            self.spec = DataSpec((2,), 3)
            self.draws = 0

        def _batch(self, rng, n):
            return Batch(rng.standard_normal((n, 2)), rng.integers(0, 3, n))

        def batches(self, batch_size, seed, start=0):
            for i in itertools.count(start):
                yield self._batch(np.random.default_rng([seed, i]), batch_size)

        def reference(self, n, seed):
            return self._batch(np.random.default_rng([seed, 99]), n)


    class Leaky(Faulty):  # the held-out examples are the first training batch
        def reference(self, n, seed):
            return next(self.batches(n, seed))


    class Drifting(Faulty):  # batch i depends on how many batches this object made before
        def batches(self, batch_size, seed, start=0):
            rng = np.random.default_rng(seed)
            while True:
                yield self._batch(rng, batch_size)


    class OutOfRange(Faulty):  # labels 0..3 for a spec with 3 classes
        def _batch(self, rng, n):
            return Batch(rng.standard_normal((n, 2)), rng.integers(0, 4, n))


    @hookimpl
    def register_datasets(register):
        for cls in (Faulty, Leaky, Drifting, OutOfRange):
            register(cls.__name__.lower(), {"*": cls})
"""
def test_the_dataset_checks_catch_a_leak_a_drift_and_bad_labels(install_plugin, tmp_path):
    result, failed = run_checks_of(install_plugin, tmp_path, "toolkit-faulty", FAULTY,
                                   ["dataset faulty", "dataset leaky", "dataset drifting", "dataset outofrange"])
    assert failed == ["test_dataset_batch_i_depends_on_the_seed_and_i_only[dataset-drifting-1]",
                      "test_dataset_batches_follow_the_spec[dataset-outofrange-1]",
                      "test_dataset_held_out_examples_are_not_training_examples[dataset-leaky-1]"], result.stdout
    assert "64 of 64 held-out examples are in the training stream" in result.stdout
