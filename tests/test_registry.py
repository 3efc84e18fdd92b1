"""The plugin system: entry points, isolation of broken plugins, clashes, allow/block lists."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from toolkit.errors import BackendUnavailableError, ComponentClashError, UnknownComponentError
from toolkit.hookspecs import KINDS, hookimpl
from toolkit.registry import Registry

BUILTINS = {("objective", "flow_matching"), ("objective", "meanflow"), ("objective", "splitmeanflow"),
            ("backbone", "mlp"), ("backbone", "dit"), ("sampler", "euler"), ("sampler", "heun"), ("sampler", "meanflow"),
            ("schedule", "meanflow_curriculum"), ("dataset", "gaussian"),
            ("backend", "torch"), ("backend", "jax"), ("dataset", "checkerboard"), ("dataset", "moons"),
            ("dataset", "eight_gaussians"), ("metric", "sliced_wasserstein"), ("metric", "classifier_fd"),
            ("metric", "fid"), ("metric", "inception_score")}

EXTRA_OBJECTIVE = """
from toolkit.hookspecs import hookimpl

@hookimpl
def register_objectives(register):
    register("{name}", {{"torch": "math:sqrt"}}, summary="a test objective")
"""


def test_builtins_come_from_entry_points(registry):
    found = {(c.kind, c.name) for c in registry.components()}
    assert BUILTINS <= found
    assert registry.problems == []
    for component in registry.components():  # (installed third-party packages, such as examples/imf, too)
        assert component.kind in KINDS
        if (component.kind, component.name) in BUILTINS:
            assert component.plugin.distribution == "meanflow-toolkit"


def test_builtin_components_declare_both_backends(registry):
    for kind, name in BUILTINS - {("backend", "torch"), ("backend", "jax")}:
        assert registry.backends_of(registry.get(kind, name)) == ["jax", "torch"], (kind, name)
    assert registry.backends_of(registry.get("backend", "torch")) == ["torch"]


def test_third_party_plugin_appears(install_plugin):
    install_plugin("toolkit-extra", "extra", EXTRA_OBJECTIVE.format(name="extra_objective"), version="1.2.3")
    registry = Registry.from_entry_points()
    component = registry.get("objective", "extra_objective")
    assert (component.plugin.name, component.plugin.distribution, component.plugin.version) == \
        ("extra", "toolkit-extra", "1.2.3")
    assert registry.backends_of(component) == ["torch"]
    assert registry.load("objective", "extra_objective", "torch") is __import__("math").sqrt


def test_same_name_twice_names_both_plugins(install_plugin):
    install_plugin("toolkit-extra", "extra", EXTRA_OBJECTIVE.format(name="flow_matching"))
    registry = Registry.from_entry_points()
    with pytest.raises(ComponentClashError) as error:
        registry.get("objective", "flow_matching")
    message = str(error.value)
    assert "'flow_matching'" in message and "'extra' (toolkit-extra 0.1)" in message
    assert "(meanflow-toolkit 0.1.0)" in message and "TOOLKIT_DISABLE_PLUGINS" in message
    assert registry.clashes() == ["objective 'flow_matching' is registered by 'extra' and 'flow_matching'"]
    # Other components are untouched.
    assert registry.get("backbone", "mlp").name == "mlp"


def test_plugin_raising_on_import_is_reported_and_others_work(install_plugin):
    install_plugin("toolkit-broken", "broken", "raise RuntimeError('boom at import')\n")
    registry = Registry.from_entry_points()
    assert registry.problems == ["plugin 'broken' (toolkit-broken 0.1) failed to load: RuntimeError: boom at import"]
    assert BUILTINS <= {(c.kind, c.name) for c in registry.components()}


def test_misspelt_hook_is_rejected_with_the_closest_name(install_plugin):
    install_plugin("toolkit-typo", "typo", """
        from toolkit.hookspecs import hookimpl

        @hookimpl
        def register_objectivs(register):
            register("never_seen", {"torch": "math:sqrt"})
    """)
    registry = Registry.from_entry_points()
    [problem] = registry.problems
    assert "plugin 'typo' implements hooks that do not exist: 'register_objectivs'" in problem
    assert "did you mean 'register_objectives'?" in problem
    assert "never_seen" not in registry.names("objective")
    assert "typo" not in registry.plugins


def test_plugin_raising_inside_its_hook_is_reported(install_plugin):
    install_plugin("toolkit-bad", "bad", """
        from toolkit.hookspecs import hookimpl

        @hookimpl
        def register_backbones(register):
            register("good_name", {"torch": "math:sqrt"})
            register("bad name!", {"torch": "math:sqrt"})
    """)
    registry = Registry.from_entry_points()
    [problem] = registry.problems
    assert problem.startswith("plugin 'bad' (toolkit-bad 0.1) failed while registering: ValueError:")
    assert "'bad name!' is not a valid name" in problem
    # Nothing of a rejected plugin is half-registered.
    assert "good_name" not in registry.names("backbone")


@pytest.mark.parametrize("implementations, expected", [
    ({}, "implementations must be a non-empty mapping"),
    ({"torch": "no_colon_here"}, "is not 'module:attribute'"),
])
def test_malformed_registration_is_rejected(implementations, expected):
    class Plugin:
        @hookimpl
        def register_samplers(self, register):
            register("malformed", implementations)

    registry = Registry()
    assert not registry.add_plugin(Plugin(), "malformed_plugin")
    assert expected in registry.problems[0]


def test_allow_list_and_block_list(install_plugin, monkeypatch):
    install_plugin("toolkit-extra", "extra", EXTRA_OBJECTIVE.format(name="extra_objective"))
    monkeypatch.setenv("TOOLKIT_PLUGINS", "extra, mlp")
    assert {c.name for c in Registry.from_entry_points().components()} == {"extra_objective", "mlp"}
    monkeypatch.setenv("TOOLKIT_PLUGINS", "toolkit-extra")  # distribution names work too
    assert {c.name for c in Registry.from_entry_points().components()} == {"extra_objective"}
    monkeypatch.delenv("TOOLKIT_PLUGINS")
    monkeypatch.setenv("TOOLKIT_DISABLE_PLUGINS", "extra,toy2d")
    names = {c.name for c in Registry.from_entry_points().components()}
    assert "extra_objective" not in names and "checkerboard" not in names and "mlp" in names


def test_unknown_name_lists_available_and_closest(registry):
    with pytest.raises(UnknownComponentError) as error:
        registry.get("objective", "flow_matchin")
    available = sorted(c.name for c in registry.components() if c.kind == "objective")  # + installed packages'
    assert {"flow_matching", "meanflow", "splitmeanflow"} <= set(available)
    assert str(error.value) == ("unknown objective 'flow_matchin' (did you mean 'flow_matching'?); "
                                f"available: {', '.join(available)}")


def test_missing_backend_implementation_is_named():
    class Plugin:
        @hookimpl
        def register_backbones(self, register):
            register("torch_only", {"torch": "math:sqrt"})

    registry = Registry.from_entry_points()
    registry.add_plugin(Plugin(), "torch_only_plugin")
    with pytest.raises(BackendUnavailableError, match=r"backbone 'torch_only' \(plugin 'torch_only_plugin'\) "
                                                       r"has no jax implementation; it implements: torch"):
        registry.load("backbone", "torch_only", "jax")
    registry.remove_plugin("torch_only_plugin")
    assert "torch_only" not in registry.names("backbone")


def test_listing_plugins_imports_no_framework():
    code = ("import sys, json; from toolkit.cli import main; main(['plugins', '--json']); "
            "print(json.dumps(sorted(m for m in ('torch', 'jax', 'equinox', 'optax') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_a_plugin_adds_a_command(install_plugin, capsys):
    from toolkit.cli import main

    install_plugin("toolkit-hello", "hello", """
        import click
        from toolkit.hookspecs import hookimpl

        @hookimpl
        def register_commands(cli):
            @cli.command()
            @click.argument("name")
            def hello(name):
                '''Say hello.'''
                click.echo(f"hello {name}")
    """)
    assert main(["hello", "world"]) == 0
    assert capsys.readouterr().out == "hello world\n"


def test_a_second_plugin_of_the_same_name_is_skipped():
    class One:
        @hookimpl
        def register_metrics(self, register):
            register("one", {"*": "math:sqrt"})

    registry = Registry()
    assert registry.add_plugin(One(), "same")
    assert not registry.add_plugin(One(), "same")
    assert registry.problems == ["plugin 'same' (registered directly) is skipped: another plugin of that name "
                                 "is loaded (registered directly)"]


def test_two_packages_may_share_an_entry_point_name(install_plugin):
    """Entry-point names are chosen per package: the second package of a name loads too, known
    by its distribution as well; only a clash of component names is an error (and names both)."""
    source = """
        from toolkit.api import hookimpl

        @hookimpl
        def register_metrics(register):
            register("{metric}", {{"*": "math:sqrt"}})
    """
    install_plugin("toolkit-first", "shared", source.format(metric="first_metric"), module="first_module")
    install_plugin("toolkit-second", "shared", source.format(metric="second_metric"), module="second_module")
    registry = Registry.from_entry_points()
    assert registry.problems == []
    assert registry.get("metric", "first_metric").plugin.distribution == "toolkit-first"
    second = registry.get("metric", "second_metric").plugin
    assert second.distribution == "toolkit-second" and second.name == "toolkit-second:shared"
