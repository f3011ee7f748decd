"""Package discovery for setuptools (everything else is in pyproject.toml).

``methods/`` and ``tasks/`` sit at the top of the repository but install under the package
namespace (``mtpeft_bench.methods``, ``mtpeft_bench.tasks``), so no top-level ``methods`` or
``tasks`` package ever lands in site-packages. Every folder with an ``__init__.py`` under the
three roots ships: a new sub-package cannot be left out of a wheel by forgetting to list it.
"""

from setuptools import find_packages, setup

ROOTS = {"mtpeft_bench": "mtpeft_bench", "mtpeft_bench.methods": "methods", "mtpeft_bench.tasks": "tasks"}


def discover() -> list[str]:
    packages = []
    for name, folder in ROOTS.items():
        packages.append(name)
        packages += [f"{name}.{sub}" for sub in find_packages(folder)]
    return sorted(set(packages))


setup(packages=discover(), package_dir=ROOTS)
