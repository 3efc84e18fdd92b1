"""The schema of a run, YAML loading, ``--set`` overrides and validation.

A run file is YAML with one mapping per section. Sections that choose a component
(``data``, ``model``, ``objective``, ``sampler``, ``schedule``, ``eval.metric``) take a
``name`` key naming a registered component; their other keys are that component's own
options and are validated by the component's attrs options class::

    objective:
      name: flow_matching
      time: {distribution: logit_normal, mu: -0.4, sigma: 1.0}

Every value is checked before any work starts; an error names the file (or the
``--set`` that supplied the value), the dotted key, the value and what was expected.
"""

from __future__ import annotations

import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import attrs
import yaml

from toolkit.errors import ConfigError, UnknownComponentError, did_you_mean
from toolkit.interfaces import DataSpec

# -- validators: each names what it expects, so errors can say it -----------------------------


class InvalidValue(ValueError):
    def __init__(self, name: str, value: Any, expected: str):
        super().__init__(f"{name}: got {value!r}, expected {expected}")
        self.name, self.value, self.expected = name, value, expected


def check(predicate, expected: str):
    """An attrs validator that raises :class:`InvalidValue` with ``expected`` (None passes)."""

    def validator(instance, attribute, value):
        if value is not None and not predicate(value):
            raise InvalidValue(attribute.name, value, expected)

    return validator


positive = check(lambda v: v > 0, "a value > 0")
non_negative = check(lambda v: v >= 0, "a value >= 0")
probability = check(lambda v: 0.0 <= v <= 1.0, "a value in [0, 1]")
unit_open = check(lambda v: all(0.0 <= b < 1.0 for b in v), "values in [0, 1)")
dropout_rate = check(lambda v: 0.0 <= v < 1.0, "a dropout rate in [0, 1)")


def at_least(bound: float):
    return check(lambda v: v >= bound, f"a value >= {bound}")


# -- the run schema ----------------------------------------------------------------------------


@attrs.frozen
class Choice:
    """A section that names a registered component, with that component's validated options."""

    name: str
    options: Any = None


def component(kind: str, *, default: Any = attrs.NOTHING, optional: bool = False):
    """A config field naming a component of ``kind``."""
    return attrs.field(default=None if optional and default is attrs.NOTHING else default,
                       metadata={"kind": kind})


@attrs.frozen
class RunSection:
    """Identity, length and numerics of a run."""

    name: str = "run"
    seed: int = attrs.field(default=0, validator=non_negative)
    steps: int = attrs.field(default=1000, validator=positive)
    batch_size: int = attrs.field(default=256, validator=positive)
    dtype: Literal["float32", "float64"] = "float32"
    #: float32 matrix products: ``highest`` is true float32 everywhere; ``high`` lets GPUs use
    #: TF32 (torch) / reduced-precision passes (JAX), faster but 1e-3-level different, so
    #: backends no longer agree to float32 tolerance. Both frameworks' own defaults differ.
    matmul_precision: Literal["highest", "high"] = "highest"
    #: ``bf16``: bfloat16 compute with float32 weights and optimiser state (torch: autocast
    #: on the CPU and GPUs; JAX: bfloat16 matrix products on GPUs/TPUs, a no-op on the CPU).
    #: Needs ``dtype: float32``. Backends then agree to about 1e-2, not to float32 tolerance.
    mixed_precision: Literal["no", "bf16"] = attrs.field(default="no")

    @mixed_precision.validator
    def _float32_weights(self, attribute, value):
        if value == "bf16" and self.dtype != "float32":
            raise InvalidValue(attribute.name, value, f"'no' with dtype {self.dtype} (bf16 keeps float32 weights)")
    out_dir: str | None = None


@attrs.frozen
class OptimizerSection:
    """AdamW with every hyper-parameter explicit (torch and optax defaults differ)."""

    lr: float = attrs.field(default=1e-4, validator=positive)
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.999), validator=unit_open)
    eps: float = attrs.field(default=1e-8, validator=positive)
    weight_decay: float = attrs.field(default=0.0, validator=non_negative)
    warmup_steps: int = attrs.field(default=0, validator=non_negative)
    decay: Literal["constant", "cosine"] = "constant"
    grad_clip: float | None = attrs.field(default=None, validator=positive)


