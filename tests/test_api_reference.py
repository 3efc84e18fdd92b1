"""The API reference builds from the docstrings (docs/build_api_reference.py, pdoc) without a
warning, and documents every public name of ``toolkit.api``."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import toolkit.api

SCRIPT = Path(__file__).resolve().parent.parent / "docs" / "build_api_reference.py"


def load_builder():
    spec = importlib.util.spec_from_file_location("build_api_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_builds_and_names_every_public_name(tmp_path):
    builder = load_builder()
    assert builder.build(tmp_path) == []
    pages = {m: (tmp_path / (m.replace(".", "/") + ".html")) for m in builder.MODULES}
    assert all(page.is_file() for page in pages.values())
    api_page = pages["toolkit.api"].read_text()
    missing = [name for name in toolkit.api.__all__ if f'id="{name}"' not in api_page]
    assert missing == []


def test_every_public_class_and_function_has_a_docstring():
    undocumented = [name for name in toolkit.api.__all__
                    if (inspect.isclass(obj := getattr(toolkit.api, name)) or inspect.isfunction(obj))
                    and not inspect.getdoc(obj)]
    assert undocumented == []
