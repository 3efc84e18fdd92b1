"""Build the API reference (HTML, from the docstrings, with pdoc) of the modules a plugin
author reads: ``python docs/build_api_reference.py [OUT]`` (default ``docs/api``; ``make docs``).
tests/test_api_reference.py builds it on every run of the suite, so it cannot rot."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

#: the public API, and the contract it points into
MODULES = ("toolkit.api", "toolkit.ops", "toolkit.interfaces", "toolkit.hookspecs", "toolkit.draws",
           "toolkit.testing")


def build(out: Path) -> list[str]:
    """Write the reference into ``out``; return pdoc's warnings (unresolvable links and the like)."""
    import pdoc

    pdoc.render.configure(search=False, show_source=False, docformat="restructuredtext")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*MODULES, output_directory=Path(out))
    return [str(w.message) for w in caught]


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "api")
    problems = build(out)
    print("\n".join(problems) or f"API reference in {out}/index.html")
    sys.exit(1 if problems else 0)
