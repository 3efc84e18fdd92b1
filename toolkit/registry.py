"""Finds plugins, collects the components they register, and loads implementations.

Plugins come from the ``toolkit`` entry-point group (built-ins included, and loaded
first) and can be added as objects (tests, notebooks). A plugin that fails — raises or
calls ``sys.exit()`` on import, names a hook that does not exist or a parameter a hook
does not give, names the module of another entry point, raises inside a hook,
registers a malformed component, adds a command under a taken name — is recorded in
:attr:`Registry.problems` with its name and left out; every other plugin keeps
working. What plugins print while they load goes to stderr, not to the command's
output.

Environment:
  ``TOOLKIT_PLUGINS``          comma-separated allow-list of plugin (entry-point) or
                               distribution names; when set, nothing else loads.
  ``TOOLKIT_DISABLE_PLUGINS``  comma-separated block-list, applied after the allow-list.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import inspect
import os
import re
import sys
from typing import Any, Mapping, Sequence

import attrs
import pluggy

from toolkit import hookspecs
from toolkit.errors import (
    BackendUnavailableError,
    ComponentClashError,
    ToolkitError,
    UnknownComponentError,
    did_you_mean,
)

ENTRY_POINT_GROUP = hookspecs.PROJECT
#: The distribution of the built-in plugins: they load first, so that they keep their names and
#: modules when a third party's entry point names them again.
DISTRIBUTION = "meanflow-toolkit"
#: What a plugin's code may raise without ending the command: anything but Ctrl-C. A plugin's
#: ``sys.exit()`` would otherwise end every command, ``toolkit --help`` included, without a word.
PLUGIN_FAULTS = (Exception, SystemExit)
ANY_BACKEND = "*"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")


@attrs.frozen
class Plugin:
    name: str
    distribution: str = ""
    version: str = ""


@attrs.frozen
class Component:
    """One registered component: what ``register(...)`` was given, and by whom."""

    kind: str
    name: str
    implementations: Mapping[str, Any]
    plugin: Plugin
    options: type | None = None
    summary: str = ""
    #: small partial run configs that exercise this component (tests, ``toolkit parity --all``).
    examples: tuple[Mapping[str, Any], ...] = ()

    def supports(self, backend: str) -> bool:
        return backend in self.implementations or ANY_BACKEND in self.implementations


class Registry:
    """The plugin manager plus the components of every loaded plugin."""

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.plugins: dict[str, Plugin] = {}
        self.problems: list[str] = []
        # (kind, name) -> every component registered under it (more than one = clash).
        self._components: dict[tuple[str, str], list[Component]] = {}

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_entry_points(cls, group: str = ENTRY_POINT_GROUP) -> "Registry":
        registry = cls()
        registry.load_entry_points(group)
        return registry

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        allow = _env_list("TOOLKIT_PLUGINS")
        block = _env_list("TOOLKIT_DISABLE_PLUGINS") or set()
        entry_points = importlib.metadata.entry_points(group=group)
        for entry_point in sorted(entry_points, key=lambda e: (_distribution(e) != DISTRIBUTION, e.name, _distribution(e))):
            dist = entry_point.dist
            plugin = Plugin(entry_point.name, _distribution(entry_point), dist.version if dist else "")
            names = {plugin.name, plugin.distribution}
            taken = self.plugins.get(plugin.name)
            if taken is not None and taken.distribution != plugin.distribution:
                # entry-point names are chosen per package (often after the component), so two
                # packages may well share one: the later is known by its distribution as well
                plugin = attrs.evolve(plugin, name=f"{plugin.distribution}:{plugin.name}")
                names.add(plugin.name)
            if (allow is not None and not names & allow) or names & block:
                continue
            try:
                with contextlib.redirect_stdout(sys.stderr):
                    obj = entry_point.load()
            except PLUGIN_FAULTS as error:
                self.problems.append(f"plugin {plugin.name!r} ({_from(plugin)}) failed to load: {_describe(error)}")
                continue
            self.add_plugin(obj, plugin)

    def add_plugin(self, obj: object, plugin: Plugin | str) -> bool:
        """Register ``obj`` as a plugin and collect its components; False if it was rejected."""
        if isinstance(plugin, str):
            plugin = Plugin(plugin)
        if plugin.name in self.plugins:
            self.problems.append(f"plugin {plugin.name!r} ({_from(plugin)}) is skipped: another plugin of "
                                 f"that name is loaded ({_from(self.plugins[plugin.name])})")
            return False
        holder = self.manager.get_name(obj)
        if holder is not None:  # pluggy refuses an object twice, as two entry points to one module give it
            self.problems.append(f"plugin {plugin.name!r} ({_from(plugin)}) is skipped: it names the module of "
                                 f"plugin {holder!r} ({_from(self.plugins.get(holder, Plugin(holder)))}) again")
            return False
        try:
            self.manager.register(obj, name=plugin.name)
        except PLUGIN_FAULTS as error:
            if self.manager.get_plugin(plugin.name) is obj:  # some pluggy versions register part of it first
                self.manager.unregister(obj)
            detail = self._mismatched_parameters(obj) if isinstance(error, pluggy.PluginValidationError) else ""
            self.problems.append(f"plugin {plugin.name!r} ({_from(plugin)}) is skipped: "
                                 f"{detail or ' '.join(_describe(error).split())}")  # pluggy's messages span lines
            return False
        problem = self._misspelt_hooks(obj)
        collected: list[Component] = []
        if problem is None:
            try:
                with contextlib.redirect_stdout(sys.stderr):
                    for kind, hook_name in hookspecs.KIND_HOOKS.items():
                        for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
                            if impl.plugin is obj:
                                impl.function(register=_Collector(kind, plugin, collected))
            except PLUGIN_FAULTS as error:
                problem = f"plugin {plugin.name!r} ({_from(plugin)}) failed while registering: {_describe(error)}"
        if problem is not None:
            self.manager.unregister(obj)
            self.problems.append(problem)
            return False
        self.plugins[plugin.name] = plugin
        for component in collected:
            self._components.setdefault((component.kind, component.name), []).append(component)
        return True

    def remove_plugin(self, name: str) -> None:
        self.manager.unregister(name=name)
        self.plugins.pop(name, None)
        for key in list(self._components):
            kept = [c for c in self._components[key] if c.plugin.name != name]
            if kept:
                self._components[key] = kept
            else:
                del self._components[key]

    def _misspelt_hooks(self, obj: object) -> str | None:
        """pluggy's ``check_pending``, reworded to name the plugin and the closest hook."""
        try:
            self.manager.check_pending()
        except pluggy.PluginValidationError:
            unknown = [name for name, caller in vars(self.manager.hook).items()
                       if not caller.has_spec() and any(i.plugin is obj for i in caller.get_hookimpls())]
            known = sorted(hookspecs.KIND_HOOKS.values()) + ["register_commands"]
            details = "; ".join(f"{name!r}{did_you_mean(name, known)}" for name in unknown)
            return (f"plugin {self.manager.get_name(obj)!r} implements hooks that do not exist: "
                    f"{details}. Known hooks: {', '.join(known)}")
        return None

    def _mismatched_parameters(self, obj: object) -> str:
        """pluggy's check of a hook's parameters, reworded to name each hook and what it gives."""
        details = []
        for attribute in dir(obj):
            options = self.manager.parse_hookimpl_opts(obj, attribute)
            caller = getattr(self.manager.hook, (options or {}).get("specname") or attribute, None)
            if options is None or caller is None or caller.spec is None:
                continue
            required = [name for name, parameter in inspect.signature(getattr(obj, attribute)).parameters.items()
                        if parameter.default is parameter.empty]  # pluggy passes no argument to the others
            unknown = [name for name in required if name not in caller.spec.argnames]
            if unknown:
                details.append(f"{attribute}({', '.join(required)}) takes {', '.join(map(repr, unknown))}, which the "
                               f"hook does not give; it gives: {', '.join(caller.spec.argnames)}")
        return "; ".join(details)

    # -- queries --------------------------------------------------------------------------

    def components(self, kind: str | None = None) -> list[Component]:
        found = [c for (k, _), cs in self._components.items() if kind in (None, k) for c in cs]
        return sorted(found, key=lambda c: (hookspecs.KINDS.index(c.kind), c.name, c.plugin.name))

    def names(self, kind: str) -> list[str]:
        return sorted({name for (k, name) in self._components if k == kind})

    def backend_names(self) -> list[str]:
        return self.names("backend")

    def backends_of(self, component: Component) -> list[str]:
        """The backends a component runs on, with ``"*"`` expanded to every loaded backend."""
        if ANY_BACKEND in component.implementations:
            return self.backend_names()
        return sorted(component.implementations)

    def get(self, kind: str, name: str) -> Component:
        if kind not in hookspecs.KIND_HOOKS:
            raise ToolkitError(f"unknown component kind {kind!r}; kinds: {', '.join(hookspecs.KINDS)}")
        found = self._components.get((kind, name))
        if not found:
            raise UnknownComponentError(kind, name, self.names(kind))
        if len(found) > 1:
            owners = " and ".join(f"{c.plugin.name!r} ({_from(c.plugin)})" for c in found)
            raise ComponentClashError(
                f"{kind} {name!r} is registered by more than one plugin: {owners}. Disable one of "
                f"them with TOOLKIT_DISABLE_PLUGINS=<plugin name>")
        return found[0]

    def clashes(self) -> list[str]:
        return [f"{kind} {name!r} is registered by " + " and ".join(sorted(repr(c.plugin.name) for c in cs))
                for (kind, name), cs in sorted(self._components.items()) if len(cs) > 1]

    def holder_of(self, name: str) -> str | None:
        """What has ``name`` already, a component of any kind or else a plugin, for a message; None if nothing."""
        for component in self.components():
            if component.name == name:
                return f"{component.kind} {name!r} of plugin {component.plugin.name!r} ({_from(component.plugin)})"
        return f"plugin {name!r} ({_from(self.plugins[name])})" if name in self.plugins else None

    def load(self, kind: str, name: str, backend: str) -> Any:
        """Import and return the implementation of ``kind``/``name`` for ``backend``."""
        component = self.get(kind, name)
        if backend not in self.backend_names():
            raise UnknownComponentError("backend", backend, self.backend_names())
        if not component.supports(backend):
            raise BackendUnavailableError(
                f"{kind} {name!r} (plugin {component.plugin.name!r}) has no {backend} implementation; "
                f"it implements: {', '.join(self.backends_of(component))}")
        target = component.implementations.get(backend, component.implementations.get(ANY_BACKEND))
        return _resolve(target, component, backend)

    def add_commands(self, cli) -> None:
        """Let each plugin add commands to ``cli``; a command whose name is taken keeps its original."""
        added_by: dict[str, str] = {}  # command name -> the plugin that added it
        for impl in self.manager.hook.register_commands.get_hookimpls():
            plugin = self.plugins.get(impl.plugin_name, Plugin(impl.plugin_name))
            taken = dict(cli.commands)
            try:
                with contextlib.redirect_stdout(sys.stderr):
                    impl.function(cli=cli)
            except PLUGIN_FAULTS as error:
                self._report(f"plugin {plugin.name!r} failed to add commands: {_describe(error)}")
            for name, command in taken.items():
                if cli.commands.get(name) is not command:
                    cli.commands[name] = command
                    owner = f"added by plugin {added_by[name]!r}" if name in added_by else "a built-in command"
                    self._report(f"plugin {plugin.name!r} ({_from(plugin)}) cannot replace the command {name!r} "
                                 f"({owner}); the original is kept")
            added_by.update(dict.fromkeys(cli.commands.keys() - taken.keys(), plugin.name))

    def _report(self, problem: str) -> None:
        if problem not in self.problems:  # add_commands runs on every main() of a process (tests, notebooks)
            self.problems.append(problem)