def ema_decay(decay: float, step: int, warmup: bool) -> float:
    """The decay applied after optimiser step ``step`` (from 1). With ``warmup`` it is
    ``min(decay, (1 + step) / (10 + step))``, so the average forgets the random initialisation
    within a short run instead of after ~1 / (1 - decay) steps."""
    return min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


@attrs.frozen
class EmaSection:
    """Exponential moving averages of the weights, one per decay; evaluation and sampling use
    the first (``eval.weights``) and every checkpoint stores all of them."""

    decays: tuple[float, ...] = attrs.field(default=(), validator=unit_open)
    warmup: bool = True

    @decays.validator
    def _distinct(self, attribute, value):
        if len(set(value)) != len(value):
            raise InvalidValue(attribute.name, value, "distinct decays")


@attrs.frozen
class LoggingSection:
    every: int = attrs.field(default=50, validator=positive)
    progress: bool = True
    #: log pictures of samples (TensorBoard ``samples/<nfe>_nfe``) every this many steps; None: never
    samples_every: int | None = attrs.field(default=None, validator=positive)
    #: the numbers of network evaluations those pictures are sampled with
    sample_nfe: tuple[int, ...] = attrs.field(default=(1, 2), validator=check(lambda v: all(n > 0 for n in v),
                                                                              "positive numbers"))


@attrs.frozen
class CheckpointSection:
    #: steps between checkpoints, and one at the last step; null: none at all (a throw-away run,
    #: which cannot be resumed)
    every: int | None = attrs.field(default=1000, validator=positive)
    keep: int = attrs.field(default=3, validator=positive)


@attrs.frozen
class EvalSection:
    """What is measured when training ends."""

    metric: Choice | None = component("metric", optional=True)
    num_samples: int = attrs.field(default=2000, validator=positive)
    #: ``ema``: the average of the first of ``ema.decays`` (the raw weights when there is none);
    #: ``model``: the raw weights; a number: the average with that decay.
    weights: str | float = attrs.field(default="ema", validator=check(
        lambda v: v in ("ema", "model") or isinstance(v, float), "ema, model, or one of ema.decays"))
    #: samples drawn (and decoded, and fed to the metric) at a time
    batch_size: int = attrs.field(default=250, validator=positive)
    #: also measure the two anchors, the noise itself and as many training examples (each costs
    #: as much as the samples' measurement: off for 50,000-sample FIDs)
    anchors: bool = True
    #: numbers of network evaluations to measure besides the sampler's own (metrics.json and
    #: TensorBoard ``eval/<metric>_<n>nfe``); the sampler's ``nfe`` is always measured
    nfe: tuple[int, ...] = attrs.field(default=(), validator=check(lambda v: all(n > 0 for n in v),
                                                                   "positive numbers"))
    #: also measure during training, every this many steps (the curve of the metric against the
    #: step; no anchors); None: once, when training ends
    every: int | None = attrs.field(default=None, validator=positive)


@attrs.frozen
class Config:
    """A whole run. ``toolkit config show`` prints it resolved."""

    data: Choice = component("dataset")
    model: Choice = component("backbone")
    objective: Choice = component("objective")
    sampler: Choice = component("sampler")
    schedule: Choice | None = component("schedule", optional=True)
    run: RunSection = RunSection()
    optimizer: OptimizerSection = OptimizerSection()
    ema: EmaSection = EmaSection()
    logging: LoggingSection = LoggingSection()
    checkpoint: CheckpointSection = CheckpointSection()
    eval: EvalSection = EvalSection()
    #: per-backend engine options, keyed by backend name, e.g. ``{torch: {compile: true}}``.
    backend: dict = attrs.field(factory=dict, metadata={"options_of": "backend"})

    def backend_options(self, name: str, default: Any = None) -> Any:
        """The options given for backend ``name``, else ``default``."""
        return self.backend.get(name, default)

    def network_spec(self, data: DataSpec) -> DataSpec:
        """The spec the network is built with: the data's, with the extra inputs the objective
        conditions it on (``conditions`` of its options, if any)."""
        conditions = tuple(getattr(self.objective.options, "conditions", ()))
        if len(set(conditions)) != len(conditions) or not all(isinstance(c, str) and c for c in conditions):
            raise ConfigError(f"objective {self.objective.name!r} declares conditions {conditions!r}; "
                              f"expected distinct non-empty names")
        return attrs.evolve(data, conditions=conditions)


