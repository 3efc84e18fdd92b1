"""A study file and the grid of runs it describes.

A study is a base run config, settings shared by every run, named variants (each a mapping of
dotted keys, like ``--set``), seeds and training lengths::

    name: meanflow_vs_fm
    question: Does MeanFlow at 1 NFE reach what flow matching needs many steps for?
    config: ../meanflow_digits.yaml       # relative to this file
    set: {eval.nfe: [1, 2, 4], eval.every: 500}
    variants:
      meanflow: {}
      flow_matching: {objective: {name: flow_matching}, sampler: {name: euler}}
    seeds: [0, 1, 2]

A study can repeat another on other data or settings: ``extends: meanflow_vs_fm.yaml`` (relative
to this file) takes that study's keys, and every key this file gives replaces the inherited one
whole (``config``, ``set``, ``variants``, ...).

Every cell of variants x training lengths x seeds is an ordinary run directory, validated like
any run file before anything trains; errors name the study file and the key that set a value.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import attrs

from toolkit.config import Config, InvalidValue, check, config_from_dict, positive, read_yaml, set_keys
from toolkit.errors import ConfigError, UsageError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_name_like = check(lambda v: bool(_NAME.match(v)), "a name of letters, digits and _ . + - (a folder name)")


def _settings(instance, attribute, value):
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and k for k in value):
        raise InvalidValue(attribute.name, value, "a mapping of dotted config keys to values")


def _variants(instance, attribute, value):
    if not isinstance(value, Mapping) or not value:
        raise InvalidValue(attribute.name, value, "a non-empty mapping of variant names to settings")
    for name, settings in value.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidValue(f"{attribute.name}.{name}", name, "a name of letters, digits and _ . + -")
        if settings is not None and not isinstance(settings, Mapping):
            raise InvalidValue(f"{attribute.name}.{name}", settings, "a mapping of dotted config keys to values")


def _distinct(instance, attribute, value):
    if len(set(value)) != len(value):
        raise InvalidValue(attribute.name, value, "distinct values")


@attrs.frozen
class Study:
    """The schema of a study file (see the module docstring)."""

    name: str = attrs.field(validator=_name_like)
    #: the base run config, a path relative to the study file
    config: str
    variants: dict = attrs.field(validator=_variants)
    #: what the study answers, one or two sentences (the report's first line)
    question: str = ""
    #: settings of every cell, applied before each variant's own
    set: dict = attrs.field(factory=dict, validator=_settings)
    seeds: tuple[int, ...] = attrs.field(default=(0, 1, 2), validator=[
        check(lambda v: len(v) > 0 and all(s >= 0 for s in v), "one or more seeds >= 0"), _distinct])
    #: training lengths (``run.steps``); empty: the config's own
    steps: tuple[int, ...] = attrs.field(default=(), validator=[
        check(lambda v: all(s > 0 for s in v), "positive numbers of steps"), _distinct])
    #: a variant whose final quality the others race to: the report gives each variant the first
    #: measured step at which its mean over seeds is as good (needs ``eval.every``)
    reference: str | None = None
    #: how close counts as reaching the reference: within this fraction of its final mean (0: as
    #: good or better), since curves that have levelled off cross a noisy final value late or never
    tolerance: float = attrs.field(default=0.0, validator=check(lambda v: 0.0 <= v < 1.0, "a value in [0, 1)"))
    #: pictures of samples side by side: up to this many NFE of ``eval.nfe`` (shared by all variants)
    picture_nfe: int = attrs.field(default=3, validator=positive)

    def __attrs_post_init__(self):
        if self.reference is not None and self.reference not in self.variants:
            raise InvalidValue("reference", self.reference, f"one of the variants: {', '.join(self.variants)}")


@attrs.frozen
class Cell:
    """One run of a study: a variant at one training length and seed."""

    variant: str
    steps: int
    seed: int
    config: Config
    out_dir: Path

    @property
    def label(self) -> str:
        return f"{self.variant} ({self.steps} steps, seed {self.seed})"

    def stored_config(self) -> dict | None:
        """The config this cell's directory was run with (its run.json), if any."""
        try:
            return json.loads((self.out_dir / "run.json").read_text())["config"]
        except (OSError, ValueError, KeyError):
            return None


