"""The README and docs/: every relative link and image resolves to a file of the repo (and a #fragment to one of its
headings), the README stays a front page, and user-facing pages state facts rather than how the project was built."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_LIMIT = 12_000  # characters: a page a newcomer reads in two minutes
PAGES = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").rglob("*.md")])
# The research log and the changelog are where the project's history belongs.
HISTORY = {ROOT / "docs" / "research-log.md", ROOT / "CHANGELOG.md"}
# Generated from the code's help texts (python -m pipelines.clidoc): their wording is checked where it is written.
GENERATED = {ROOT / "docs" / "cli.md"}
HOW_BUILT = re.compile(r"\bstop \d+|\bissue \d+|research log,? runs? \d+", re.IGNORECASE)

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")  # [text](target) and ![alt](target); the alt may wrap lines
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def prose(text: str) -> str:
    """The text a reader sees as Markdown, without fenced blocks and code spans (a link written in code is none)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its visible text, lower-cased, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors by its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every #fragment that lands on a heading of ``page`` (a repeated heading gets -1, -2, … as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for h in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        s = slug(h)
        out.add(f"{s}-{seen[s]}" if s in seen else s)
        seen[s] = seen.get(s, 0) + 1
    return out


def broken_links(page: Path) -> list[str]:
    """The relative links and images of ``page`` that point at no file, or at no heading of the file they name."""
    bad = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto: … : not a file of the repo
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.is_relative_to(ROOT) or not dest.exists():
            bad.append(f"{target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            bad.append(f"{target} (no heading #{fragment} in {dest.relative_to(ROOT)})")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert broken_links(page) == [], f"{page.relative_to(ROOT)}: broken links"


def test_readme_is_a_front_page():
    n = len((ROOT / "README.md").read_text(encoding="utf-8"))
    assert n <= README_LIMIT, f"README.md is {n} characters; move detail to docs/ (limit {README_LIMIT})"


@pytest.mark.parametrize("page", sorted(set(PAGES) - HISTORY - GENERATED), ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_state_facts_not_history(page):
    lines = [f"{i}: {line.strip()}" for i, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
             if HOW_BUILT.search(line)]
    assert lines == [], f"{page.relative_to(ROOT)} speaks of how the project was built (that belongs in " \
                        f"docs/research-log.md or CHANGELOG.md)"


def test_the_checker_finds_what_it_should(tmp_path, monkeypatch):
    """A missing file, a missing heading and a link in code: the first two are reported, the third is not."""
    tmp_path = tmp_path.resolve()
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Top\n\n## The `uav eval` step: results\n\n```\n# not a heading\n```\n")
    page = tmp_path / "README.md"
    page.write_text("[ok](docs/a.md#the-uav-eval-step-results) ![img](docs/a.md) [top](#top-page)\n"
                    "[gone](docs/b.md) [bad](docs/a.md#not-a-heading) `[code](docs/c.md)` [web](https://x.org/y)\n"
                    "![a caption that\nwraps](docs/d.png)\n\n# Top page\n")
    assert broken_links(page) == ["docs/b.md (no such file)", "docs/a.md#not-a-heading (no heading #not-a-heading "
                                  "in docs/a.md)", "docs/d.png (no such file)"]
