"""The built-in components. Each sub-package is a plugin registered through the
``toolkit`` entry-point group, exactly as a third-party package would register one:
``__init__.py`` holds the hook and the backend-agnostic options; an objective's loss is
``objective.py``, written once against the op table (:mod:`toolkit.ops`); a backbone has
``torch.py`` and ``jax.py``, imported only when that backend runs."""
