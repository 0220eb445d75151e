"""The documentation stays true to the code: the README is a front door (300 lines at most),
every link between the docs resolves, every test and bench a doc names exists, and the table
schemas in docs/store-format.md are the ones the store writes with."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md", ROOT / "CHANGELOG.md"]


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines: move detail into docs/"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_relative_link_resolves(doc):
    """Links to files (and to headings in them) point at something that exists."""
    text = doc.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        assert dest.exists(), f"{doc.name}: link to {target} has no file"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest.read_text()), f"{doc.name}: link to {target}: no such heading"


def anchors(markdown: str) -> set[str]:
    """The heading anchors GitHub makes: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", "")).replace(" ", "-")
        out.add(slug)
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_test_and_bench_a_doc_names_exists(doc):
    text = doc.read_text()
    for file, name in re.findall(r"tests/(test_\w+\.py)::(test_\w+)", text):
        source = ROOT / "tests" / file
        assert source.exists(), f"{doc.name} names {file}, which does not exist"
        assert re.search(rf"^def {name}\(", source.read_text(), re.M), f"{doc.name} names {file}::{name}: no such test"
    for file in re.findall(r"tests/(test_\w+\.py)", text):
        assert (ROOT / "tests" / file).exists(), f"{doc.name} names tests/{file}, which does not exist"
    for file in re.findall(r"bench/(\w+\.py)", text):
        assert (ROOT / "bench" / file).exists(), f"{doc.name} names bench/{file}, which does not exist"


def test_the_store_format_schemas_are_the_stores_own():
    gen = runpy.run_path(str(ROOT / "docs" / "store_schemas.py"))
    text = gen["DOC"].read_text()
    assert gen["block"](text) == gen["render"](), f"docs/store-format.md's schemas are stale: run `{gen['REGENERATE']}`"
