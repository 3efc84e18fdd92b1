"""``toolkit plugin new NAME``: a ready plugin package from ``toolkit/plugin_template``.

The package registers one objective, ``NAME``, in both backends (a scaled flow-matching loss
to replace with yours), declares its entry point, and has tests that run the toolkit's
shared checks and the parity of its two backends through the toolkit's pytest plugin.
"""

from __future__ import annotations

import importlib.util
import keyword
import re
import string
from pathlib import Path

from toolkit.errors import UsageError

TEMPLATE = Path(__file__).with_name("plugin_template")


def render_plugin(name: str, out: str | Path) -> list[Path]:
    """Write the package for component ``name`` into the folder ``out`` (which must not exist
    or be empty); returns the files written."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise UsageError(f"plugin name {name!r}: expected a lowercase Python identifier such as my_objective "
                         f"(it names the component, the module and the entry point)")
    distribution = f"toolkit-{name.replace('_', '-')}"
    _refuse_taken(name, distribution)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} exists and is not empty; choose another --out")
    values = {"name": name, "package": name, "distribution": distribution}
    written = []
    for source in sorted(TEMPLATE.rglob("*.tmpl")):
        relative = source.relative_to(TEMPLATE).with_suffix("")  # drop .tmpl
        parts = [name if part == "package" else part for part in relative.parts]
        if parts[-1] == "test_package.py":
            parts[-1] = f"test_{name}.py"
        target = out.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(string.Template(source.read_text()).substitute(values))
        written.append(target)
    return written


def _refuse_taken(name: str, distribution: str) -> None:
    """Refuse a package that would shadow an importable module, a name a component or plugin
    has, or a distribution name an installed package has (pip would replace it)."""
    from importlib import metadata

    from toolkit.registry import get_registry

    try:
        installed = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        installed = None
    if installed is not None:
        raise UsageError(f"plugin name {name!r}: its distribution {distribution} is installed already "
                         f"(version {installed.version}); installing the new package would replace it. "
                         f"Choose another name")

    spec = importlib.util.find_spec(name)
    if spec is not None:
        where = spec.origin or "a namespace package"
        raise UsageError(f"plugin name {name!r}: the package {name} would shadow the installed module {name} "
                         f"({where}); choose another name")
    holder = get_registry().holder_of(name)
    if holder is not None:
        raise UsageError(f"plugin name {name!r}: {holder} has that name already; choose another name")
