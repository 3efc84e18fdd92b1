"""Every hook a plugin can implement. This module is the plugin contract.

A plugin is a module (or any object) with functions decorated by :data:`hookimpl`
(``toolkit.api.hookimpl``),
made known through the ``toolkit`` entry-point group::

    # pyproject.toml of a third-party package
    [project.entry-points.toolkit]
    my_objective = "my_package.plugin"

The built-in components are registered in exactly this way (see this project's
``pyproject.toml``).

Each ``register_<kind>s`` hook receives a ``register`` callback with the signature::

    register(name: str,
             implementations: Mapping[str, str | object],
             *,
             options: type | None = None,
             summary: str = "",
             examples: Sequence[Mapping] = ()) -> None

``name``
    The registry name that configs use (``objective: {name: flow_matching}``).
    Unique per kind across all plugins; a clash is reported naming both plugins.
``implementations``
    Backend name -> implementation, either the object itself or a lazy
    ``"package.module:attribute"`` string (so that listing plugins imports no
    framework). The key ``"*"`` marks a backend-agnostic implementation (NumPy,
    arithmetic that works on any backend's arrays, or an objective written against the op
    table it is built with, :class:`toolkit.ops.Ops`).
``options``
    An attrs class holding the component's own hyper-parameters, with defaults. The
    keys of the config section other than ``name`` are validated against it.
``summary``
    One line for ``toolkit plugins``.
``examples``
    Small partial run configs (YAML-shaped mappings of sections) that exercise the
    component quickly, e.g. a DiT of depth 2 on 8x8 images::

        examples=[{"model": {"depth": 2, "width": 32, "heads": 4},
                   "data": {"name": "synthetic", "shape": [4, 8, 8], "num_classes": 8}}]

    The component's own section (``model`` for a backbone, ``objective``, ``sampler``,
    ``schedule``) gets its ``name`` filled in; the other sections complete the small
    base run of :data:`toolkit.parity.BASE_CONFIG`. ``toolkit parity --all`` and the
    shared test suite (:mod:`toolkit.testing`) run every example in every backend the
    component claims. No examples: one run with the component's default options.

What each implementation must provide is written in :mod:`toolkit.interfaces`.
"""

from __future__ import annotations

from typing import Callable

import pluggy

PROJECT = "toolkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., None]


@hookspec
def register_objectives(register: Register) -> None:
    """Register training objectives (kind ``objective``; see :class:`toolkit.interfaces.Objective`)."""


@hookspec
def register_backbones(register: Register) -> None:
    """Register networks ``u(x, t, r, y, conditions)`` (kind ``backbone``; see :class:`toolkit.interfaces.Backbone`)."""


@hookspec
def register_samplers(register: Register) -> None:
    """Register samplers that map noise at t=1 to data at t=0 (kind ``sampler``)."""


@hookspec
def register_schedules(register: Register) -> None:
    """Register training-step schedules over the (r, t) draws (kind ``schedule``)."""


@hookspec
def register_backends(register: Register) -> None:
    """Register array backends with their training engine (kind ``backend``)."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register datasets yielding NumPy batches (kind ``dataset``)."""


@hookspec
def register_metrics(register: Register) -> None:
    """Register sample-quality metrics (kind ``metric``)."""


@hookspec
def register_commands(cli) -> None:
    """Add sub-commands to the ``toolkit`` command line.

    ``cli`` is the root :class:`click.Group`; decorate new commands with
    ``@cli.command()``. A command under a name that is taken (a built-in command, or one
    an earlier plugin added) is refused with a warning, and the original kept.
    """


#: kind name -> the hook that registers components of that kind.
KIND_HOOKS = {
    "objective": "register_objectives",
    "backbone": "register_backbones",
    "sampler": "register_samplers",
    "schedule": "register_schedules",
    "backend": "register_backends",
    "dataset": "register_datasets",
    "metric": "register_metrics",
}
KINDS = tuple(KIND_HOOKS)
