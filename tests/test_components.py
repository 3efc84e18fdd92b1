"""The shared checks of toolkit.testing on every built-in component, in every backend, on every
example the component registers. A newly registered component is covered without new test code."""

from toolkit.testing import ComponentChecks


class TestBuiltinComponents(ComponentChecks):
    distribution = "meanflow-toolkit"
    # an HDF5 data set needs a file, which a registered example (a config) cannot bring:
    # tests/test_hdf5.py tests it on files it writes (the stream's purity, the held-out split)
    exclude = ["dataset hdf5"]
