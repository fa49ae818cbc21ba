"""The docs stay honest: a short README, and every relative link resolves to a file and a heading."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINKED = [*DOCS, REPO / "clusters" / "README.md", REPO / "REPRODUCTION.md", REPO / "BENCHMARKS.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation (backticks included) dropped, word
    characters, spaces and hyphens kept, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading reads as its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def relative_links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans hold no links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_the_readme_is_short():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move detail into docs/"


def test_the_slug_is_githubs():
    assert slug("Pairs: several α per forward pass") == "pairs-several-α-per-forward-pass"
    assert slug("Learning curves: `history_json`") == "learning-curves-history_json"
    assert slug("One writer per sweep: the lease") == "one-writer-per-sweep-the-lease"
    assert slug("REPAIR's MNIST MLP (Jordan et al. 2023)") == "repairs-mnist-mlp-jordan-et-al-2023"


def test_every_relative_link_in_the_docs_resolves_to_a_file_and_a_heading():
    """README.md, docs/, clusters/README.md, REPRODUCTION.md and BENCHMARKS.md."""
    broken = []
    for doc in LINKED:
        for target in relative_links(doc):
            file, _, anchor = target.partition("#")
            resolved = (doc.parent / file).resolve() if file else doc
            if not resolved.exists():
                broken.append(f"{doc.relative_to(REPO)}: {target} (no such file)")
            elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved)):
                broken.append(f"{doc.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_every_doc_is_linked_from_the_readme():
    readme = set(relative_links(REPO / "README.md"))
    missing = [d.name for d in DOCS[1:] if f"docs/{d.name}" not in readme]
    assert not missing, missing
