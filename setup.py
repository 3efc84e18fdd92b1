"""Package discovery for the folder mapping declared in pyproject.toml.

`backends/` and `plugins/` are installed as `toolkit.backends` and `toolkit.plugins`;
setuptools' declarative `find` cannot add that prefix, so the list is computed here.
"""

from setuptools import find_packages, setup

MAPPED = {"toolkit": "toolkit", "toolkit.backends": "backends", "toolkit.plugins": "plugins"}

packages = []
for package, folder in MAPPED.items():
    packages.append(package)
    packages += [f"{package}.{sub}" for sub in find_packages(folder)]

setup(packages=sorted(set(packages)))
