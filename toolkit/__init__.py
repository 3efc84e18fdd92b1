"""meanflow-toolkit: few-step generative modelling (flow matching and the MeanFlow family)
with interchangeable PyTorch and JAX/Equinox backends, extended through pluggy plugins.

The core (this package, minus ``toolkit.backends`` and ``toolkit.plugins``) imports no
framework. See ``toolkit.hookspecs`` for the plugin contract and ``toolkit.interfaces``
for what each component provides.
"""

from toolkit.hookspecs import hookimpl

__all__ = ["hookimpl"]
