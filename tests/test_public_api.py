"""The public API (``toolkit.api``, with ``toolkit.testing`` for tests) is enough for a plugin:
the package template and the example package import nothing else of the toolkit; and the op
tables objectives are written against have the same names in every backend."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import toolkit.api
from toolkit.cli import main
from toolkit.ops import Ops

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = {"toolkit.api", "toolkit.testing"}


def toolkit_modules_used(path: Path) -> set[str]:
    """Every toolkit module ``path`` imports, or names in ``pytest_plugins``."""
    used = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            used |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            used.add(node.module)
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytest_plugins" for t in node.targets):
            used |= {element.value for element in node.value.elts}
    return {name for name in used if name == "toolkit" or name.startswith("toolkit.")}


def outside_the_api(files) -> dict[str, set[str]]:
    return {str(f): used - PUBLIC for f in files if (used := toolkit_modules_used(f)) - PUBLIC}


def test_the_example_package_uses_the_public_api_only():
    files = sorted((ROOT / "examples" / "imf").glob("[st]*/**/*.py"))
    assert len(files) >= 5  # the sources and the tests
    assert outside_the_api(files) == {}


def test_the_rendered_plugin_template_uses_the_public_api_only(tmp_path):
    assert main(["plugin", "new", "probe", "--out", str(tmp_path / "pkg")]) == 0
    files = sorted((tmp_path / "pkg").rglob("*.py"))
    assert len(files) >= 4
    assert outside_the_api(files) == {}


def test_the_check_sees_an_internal_import(tmp_path):
    module = tmp_path / "plugin.py"
    module.write_text("from toolkit.api import hookimpl\nfrom toolkit.config import check\nimport toolkit.errors\n"
                      "pytest_plugins = ['toolkit.testing']\n")
    assert outside_the_api([module]) == {str(module): {"toolkit.config", "toolkit.errors"}}


def test_every_public_name_resolves_and_the_api_imports_no_framework():
    assert all(hasattr(toolkit.api, name) for name in toolkit.api.__all__)
    assert isinstance(toolkit.api.API_VERSION, tuple) and len(toolkit.api.API_VERSION) == 2
    probe = "import sys, toolkit.api; print(sorted({'torch', 'jax', 'pytest'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def public_names(cls) -> set[str]:
    return {name for klass in cls.__mro__ if klass is not object for name in vars(klass)
            if not name.startswith("_")} - {"name"}


def test_each_backend_op_table_has_every_op_and_no_other(backend):
    ops = toolkit.api.backend_ops(backend)
    assert isinstance(ops, Ops) and ops.name == backend
    assert not getattr(type(ops), "__abstractmethods__", None)  # every primitive implemented
    assert public_names(type(ops)) == public_names(Ops)  # what an objective may use, in every backend
