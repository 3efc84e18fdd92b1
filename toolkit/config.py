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
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import attrs
import yaml

from toolkit.errors import ConfigError, UnknownComponentError, did_you_mean, quoted, shortened
from toolkit.interfaces import DataSpec

# -- validators: each names what it expects, so errors can say it -----------------------------


class InvalidValue(ValueError):
    def __init__(self, name: str, value: Any, expected: str):
        super().__init__(f"{name}: got {quoted(value)}, expected {expected}")
        self.name, self.value, self.expected = name, value, expected


def check(predicate, expected: str):
    """An attrs validator that raises :class:`InvalidValue` with ``expected`` (None passes)."""

    def validator(instance, attribute, value):
        if value is not None and not predicate(value):
            raise InvalidValue(attribute.name, value, expected)

    validator.__doc__ = f"An attrs validator: {expected} (None passes)."
    return validator


positive = check(lambda v: v > 0, "a value > 0")
non_negative = check(lambda v: v >= 0, "a value >= 0")
probability = check(lambda v: 0.0 <= v <= 1.0, "a value in [0, 1]")
unit_open = check(lambda v: all(0.0 <= b < 1.0 for b in v), "values in [0, 1)")
dropout_rate = check(lambda v: 0.0 <= v < 1.0, "a dropout rate in [0, 1)")


def at_least(bound: float):
    """An attrs validator: a value >= ``bound``."""
    return check(lambda v: v >= bound, f"a value >= {bound}")


def at_most(bound: float):
    """An attrs validator: a value <= ``bound``."""
    return check(lambda v: v <= bound, f"a value <= {bound}")


#: seeds go to NumPy, torch.manual_seed (which refuses 2^64 and above) and jax.random.PRNGKey (2^63 and above)
seed_range = check(lambda v: 0 <= v < 2**63, "a seed in [0, 2^63)")

#: AdamW moves each weight by about ``lr`` a step whatever the gradient's scale (its update,
#: m / sqrt(v), is of order 1), so a rate above 1 overwrites weights initialised below 1 in one
#: step; 10 still leaves room for any experiment while a typo such as 1e39 is refused up front
MAX_LEARNING_RATE = 10.0


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
    seed: int = attrs.field(default=0, validator=seed_range)
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

    lr: float = attrs.field(default=1e-4, validator=[positive, at_most(MAX_LEARNING_RATE)])
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


def ema_average(weights: str | float, decays: Sequence[float]) -> float | None:
    """The decay of the average that ``weights`` (``eval.weights``, ``--weights``) names among
    ``decays`` (None: the raw weights): ``ema`` is the first of them (the raw weights when there is
    none), ``model`` the raw weights, and a number (``0.999`` or ``"0.999"``) that average."""
    if weights == "model" or (weights == "ema" and not decays):
        return None
    if weights == "ema":
        return decays[0]
    try:
        decay = float(weights)
    except (TypeError, ValueError):
        decay = None
    if decay not in decays:
        kept = (f"ema, model, or one of ema.decays ({', '.join(map(repr, decays))})" if decays
                else "ema or model (ema.decays is empty)")
        raise InvalidValue("eval.weights", weights if decay is None else decay, kept)
    return decay


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
    #: ``model``: the raw weights; a number: the average with that decay (checked by
    #: :func:`ema_average` against ``ema.decays`` when the whole config is validated).
    weights: str | float = "ema"
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
    eval: EvalSection = attrs.field(default=EvalSection())

    @eval.validator
    def _weights_kept(self, attribute, value):
        ema_average(value.weights, self.ema.decays)  # now, not after training

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
            raise ConfigError("", "objective.conditions", f"objective {self.objective.name!r} declares "
                                                          f"{quoted(conditions)}; expected distinct non-empty names")
        return attrs.evolve(data, conditions=conditions)


# -- loading -----------------------------------------------------------------------------------

#: deeper nesting is refused: the 30 YAML files of this repository nest at most 6 levels (a study's
#: variants), while PyYAML composes recursively and 20,000 levels exhaust Python's stack
MAX_YAML_DEPTH = 100
#: the most nodes that aliases may add to a document by repeating what they name. A file's own
#: nodes cost its bytes, but nine lines of aliases make a billion (the "billion laughs"), which
#: an error quoting them, or any walk over them, would take minutes and gigabytes for. A config
#: would alias a section or a value to reuse it; the largest file here has 155 nodes in all (and
#: no alias), so 10,000 added nodes leave room for sixty copies of it.
MAX_ALIAS_NODES = 10_000


class ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader that also refuses duplicate keys in a mapping (YAML forbids them; PyYAML
    keeps the last), nesting deeper than :data:`MAX_YAML_DEPTH`, aliases adding more than
    :data:`MAX_ALIAS_NODES` nodes or containing themselves, and values Python cannot hold."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_YAML_DEPTH} levels deep",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def compose_document(self) -> yaml.Node:
        document = super().compose_document()
        _check_expansion(document)
        return document

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as error:  # e.g. an integer of 5,000 digits, a date in month 13
            raise yaml.constructor.ConstructorError(None, None, f"cannot read this value: {error}",
                                                    node.start_mark) from None

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            lines: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` and then own keys is how YAML merges
                    continue
                key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                try:
                    first = lines.get(key)
                except TypeError:
                    continue  # an unhashable key: the base class refuses it
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {quoted(key)}, at lines {first} and {line}", key_node.start_mark)
                lines[key] = line
        return super().construct_mapping(node, deep)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases, expanded, add more than :data:`MAX_ALIAS_NODES` nodes or
    nest it deeper than :data:`MAX_YAML_DEPTH`, or contain themselves. Each distinct node is
    visited once (without recursion), so a billion-node document costs its few dozen nodes."""
    expanded: dict[int, tuple[int, int]] = {}  # id of a node -> (nodes, depth) once expanded
    open_nodes: set[int] = set()  # entered and not finished: the path from the root
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        children = _children(node)
        if finished:
            open_nodes.discard(id(node))
            parts = [expanded[id(child)] for child in children]
            expanded[id(node)] = (1 + sum(n for n, _ in parts), 1 + max((d for _, d in parts), default=0))
        elif id(node) in open_nodes:
            raise yaml.composer.ComposerError(None, None, "an alias contains itself (a recursive document)",
                                              node.start_mark)
        elif id(node) not in expanded:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children)
    nodes, depth = expanded[id(root)]
    if nodes - len(expanded) > MAX_ALIAS_NODES:
        raise yaml.composer.ComposerError(None, None, f"its aliases expand it by {nodes - len(expanded):,} nodes, more "
                                                      f"than the {MAX_ALIAS_NODES:,} allowed", None)
    if depth > MAX_YAML_DEPTH:
        raise yaml.composer.ComposerError(None, None, f"its aliases nest it more than {MAX_YAML_DEPTH} levels deep",
                                          None)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    return []


def load_config(path: str | Path, overrides: Sequence[str] = (), registry=None,
                backend: str | None = None) -> Config:
    """Read, override and validate a run file. ``backend`` checks every component supports it."""
    return config_from_dict(read_yaml(path), str(path), overrides, registry, backend)


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """The data of a YAML file (an empty file is an empty mapping); errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "", f"no such {what}") from None
    except OSError as error:
        raise ConfigError(str(path), "", f"cannot read: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(str(path), "", f"not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                                         f"{error.start}); expected a YAML {what}") from None
    data = parse_yaml(text, str(path))
    return {} if data is None else data


def parse_yaml(text: str, source: str) -> Any:
    """The data of YAML ``text`` read by :class:`ConfigLoader`; an error is one line naming ``source``
    and the place in the text."""
    try:
        return yaml.load(text, Loader=ConfigLoader)
    except yaml.YAMLError as error:
        raise ConfigError(source, "", f"not valid YAML: {_yaml_problem(error, text)}") from None


def _yaml_problem(error: yaml.YAMLError, text: str) -> str:
    """PyYAML's error (five to eight lines, with a picture of the place) as one line."""
    if isinstance(error, yaml.MarkedYAMLError):
        where = f"{_place(error.problem_mark)}: " if error.problem_mark else ""
        context = ""
        if error.context:
            context = f" ({error.context}{f' at {_place(error.context_mark)}' if error.context_mark else ''})"
        return shortened(f"{where}{error.problem}{context}")
    if isinstance(error, yaml.reader.ReaderError):  # a character YAML does not allow, e.g. NUL in a binary file
        line = text.count("\n", 0, error.position) + 1
        column = error.position - (text.rfind("\n", 0, error.position) + 1) + 1
        return f"line {line}, column {column}: character #x{error.character:04x} is not allowed: {error.reason}"
    return shortened(str(error))


def _place(mark: yaml.Mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def config_from_dict(data: Any, source: str = "<config>", overrides: Sequence[str] = (),
                     registry=None, backend: str | None = None, cls: type = Config,
                     origins: Mapping[str, str] | None = None) -> Any:
    """Validate plain data as ``cls``. ``origins`` names where dotted keys were set when that is
    not ``source`` (errors under such a key name it); ``--set`` style ``overrides`` come last."""
    if not isinstance(data, Mapping):
        raise ConfigError(source, "", f"expected a mapping of sections, got {_describe(data)}")
    data, overridden = _apply_overrides(dict(data), overrides)
    if registry is None:
        from toolkit.registry import get_registry
        registry = get_registry()
    where = {**(origins or {}), **overridden}
    context = _Context(source, where, registry, backend)
    return _structure(cls, data, context, "")


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=1e-3"`` -> ``("a.b", "1e-3")``; values are parsed as YAML, so types follow."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError("--set", text, "expected KEY=VALUE with a dotted key, e.g. optimizer.lr=1e-4")
    if "" in key.split("."):
        raise ConfigError(f"--set {text}", key, "expected a dotted key of non-empty names, e.g. optimizer.lr")
    return key, parse_yaml(raw, f"--set {text}") if raw.strip() else None


def _apply_overrides(data: dict, overrides: Sequence[str]) -> tuple[dict, dict[str, str]]:
    """``data`` with each ``--set`` applied, and the ``--set`` behind each dotted key: the key it
    sets and the first section it creates, as an error at either is that override's."""
    origins: dict[str, str] = {}
    for text in overrides:
        key, value = parse_override(text)
        origin = f"--set {text}"
        created = _first_missing_section(data, key)
        if created is not None:
            origins.setdefault(created, origin)
        origins[key] = origin
        data = set_keys(data, {key: value}, origin)
    return data, origins


def _first_missing_section(data: Mapping, key: str) -> str | None:
    """The outermost section of the dotted ``key`` that ``data`` does not have, if any."""
    node, parts = data, key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            return ".".join(parts[:depth + 1])
        if not isinstance(child, Mapping):
            return None  # set_keys refuses to set inside a value
        node = child
    return None


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
        # the most specific setting wins: a --set of foo.bar.baz, not the --set that created foo
        covering = [candidate for candidate in self.overridden if key == candidate or key.startswith(candidate + ".")]
        return self.overridden[max(covering, key=len)] if covering else self.source

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
        raise ctx.error(_join(prefix, error.name), f"got {quoted(error.value)}, expected {error.expected}") from None
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
        raise ctx.error(key, f"got {quoted(value)}, expected {_name(tp)}")
    if origin is Literal:
        if value in args:
            return value
        raise ctx.error(key, f"got {quoted(value)}, expected one of {', '.join(map(repr, args))}"
                             f"{did_you_mean(str(value), [str(a) for a in args])}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ctx.error(key, f"got {quoted(value)}, expected a list of {_name(args[0]) if args else 'values'}")
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            raise ctx.error(key, f"got {len(value)} values {quoted(value)}, expected exactly {len(args)}")
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
        if isinstance(number, int) or (number is not None and number.is_integer()):
            return int(number)
    elif tp is float:
        number = _number(value)
        if number is not None and abs(number) <= sys.float_info.max:  # an integer may be beyond any float
            return float(number)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ctx.error(key, f"got {quoted(value)} ({type(value).__name__}), expected {_name(tp)}")


def _number(value: Any) -> int | float | None:
    """A real number from YAML; strings like ``1e-4`` count (YAML 1.1 reads them as text)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value  # exact, however large
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_name(a) for a in args if a is not type(None))
    if origin is Literal:
        return " or ".join(map(repr, args))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {quoted(value)}" if value is not None else "nothing"


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
