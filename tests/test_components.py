"""The shared checks of toolkit.testing on every built-in component, in every backend, on every
example the component registers. A newly registered component is covered without new test code."""

from toolkit.testing import ComponentChecks


class TestBuiltinComponents(ComponentChecks):
    distribution = "meanflow-toolkit"
