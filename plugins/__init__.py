"""The built-in components. Each sub-package is a plugin registered through the
``toolkit`` entry-point group, exactly as a third-party package would register one:
``__init__.py`` holds the hook and the backend-agnostic options, ``torch.py`` and
``jax.py`` the per-backend implementations, imported only when that backend runs."""
