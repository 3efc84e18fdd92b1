"""Broken third-party plugins (issue 19): each is named once on stderr and skipped, the rest works.

A hook with a wrong parameter name, two entry points to one module, an entry point to a built-in
module, ``sys.exit()`` in a plugin, a plugin command under a taken name, a plugin that prints, and
``toolkit plugin new`` under a name that would shadow a module or a built-in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests_paths import CONFIGS
from toolkit.cli import main
from toolkit.registry import Registry

OBJECTIVE = """
from toolkit.hookspecs import hookimpl

@hookimpl
def register_objectives(register):
    register("{name}", {{"torch": "math:sqrt"}})
"""

WRONG_PARAMETER = """
from toolkit.hookspecs import hookimpl

@hookimpl
def register_objectives(regster):
    regster("never_seen", {"torch": "math:sqrt"})
"""


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def declare_entry_points(site: Path, distribution: str, lines: str) -> None:
    """Replace the entry points of a distribution that ``install_plugin`` wrote."""
    (site / f"{distribution.replace('-', '_')}-0.1.dist-info" / "entry_points.txt").write_text(f"[toolkit]\n{lines}")


def names(registry: Registry, kind: str) -> list[str]:
    return [c.name for c in registry.components(kind)]


def test_a_hook_with_a_wrong_parameter_name_is_skipped_by_name(install_plugin):
    install_plugin("toolkit-wrong-parameter", "wrong_parameter", WRONG_PARAMETER)
    registry = Registry.from_entry_points()
    assert registry.problems == [
        "plugin 'wrong_parameter' (toolkit-wrong-parameter 0.1) is skipped: register_objectives(regster) takes "
        "'regster', which the hook does not give; it gives: register"]
    assert "wrong_parameter" not in registry.plugins and registry.manager.get_plugin("wrong_parameter") is None
    assert "never_seen" not in names(registry, "objective") and "flow_matching" in names(registry, "objective")


def test_two_entry_points_to_one_module_register_it_once(install_plugin):
    site = install_plugin("toolkit-twice", "twice", OBJECTIVE.format(name="twice_objective"))
    declare_entry_points(site, "toolkit-twice", "twice = twice_plugin_module\ntwice_again = twice_plugin_module\n")
    registry = Registry.from_entry_points()
    assert registry.problems == ["plugin 'twice_again' (toolkit-twice 0.1) is skipped: it names the module of "
                                 "plugin 'twice' (toolkit-twice 0.1) again"]
    assert names(registry, "objective").count("twice_objective") == 1 and registry.clashes() == []
    assert registry.get("objective", "twice_objective").plugin.name == "twice"


def test_an_entry_point_to_a_built_in_module_is_the_one_skipped(install_plugin):
    # 'copycat' sorts before 'mlp': the built-in entry point must keep its module all the same.
    site = install_plugin("toolkit-copycat", "copycat", "")
    declare_entry_points(site, "toolkit-copycat", "copycat = toolkit.plugins.mlp\n")
    registry = Registry.from_entry_points()
    assert registry.problems == ["plugin 'copycat' (toolkit-copycat 0.1) is skipped: it names the module of "
                                 "plugin 'mlp' (meanflow-toolkit 0.1.0) again"]
    mlp = registry.get("backbone", "mlp").plugin
    assert (mlp.name, mlp.distribution) == ("mlp", "meanflow-toolkit")


@pytest.mark.parametrize("source, reported", [
    ("import sys\nsys.exit()\n", "failed to load: SystemExit"),
    ("raise SystemExit(3)\n", "failed to load: SystemExit: 3"),
    ("import sys\nfrom toolkit.hookspecs import hookimpl\n\n@hookimpl\ndef register_samplers(register):\n"
     "    sys.exit('leaving')\n", "failed while registering: SystemExit: leaving"),
], ids=["exit-at-import", "exit-3-at-import", "exit-in-a-hook"])
def test_a_plugin_calling_sys_exit_is_reported_and_help_still_works(install_plugin, capsys, source, reported):
    install_plugin("toolkit-quitter", "quitter", source)
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "Usage: toolkit" in out and "plugins" in out
    code, out, err = run_cli(capsys, "plugins", "--json")
    assert code == 0
    assert err == f"toolkit: warning: plugin 'quitter' (toolkit-quitter 0.1) {reported}\n"
    assert any(row["name"] == "flow_matching" for row in json.loads(out))


def test_every_broken_plugin_at_once_is_named_once_and_the_rest_runs(install_plugin, capsys, tmp_path):
    install_plugin("toolkit-wrong-parameter", "wrong_parameter", WRONG_PARAMETER)
    site = install_plugin("toolkit-twice", "twice", OBJECTIVE.format(name="twice_objective"))
    declare_entry_points(site, "toolkit-twice", "twice = twice_plugin_module\ntwice_again = twice_plugin_module\n")
    install_plugin("toolkit-copycat", "copycat", "")
    declare_entry_points(site, "toolkit-copycat", "copycat = toolkit.plugins.mlp\n")
    install_plugin("toolkit-quitter", "quitter", "import sys\nsys.exit(1)\n")
    install_plugin("toolkit-fine", "fine", OBJECTIVE.format(name="fine_objective"))

    code, out, err = run_cli(capsys, "plugins")
    assert code == 0
    warnings = err.splitlines()
    assert len(warnings) == 4 and all(line.startswith("toolkit: warning: plugin '") for line in warnings), err
    for skipped in ("wrong_parameter", "twice_again", "copycat", "quitter"):
        assert sum(f"plugin '{skipped}' (" in line for line in warnings) == 1, (skipped, err)
    listed = {tuple(line.split()[:3]) for line in out.splitlines()}
    assert {("objective", "fine_objective", "toolkit-fine"), ("objective", "twice_objective", "toolkit-twice"),
            ("backbone", "mlp", "meanflow-toolkit"), ("objective", "flow_matching", "meanflow-toolkit")} <= listed

    code, out, err = run_cli(capsys, "run", str(CONFIGS / "fm_toy2d.yaml"), "--backend", "torch", "--out",
                             str(tmp_path / "run"), "--no-progress", "--set", "run.steps=3", "--set",
                             "logging.every=1", "--set", "eval.metric=null", "--set", "sampler.nfe=1")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["step"] == 3


HIJACK = """
import click
from toolkit.hookspecs import hookimpl

