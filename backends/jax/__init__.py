"""The JAX/Equinox backend (plugin). Importing this package does not import jax."""

from toolkit.hookspecs import hookimpl


@hookimpl
def register_backends(register):
    register("jax", {"jax": "toolkit.backends.jax.engine:JaxEngine"},
             summary="JAX/Equinox engine (jit-compiled step, optax)")
