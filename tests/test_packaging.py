"""What `pip install .` puts into site-packages: only the `toolkit` package (no generic
top-level `plugins` or `backends`), with the built-ins declared as entry points."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from tests_paths import REPO


def test_wheel_installs_everything_under_the_toolkit_namespace(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "build", "*.egg-info",
                                                                "__pycache__", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True, text=True)
    [wheel] = (tmp_path / "dist").glob("meanflow_toolkit-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"toolkit", "meanflow_toolkit-0.1.0.dist-info"}
    for module in ["toolkit/backends/torch/engine.py", "toolkit/backends/jax/engine.py",
                   "toolkit/plugins/flow_matching/objective.py", "toolkit/plugins/mlp/torch.py", "toolkit/cli.py",
                   "toolkit/plugin_template/pyproject.toml.tmpl",  # `toolkit plugin new` works from a wheel
                   "toolkit/plugin_template/package/objective.py.tmpl",
                   "toolkit/plugin_template/tests/test_package.py.tmpl"]:
        assert module in names
    assert "[toolkit]\n" in entry_points and "flow_matching = toolkit.plugins.flow_matching" in entry_points
    assert "toolkit = toolkit.cli:main" in entry_points
    assert "pytest11" not in entry_points  # the pytest plugin is turned on by a project, never by installing