def load_study(path: str | Path, registry=None) -> Study:
    """Read and validate a study file (its cells' configs: :func:`study_cells`)."""
    path = Path(path)
    study = config_from_dict(_study_data(path, ()), str(path), registry=registry, cls=Study)
    return attrs.evolve(study, variants={name: dict(settings or {}) for name, settings in study.variants.items()})


def _study_data(path: Path, extending: tuple[Path, ...]) -> dict:
    """The keys of the study file at ``path`` with those of the studies it ``extends``; an
    inherited ``config`` is rewritten relative to ``path``."""
    data = read_yaml(path, "study file")
    if not isinstance(data, Mapping):
        raise ConfigError(str(path), "", f"expected a mapping of study keys, got {type(data).__name__}")
    data = dict(data)
    parent_name = data.pop("extends", None)
    if parent_name is None:
        return data
    if not isinstance(parent_name, str) or not parent_name:
        raise ConfigError(str(path), "extends", f"got {parent_name!r}, expected the path of a study file")
    parent_path = (path.parent / parent_name).resolve()
    visited = (*extending, path.resolve())
    if parent_path in visited:
        chain = " -> ".join(str(p) for p in (*visited, parent_path))
        raise ConfigError(str(path), "extends", f"studies extend each other in a circle: {chain}")
    if not parent_path.is_file():
        raise ConfigError(str(path), "extends", f"{parent_name!r} is not a file (looked for {parent_path})")
    inherited = _study_data(parent_path, visited)
    if "config" in inherited and "config" not in data and isinstance(inherited["config"], str):
        inherited["config"] = os.path.relpath(parent_path.parent / inherited["config"], path.parent)
    return {**inherited, **data}


def study_cells(study: Study, study_path: str | Path, backend: str, registry, out_root: Path,
                settings: Sequence[str] = (), variants: Sequence[str] = ()) -> list[Cell]:
    """Every cell of the study, each config validated (any error stops the study before it
    starts). ``settings``: ``KEY=VALUE`` run settings applied to every cell, after the study's
    own (``toolkit study --set``); ``variants``: only these (default: all)."""
    study_path = Path(study_path)
    unknown = [v for v in variants if v not in study.variants]
    if unknown:
        raise UsageError(f"--variants: {', '.join(unknown)} not in {study_path} (its variants: "
                         f"{', '.join(study.variants)})")
    base_path = (study_path.parent / study.config).resolve()
    if not base_path.is_file():
        raise ConfigError(str(study_path), "config", f"{study.config!r} is not a file (looked for {base_path})")
    base = read_yaml(base_path)
    if not isinstance(base, Mapping):
        raise ConfigError(str(base_path), "", f"expected a mapping of sections, got {type(base).__name__}")
    cells = []
    for variant, own in study.variants.items():
        if variants and variant not in variants:
            continue
        origins = {**{key: f"{study_path}: set" for key in study.set},
                   **{key: f"{study_path}: variants.{variant}" for key in own}}
        data = set_keys(set_keys(base, study.set, f"{study_path}: set"), own, f"{study_path}: variants.{variant}")
        for steps in study.steps or (None,):
            for seed in study.seeds:
                fixed = {"run.seed": seed, "run.name": f"{study.name}-{variant}-seed{seed}",
                         **({"run.steps": steps} if steps is not None else {})}
                cell_data = set_keys(data, fixed, str(study_path))
                config = config_from_dict(cell_data, str(base_path), settings, registry, backend,
                                          origins={**origins, **{key: f"{study_path}: seeds, steps" for key in fixed}})
                folder = out_root / variant / f"{steps}steps" if study.steps else out_root / variant
                cells.append(Cell(variant, config.run.steps, seed, config, folder / f"seed{seed}"))
    metrics = {c.config.eval.metric.name if c.config.eval.metric else None for c in cells}
    if None in metrics or len(metrics) != 1:
        raise ConfigError(str(study_path), "set.eval.metric",
                          f"a study compares one metric; its cells measure {sorted(map(str, metrics))} "
                          f"(set eval.metric in the base config or the study's set)")
    return cells
