"""The documentation points at things that exist, and the README stays a quick start.

Docs rot silently: a moved file, a renamed heading or a deleted test leaves a link or a
path that nobody follows until a newcomer does. These checks are cheap (text only) and
run in the fast suite.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
# repository paths the docs name in backticks (other prefixes are the official codes')
REPO_PATH = re.compile(r"`((?:src/mlonas|tests|benchmarks|workflow|profiles|\.ci)/[^`\s]*)`")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text("utf-8"))
    return {_slug(m) for m in re.findall(r"^#+\s+(.*)$", text, re.M)}


def _links(path: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", path.read_text("utf-8")))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(doc: Path) -> None:
    """Every relative link names an existing file and, with ``#anchor``, an existing heading."""
    bad = []
    for target in _links(doc):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            bad.append(f"{target} (no file {dest})")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not bad, f"{doc.name}: broken links: {bad}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_named_repository_paths_exist(doc: Path) -> None:
    bad = []
    for name in REPO_PATH.findall(doc.read_text("utf-8")):
        if any(c in name for c in "<{"):  # templates such as logs/<stage>/
            continue
        if not (list(REPO.glob(name)) if "*" in name else (REPO / name).exists()):
            bad.append(name)
    assert not bad, f"{doc.name} names paths that do not exist: {bad}"


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    lines = (REPO / "README.md").read_text("utf-8").splitlines()
    assert len(lines) < 200, f"README.md has {len(lines)} lines; move details to docs/"
    head = lines[:15]
    install = "pip install -e '.[dev]' && snakemake --cores all --config preset=demo"
    assert any(install in line for line in head), "the install + demo command is not on top"
    # the test command is CI's, verbatim (.ci/run runs what the README tells users to run)
    ci = (REPO / ".ci/run").read_text("utf-8").strip().splitlines()[-1]
    assert any(line.endswith(ci) for line in head), f"README's first lines lack {ci!r}"


def test_design_sections_cited_by_the_code_exist() -> None:
    """``(docs/design.md, "Section")`` in src/ and tests/ names a heading of docs/design.md."""
    design = (REPO / "docs/design.md").read_text("utf-8")
    headings = {m.strip() for m in re.findall(r"^#+\s+(.*)$", design, re.M)}
    cited = set()
    for path in [*(REPO / "src").rglob("*.py"), *(REPO / "tests").rglob("*.py")]:
        if path == Path(__file__).resolve():
            continue
        text = " ".join(path.read_text("utf-8").split())  # a citation may wrap lines
        cited |= set(re.findall(r"design\.md,? \"([^\"]+)\"", text, re.I))
    assert cited, "no code cites a section of the design any more: drop this test"
    missing = sorted(c for c in cited if c not in headings)
    assert not missing, f"sections cited by the code but not in docs/design.md: {missing}"


def test_code_names_only_files_that_exist() -> None:
    """The code's docstrings and comments send readers to tests/… and docs/… files that
    exist, and no longer to the design's old home outside the repository (DESIGN.md)."""
    bad = []
    for path in [*(REPO / "src").rglob("*.py"), *(REPO / "tests").rglob("*.py")]:
        if path == Path(__file__).resolve():
            continue
        text = path.read_text("utf-8")
        for name in re.findall(r"\b((?:tests|docs)/[\w/.-]+\.(?:py|md))", text):
            if not (REPO / name).exists():
                bad.append(f"{path.relative_to(REPO)}: {name}")
        if re.search(r"(?<![\w/])DESIGN\.md", text):
            bad.append(f"{path.relative_to(REPO)}: DESIGN.md (now docs/design.md)")
    assert not bad, f"references to files that do not exist: {bad}"
