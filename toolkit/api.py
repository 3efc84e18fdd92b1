"""The public API: everything a plugin package needs, importable from here alone.

A plugin imports from ``toolkit.api`` (and its tests from ``toolkit.testing``, the pytest
plugin with the shared checks); every other module of the toolkit is internal and may change
in any release. Names here change only with :data:`API_VERSION`: a new name raises the minor
version, a removed or changed one the major version.

* Registration: ``hookimpl`` (pluggy's marker) marks a plugin's ``register_<kind>s(register)`` hooks
  (:mod:`toolkit.hookspecs` documents them).
* What each kind of component provides: :class:`Objective`, :class:`Backbone`,
  :class:`Sampler`, :class:`Schedule`, :class:`Dataset`, :class:`Metric`, and the data they
  exchange, :class:`DataSpec` and :class:`Batch`.
* Objectives are written once against :class:`Ops`, the op table a backend hands to the
  objective's constructor; :func:`backend_ops` gives a backend's table by name.
* The MeanFlow family's draws: :class:`AverageVelocityOptions` (the (t, r) pairs, the adaptive
  weight, label dropout) and its parts; :class:`TimeDistribution`; :func:`time_grid` for
  few-step samplers; :func:`dropout_arguments` for networks with seeded dropout (the seeds
  are ``draws[DROPOUT_SEED]``). A sampler calls the network as a :data:`ModelFn`.
* Options are attrs classes; the validators below make their errors name the key and what was
  expected (``objective.ratio: got 2, expected a value in [0, 1]``): :func:`check` builds one,
  :class:`InvalidValue` is what one raises, :class:`UsageError` is any other mistake of the
  user's, shown without a traceback.
"""

from __future__ import annotations

from toolkit.config import InvalidValue, at_least, at_most, check, config_from_dict, non_negative, positive, probability
from toolkit.draws import AverageVelocityOptions, averaged_count, draw_time_pairs, null_label_rows
from toolkit.dropout import DROPOUT_SEED, dropout_arguments
from toolkit.errors import ConfigError, ToolkitError, UsageError
from toolkit.hookspecs import hookimpl
from toolkit.interfaces import Backbone, Batch, Dataset, DataSpec, Metric, ModelFn, Objective, Sampler, Schedule
from toolkit.ops import Ops, backend_ops
from toolkit.registry import Registry, get_registry
from toolkit.timesteps import TimeDistribution, time_grid

API_VERSION = (1, 0)
"""(major, minor): a new name raises the minor version, a removed or changed one the major."""

__all__ = [
    "API_VERSION", "AverageVelocityOptions", "Backbone", "Batch", "ConfigError", "DROPOUT_SEED", "DataSpec",
    "Dataset", "InvalidValue", "Metric", "ModelFn", "Objective", "Ops", "Registry", "Sampler", "Schedule",
    "TimeDistribution", "ToolkitError", "UsageError", "at_least", "at_most", "averaged_count", "backend_ops",
    "check", "config_from_dict", "draw_time_pairs", "dropout_arguments", "get_registry", "hookimpl",
    "non_negative", "null_label_rows", "positive", "probability", "time_grid",
]
