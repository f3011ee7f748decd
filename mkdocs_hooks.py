"""mkdocs hook: give mkdocstrings a source tree laid out as the installed package.

``methods/`` and ``tasks/`` sit at the top of the repository but install as
``mtpeft_bench.methods`` and ``mtpeft_bench.tasks`` (setup.py's ``package_dir``). griffe reads
sources, not installs, so before the build this hook mirrors the installed layout with symbolic
links under ``build/api-src/`` (git-ignored), the folder mkdocs.yml points mkdocstrings at.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TREE = ROOT / "build" / "api-src"
SUBPACKAGES = {"methods": ROOT / "methods", "tasks": ROOT / "tasks"}


def on_startup(**_kwargs) -> None:
    """Rebuild ``build/api-src/mtpeft_bench`` from links to the real files."""
    if TREE.exists():
        shutil.rmtree(TREE)
    package = TREE / "mtpeft_bench"
    package.mkdir(parents=True)
    for entry in (ROOT / "mtpeft_bench").iterdir():
        if entry.name not in SUBPACKAGES and entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, folder in SUBPACKAGES.items():
        (package / name).symlink_to(folder)
