"""Every document the code and the docs point to exists in the repository.

Docstrings and comments cite the protocol and the DiTASK page by file and section
(``docs/protocol.md 4.4``); markdown files link to each other. A citation of a document that is not
in the repository (the design notes the project grew from, for instance) leaves a user with a
reference they cannot read, so this test fails on it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCE_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".json"}
SKIP_PARTS = {".git", "build", "site", "runs", "__pycache__", ".ci-venv", ".venv", "venv", "node_modules"}
# Documents that exist only outside this repository; nothing in it may cite them.
FOREIGN_DOCS = ("PROTOCOL.md", "DITASK.md", "DESIGN.md", "STYLE.md", "ENV.md", "TADFORMER.md", "PUBLISHED.md")
DOC_PATH = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w.-]+\.md)(?:#[\w-]+)?")
MD_LINK = re.compile(r"\]\(([^)\s]+?)(?:#[^)]*)?\)")


def repository_files():
    for path in sorted(REPO.rglob("*")):
        if path.is_file() and path.suffix in SOURCE_SUFFIXES and not SKIP_PARTS & set(path.relative_to(REPO).parts):
            yield path


def _resolves(reference: str, source: Path) -> bool:
    """A path is read relative to the citing file (markdown links), the repository root, the docs
    folder (mkdocs.yml's navigation) or the package (its package data)."""
    bases = (source.parent, REPO, REPO / "docs", REPO / "mtpeft_bench")
    return any((base / reference).exists() for base in bases)


def test_no_citation_of_a_document_outside_the_repository():
    offenders = []
    for path in repository_files():
        if path.name == Path(__file__).name:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for name in FOREIGN_DOCS:
            for match in re.finditer(rf"(?<![\w/]){re.escape(name)}", text):
                line = text.count("\n", 0, match.start()) + 1
                offenders.append(f"{path.relative_to(REPO)}:{line}: {name}")
    assert not offenders, "citations of documents that are not in the repository:\n" + "\n".join(offenders)


def test_every_cited_document_exists():
    missing = []
    for path in repository_files():
        if path.name == Path(__file__).name:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        references = set(DOC_PATH.findall(text))
        if path.suffix == ".md":
            references |= {link for link in MD_LINK.findall(text) if "://" not in link and not link.startswith("#")}
        for reference in sorted(references):
            # In code, a bare file name is usually one that the code writes (``table.md``); a
            # citation names its folder (``docs/protocol.md``).
            if path.suffix == ".md" or "/" in reference or path.suffix in {".yml", ".yaml"}:
                if not _resolves(reference, path) and reference not in FOREIGN_DOCS:
                    missing.append(f"{path.relative_to(REPO)}: {reference}")
    assert not missing, "references to files that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize("page", ["protocol.md", "ditask.md"])
def test_cited_sections_exist(page):
    """``docs/protocol.md 4.4`` must name a section that the page has."""
    headings = (REPO / "docs" / page).read_text(encoding="utf-8")
    numbers = set(re.findall(r"^#+\s+(\d+(?:\.\d+)*)\.?\s", headings, flags=re.M))
    cited = []
    for path in repository_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in re.finditer(rf"docs/{page}(?:,? §| section | )(\d+(?:\.\d+)*)", text):
            number = match.group(1).rstrip(".")
            if number not in numbers:
                cited.append(f"{path.relative_to(REPO)}: {page} {number}")
    assert not cited, f"sections of docs/{page} that do not exist:\n" + "\n".join(cited)