# -- loading -----------------------------------------------------------------------------------


def load_config(path: str | Path, overrides: Sequence[str] = (), registry=None,
                backend: str | None = None) -> Config:
    """Read, override and validate a run file. ``backend`` checks every component supports it."""
    return config_from_dict(read_yaml(path), str(path), overrides, registry, backend)


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """The data of a YAML file (an empty file is an empty mapping); errors name the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(str(path), "", f"no such {what}") from None
    except OSError as error:
        raise ConfigError(str(path), "", f"cannot read: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(str(path), "", f"not valid YAML: {error}") from None
    return {} if data is None else data


def config_from_dict(data: Any, source: str = "<config>", overrides: Sequence[str] = (),
                     registry=None, backend: str | None = None, cls: type = Config,
                     origins: Mapping[str, str] | None = None) -> Any:
    """Validate plain data as ``cls``. ``origins`` names where dotted keys were set when that is
    not ``source`` (errors under such a key name it); ``--set`` style ``overrides`` come last."""
    if not isinstance(data, Mapping):
        raise ConfigError(source, "", f"expected a mapping of sections, got {_describe(data)}")
    data = _apply_overrides(dict(data), overrides)
    if registry is None:
        from toolkit.registry import get_registry
        registry = get_registry()
    where = {**(origins or {}), **{key: f"--set {key}={raw}" for key, raw in _split(overrides)}}
    context = _Context(source, where, registry, backend)
    return _structure(cls, data, context, "")


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=1e-3"`` -> ``("a.b", "1e-3")``; values are parsed as YAML, so types follow."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", text, "expected KEY=VALUE with a dotted key, e.g. optimizer.lr=1e-4")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def _split(overrides: Sequence[str]) -> list[tuple[str, str]]:
    return [(parse_override(o)[0], o.partition("=")[2]) for o in overrides]


def _apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    for text in overrides:
        data = set_keys(data, dict([parse_override(text)]), f"--set {text}")
    return data


def set_keys(data: Mapping, settings: Mapping[str, Any], origin: str) -> dict:
    """A copy of ``data`` with each dotted key of ``settings`` set to its value (a mapping set at a
    section's key replaces the whole section). ``origin`` names the settings in errors."""
    data = dict(data)
    for key, value in settings.items():
        node, parts = data, str(key).split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, Mapping):
                raise ConfigError(origin, ".".join(parts[:depth + 1]),
                                  f"is {_describe(child)}, not a section; cannot set {key}")
            node[part] = child = dict(child)
            node = child
        node[parts[-1]] = value
    return data