class _Collector:
    """The ``register`` callback handed to one plugin's ``register_<kind>s`` hook."""

    def __init__(self, kind: str, plugin: Plugin, into: list[Component]):
        self.kind, self.plugin, self.into = kind, plugin, into

    def __call__(self, name: str, implementations: Mapping[str, Any], *, options: type | None = None,
                 summary: str = "", examples: Sequence[Mapping[str, Any]] = ()) -> None:
        what = f"{self.kind} {name!r}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"{self.kind} name {name!r} is not a valid name (letters, digits, _ . -)")
        if not isinstance(implementations, Mapping) or not implementations:
            raise ValueError(f"{what}: implementations must be a non-empty mapping backend -> object "
                             f"or 'module:attribute', got {implementations!r}")
        for key, target in implementations.items():
            if isinstance(target, str) and ":" not in target:
                raise ValueError(f"{what}: implementation {target!r} for {key!r} is not "
                                 f"'module:attribute'")
        if options is not None and not attrs.has(options):
            raise ValueError(f"{what}: options must be an attrs class, got {options!r}")
        if isinstance(examples, Mapping) or not all(isinstance(e, Mapping) for e in examples):
            raise ValueError(f"{what}: examples must be a list of partial run configs (mappings of "
                             f"sections), got {examples!r}")
        self.into.append(Component(self.kind, name, dict(implementations), self.plugin, options,
                                   summary or _first_line(options), tuple(examples)))


