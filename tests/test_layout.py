"""The house rules of the repository's layout: scripts are entry points only, every package says what it holds, the
README is a page that links every doc, and no file cites a document the repository does not hold."""

from __future__ import annotations

import ast
import re
import subprocess

import pytest
from helpers import REPO

PACKAGES = [
    "modeling_missrec",
    "configuration",
    "pipelines",
    "pipelines/data",
    "pipelines/training",
    "pipelines/evaluation",
    "pipelines/conversion",
    "hub_cards",
    "hub_cards/space",
]


def tracked(*patterns: str) -> list:
    """The repository's tracked files matching `patterns`, without the test fixtures and benchmark records."""
    names = subprocess.run(["git", "ls-files", *patterns], cwd=REPO, capture_output=True, text=True, check=True)
    files = [REPO / n for n in names.stdout.split() if not n.startswith(("tests/fixtures/", "bench/results/"))]
    if not files:
        pytest.skip("not a git checkout")
    return files


def test_nothing_imports_the_training_scripts():
    """`train.py` and `tune.py` are argument parsing and `main` over the library: no module imports them."""
    for path in tracked("*.py"):
        if path.name in ("train.py", "tune.py") and path.parent == REPO:
            continue
        text = path.read_text()
        assert not re.search(r"import_module\(\s*[\"'](train|tune)[\"']", text), path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module]
            else:
                continue
            assert not {n.split(".")[0] for n in names} & {"train", "tune"}, f"{path} imports {names}"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_says_what_it_holds(package):
    docstring = ast.get_docstring(ast.parse((REPO / package / "__init__.py").read_text()))
    assert docstring and len(docstring.split()) >= 15, f"{package}/__init__.py needs a docstring of what it holds"


def test_the_readme_is_a_page_that_links_every_doc():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"(docs/{page.name}" in readme, f"the README does not link docs/{page.name}"


def test_no_file_cites_a_document_the_repository_does_not_hold():
    """Every markdown file name a file mentions is a file of the repository, and every relative link of a page
    resolves."""
    files = tracked("*.py", "*.md", "*.yaml", "*.toml")
    held = {path.name for path in tracked()}
    for path in files:
        text = path.read_text()
        for name in set(re.findall(r"(?<![\w*-])([A-Za-z0-9][\w-]*\.md)\b", text)):
            assert name in held, f"{path.relative_to(REPO)} cites {name}, which the repository does not hold"
        if path.suffix == ".md":
            for target in re.findall(r"\]\(([^){#:]+)(?:#[^)]*)?\)", text):  # {{ }}: a card template's field
                assert (path.parent / target).exists(), f"{path.relative_to(REPO)} links {target}, which is missing"