@attrs.define
class _Context:
    source: str
    overridden: dict[str, str]
    registry: Any
    backend: str | None

    def where(self, key: str) -> str:
        for candidate, origin in self.overridden.items():
            if key == candidate or key.startswith(candidate + "."):
                return origin
        return self.source

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.where(key), key, message)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _structure(cls: type, data: Any, ctx: _Context, prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ctx.error(prefix, f"expected a mapping of {cls.__name__} keys, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in attrs.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise ctx.error(_join(prefix, str(key)),
                            f"unknown key{did_you_mean(str(key), fields)}; valid keys here: "
                            f"{', '.join(fields)}")
    values = {}
    for name, field in fields.items():
        key = _join(prefix, name)
        if name in data:
            if "kind" in field.metadata:
                values[name] = _choice(field.metadata["kind"], data[name], ctx, key)
            elif "options_of" in field.metadata:
                values[name] = _options_by_name(field.metadata["options_of"], data[name], ctx, key)
            else:
                values[name] = _convert(hints[name], data[name], ctx, key)
        elif field.default is attrs.NOTHING:
            raise ctx.error(key, "is required" + (f": a mapping with a 'name' of a registered "
                                                  f"{field.metadata['kind']}"
                                                  if "kind" in field.metadata else ""))
    try:
        return cls(**values)
    except InvalidValue as error:
        raise ctx.error(_join(prefix, error.name), f"got {error.value!r}, expected {error.expected}") from None
    except (TypeError, ValueError) as error:
        raise ctx.error(prefix, str(error)) from None


def _choice(kind: str, data: Any, ctx: _Context, key: str) -> Choice | None:
    if data is None:
        return None
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, Mapping) or "name" not in data:
        raise ctx.error(key, f"expected a mapping with a 'name' of a registered {kind}, "
                             f"got {_describe(data)}")
    name = data["name"]
    try:
        component = ctx.registry.get(kind, str(name))
    except UnknownComponentError as error:
        raise ctx.error(f"{key}.name", str(error)) from None
    if ctx.backend is not None and not component.supports(ctx.backend):
        raise ctx.error(f"{key}.name", f"{kind} {name!r} has no {ctx.backend} implementation; it "
                                       f"implements: {', '.join(ctx.registry.backends_of(component))}")
    rest = {k: v for k, v in data.items() if k != "name"}
    if component.options is None:
        if rest:
            raise ctx.error(_join(key, next(iter(rest))), f"{kind} {name!r} takes no options")
        return Choice(str(name), None)
    return Choice(str(name), _structure(component.options, rest, ctx, key))


def _options_by_name(kind: str, data: Any, ctx: _Context, key: str) -> dict:
    """``{component name: its options}`` for a section keyed by component names."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ctx.error(key, f"expected a mapping of {kind} names to their options, got {_describe(data)}")
    result = {}
    for name, options in data.items():
        item = _join(key, str(name))
        try:
            component = ctx.registry.get(kind, str(name))
        except UnknownComponentError as error:
            raise ctx.error(item, str(error)) from None
        if component.options is None:
            if options:
                raise ctx.error(_join(item, str(next(iter(options)))), f"{kind} {name!r} takes no options")
            continue
        result[str(name)] = _structure(component.options, options or {}, ctx, item)
    return result


def _convert(tp: Any, value: Any, ctx: _Context, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _convert(options[0], value, ctx, key)
        for option in options:
            try:
                return _convert(option, value, ctx, key)
            except ConfigError:
                continue
        raise ctx.error(key, f"got {value!r}, expected {_name(tp)}")
    if origin is Literal:
        if value in args:
            return value
        raise ctx.error(key, f"got {value!r}, expected one of {', '.join(map(repr, args))}"
                             f"{did_you_mean(str(value), [str(a) for a in args])}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ctx.error(key, f"got {value!r}, expected a list of {_name(args[0]) if args else 'values'}")
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            raise ctx.error(key, f"got {len(value)} values {value!r}, expected exactly {len(args)}")
        element_types = args[:1] * len(value) if (origin is list or args[-1:] == (Ellipsis,)) else args
        items = [_convert(t, v, ctx, f"{key}[{i}]") for i, (t, v) in enumerate(zip(element_types, value))]
        return tuple(items) if origin is tuple else items
    if attrs.has(tp):
        return _structure(tp, {} if value is None else value, ctx, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        number = _number(value)
        if number is not None and float(number).is_integer():
            return int(number)
    elif tp is float:
        number = _number(value)
        if number is not None:
            return float(number)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ctx.error(key, f"got {value!r} ({type(value).__name__}), expected {_name(tp)}")


def _number(value: Any) -> float | None:
    """A real number from YAML; strings like ``1e-4`` count (YAML 1.1 reads them as text)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if value is not None else "nothing"


# -- back to plain data ------------------------------------------------------------------------


def to_dict(value: Any) -> Any:
    """Plain data for YAML/JSON: a :class:`Choice` becomes ``{name, **options}``."""
    if isinstance(value, Choice):
        options = to_dict(value.options) if value.options is not None else {}
        return {"name": value.name, **options}
    if attrs.has(type(value)):
        return {f.name: to_dict(getattr(value, f.name)) for f in attrs.fields(type(value))}
    if isinstance(value, Mapping):
        return {k: to_dict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_dict(v) for v in value]
    return value


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