@hookimpl
def register_commands(cli):
    @cli.command()
    def run():
        '''Hijacked.'''
        click.echo("hijacked run")

    @cli.command("eval")
    def evaluate():
        click.echo("hijacked eval")

    @cli.command("hijack-extra")
    def extra():
        click.echo("an extra command")
"""


def test_a_plugin_cannot_replace_a_built_in_command(install_plugin, capsys):
    install_plugin("toolkit-hijack", "hijack", HIJACK)
    code, out, err = run_cli(capsys, "plugins")
    assert code == 0
    assert ("toolkit: warning: plugin 'hijack' (toolkit-hijack 0.1) cannot replace the command 'run' (a built-in "
            "command); the original is kept\n") in err
    assert "plugin 'hijack' (toolkit-hijack 0.1) cannot replace the command 'eval' (a built-in command)" in err
    code, out, _ = run_cli(capsys, "run", "--help")
    assert code == 0 and "Train the run described by CONFIG" in out and "Hijacked" not in out
    code, out, _ = run_cli(capsys, "eval", "--help")
    assert code == 0 and "Measure samples of CHECKPOINT" in out
    assert run_cli(capsys, "hijack-extra")[:2] == (0, "an extra command\n")  # its new command is added


GREETER = """
import click
from toolkit.hookspecs import hookimpl

@hookimpl
def register_commands(cli):
    @cli.command()
    def hello():
        click.echo("hello from {name}")
"""


def test_a_plugin_cannot_replace_another_plugins_command(install_plugin, capsys):
    install_plugin("toolkit-greeter-a", "greeter_a", GREETER.format(name="a"))
    install_plugin("toolkit-greeter-b", "greeter_b", GREETER.format(name="b"))
    for _ in range(2):  # main() twice in one process: the first call's commands do not count as taken
        code, out, err = run_cli(capsys, "hello")
        assert (code, out, err) == (0, "hello from a\n", "")
    code, _, err = run_cli(capsys, "plugins")
    assert code == 0 and err == ("toolkit: warning: plugin 'greeter_b' (toolkit-greeter-b 0.1) cannot replace the "
                                 "command 'hello' (added by plugin 'greeter_a'); the original is kept\n")


@pytest.mark.parametrize("name, reason", [
    ("torch", "the package torch would shadow the installed module torch"),
    ("numpy", "the package numpy would shadow the installed module numpy"),
    ("toolkit", "the package toolkit would shadow the installed module toolkit"),
    ("meanflow", "objective 'meanflow' of plugin 'meanflow' (meanflow-toolkit 0.1.0) has that name"),
    ("checkerboard", "dataset 'checkerboard' of plugin 'toy2d' (meanflow-toolkit 0.1.0) has that name"),
    ("toy2d", "plugin 'toy2d' (meanflow-toolkit 0.1.0) has that name"),
])
def test_plugin_new_refuses_a_name_that_shadows_a_module_or_a_component(tmp_path, capsys, name, reason):
    code, out, err = run_cli(capsys, "plugin", "new", name, "--out", str(tmp_path / "pkg"))
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith(f"toolkit: error: plugin name {name!r}: ") and reason in err, err
    assert not (tmp_path / "pkg").exists()


def test_plugin_new_still_accepts_a_fresh_name(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "plugin", "new", "my_fresh_objective", "--out", str(tmp_path / "pkg"))
    assert code == 0 and (tmp_path / "pkg" / "my_fresh_objective" / "plugin.py").is_file()


CHATTY = """
import click
from toolkit.hookspecs import hookimpl

print("chatty: imported")

@hookimpl
def register_objectives(register):
    print("chatty: registering")
    register("chatty_objective", {"torch": "math:sqrt"})

@hookimpl
def register_commands(cli):
    click.echo("chatty: adding commands")
"""


def test_a_plugin_printing_at_import_leaves_the_json_listing_intact(install_plugin, capsys):
    install_plugin("toolkit-chatty", "chatty", CHATTY)
    code, out, err = run_cli(capsys, "plugins", "--json")
    assert code == 0
    rows = json.loads(out)
    assert {"kind": "objective", "name": "chatty_objective", "plugin": "toolkit-chatty", "version": "0.1",
            "backends": ["torch"], "summary": ""} in rows
    assert err == "chatty: imported\nchatty: registering\nchatty: adding commands\n"
