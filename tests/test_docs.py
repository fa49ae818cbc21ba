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


def test_config_md_shows_the_defaults_of_the_pair_keys():
    """docs/config.md's 'Every key' block gives these keys their default values (it showed
    `correction: [none, reset, repair]` while the default plan was `[none, repair]`)."""
    import yaml

    from repair_ray.sweep.config import parse_config

    from .helpers import tiny_sweep

    text = (REPO / "docs" / "config.md").read_text()
    block = text.split("## Every key", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    shown = yaml.safe_load(block)
    minimal = {k: v for k, v in tiny_sweep("d", "/tmp/unused").items() if k not in ("align", "correction", "alphas")}
    config = parse_config(minimal, check_files=False)
    assert shown["align"] == list(config.pair_settings.aligns)
    assert shown["correction"] == list(config.pair_settings.corrections)
    assert shown["alphas"] == len(config.pair_settings.alphas)


def test_library_md_one_pair_by_hand_runs_as_written(mnist):
    """docs/library.md's first example, executed (one epoch instead of two): it trains its two
    networks, aligns, interpolates and repairs them, and analyses the pair."""
    text = (REPO / "docs" / "library.md").read_text()
    code = text.split("## One pair by hand", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "rr.train_model(" in code  # the example trains its networks: no "... train a and b ..."
    scope: dict = {}
    exec(code.replace("epochs=2", "epochs=1"), scope)  # noqa: S102 - our own documentation's code
    rows = {(r["align"], r["correction"]): r for r in scope["result"].pairs}
    assert min(rows[("none", "none")]["endpoint_test_acc_a"], rows[("none", "none")]["endpoint_test_acc_b"]) > 0.9
    assert rows[("activation", "repair")]["midpoint_test_acc"] > rows[("none", "none")]["midpoint_test_acc"]
