"""Moving NumPy arrays in and out of a backend, for tests written once for both."""

from __future__ import annotations

import numpy as np

from toolkit.testing import float64, to_backend, to_numpy  # noqa: F401  (re-exported for the tests)


def namespace(backend: str):
    if backend == "torch":
        import torch

        return torch
    import jax.numpy as jnp

    return jnp


def exact_model(backend: str, mean: float, std: float):
    """The exact average-velocity field of N(mean, std^2 I) data, as a backbone of ``backend``
    (batched for torch, one example for jax)."""
    from toolkit.plugins.toy2d import exact_average_velocity

    xp = namespace(backend)

    def model(x, t, r, y=None):
        if backend == "torch":
            t, r = t[:, None], r[:, None]
        return exact_average_velocity(x, t, r, mean, std, xp)

    return model


def build_backbone(backend: str, name: str, options, spec, seed: int = 0):
    from toolkit.registry import get_registry

    cls = get_registry().load("backbone", name, backend)
    if backend == "torch":
        import torch

        torch.manual_seed(seed)
        return cls(options, spec).double()
    import equinox as eqx
    import jax

    model = cls(options, spec, key=jax.random.PRNGKey(seed))
    return jax.tree_util.tree_map(lambda a: a.astype("float64") if eqx.is_inexact_array(a) else a, model)


def call_backbone(backend: str, model, x, t, r, y=None):
    if backend == "torch":
        return model(x, t, r, y)
    import jax

    return jax.vmap(model)(x, t, r, y)


def perturbed(backend: str, model, scale: float = 0.1, seed: int = 0):
    """The model with noise added to every weight (so zero-initialised layers take part)."""
    if backend == "torch":
        import torch

        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
        return model
    import equinox as eqx
    import jax

    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    noisy = [leaf + scale * jax.random.normal(k, leaf.shape, leaf.dtype) for leaf, k in zip(leaves, keys)]
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, noisy), static)