def _resolve(target: Any, component: Component, backend: str) -> Any:
    if not isinstance(target, str):
        return target
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        missing = getattr(error, "name", None) or ""
        hint = _INSTALL_HINTS.get(missing.split(".")[0])
        if hint:
            raise BackendUnavailableError(
                f"{component.kind} {component.name!r} needs {hint[0]} for the {backend} backend, and "
                f"it is not installed: pip install 'meanflow-toolkit[{hint[1]}]'") from error
        raise ToolkitError(f"plugin {component.plugin.name!r}: cannot import {module_name!r} for "
                           f"{component.kind} {component.name!r}: {error}") from error
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ToolkitError(f"plugin {component.plugin.name!r}: {module_name!r} has no attribute "
                           f"{attribute!r} (the {backend} implementation of {component.kind} "
                           f"{component.name!r})") from None


_INSTALL_HINTS = {"torch": ("PyTorch", "torch"), "jax": ("JAX", "jax"), "jaxlib": ("JAX", "jax"),
                  "equinox": ("Equinox", "jax"), "optax": ("Optax", "jax")}


def _first_line(obj: object) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def _describe(error: BaseException) -> str:
    """``Type: message``, or the type alone when there is no message (``sys.exit()``)."""
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _distribution(entry_point: importlib.metadata.EntryPoint) -> str:
    return entry_point.dist.name if entry_point.dist else ""


def _from(plugin: Plugin) -> str:
    return f"{plugin.distribution} {plugin.version}".strip() or "registered directly"


def _env_list(variable: str) -> set[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return {item.strip() for item in value.split(",") if item.strip()}


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built from entry points on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry.from_entry_points()
    return _REGISTRY


def reset_registry() -> None:
    """Forget the process-wide registry (after installing a plugin, or in tests)."""
    global _REGISTRY
    _REGISTRY = None

