"""The README stays a short entry point and every link from it, or between docs/ pages, resolves."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import REPO_ROOT

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
README_MAX_BYTES = 12 * 1024


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    lines = page.read_text(encoding="utf-8").splitlines()
    return {github_anchor(line.lstrip("#")) for line in lines if line.startswith("#")}


def local_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)  # code is not a link
    text = re.sub(r"`[^`]*`", "", text)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+://|mailto:", t)]


def test_the_readme_is_a_short_entry_point():
    data = (REPO_ROOT / "README.md").read_bytes()
    assert len(data) <= README_MAX_BYTES, f"README.md is {len(data)} bytes; move reference material into docs/"
    lines = data.decode("utf-8").splitlines()
    assert "make setup && make quantize" in lines[3] and "make test" in lines[4]


def test_every_docs_page_is_linked_from_the_readme():
    readme_links = {Path(t.split("#")[0]).name for t in local_links(REPO_ROOT / "README.md")}
    unlinked = [p.name for p in PAGES[1:] if p.name not in readme_links]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def broken_links(pages: list[Path]) -> list[str]:
    broken = []
    for page in pages:
        for target in local_links(page):
            path_part, _, anchor = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.name}: {target} (no heading with that anchor)")
    return broken


def test_every_local_link_resolves():
    broken = broken_links(PAGES)
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_link_check_catches_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\nSee [there](missing.md) and [here](#title) but not `[code](x.md)`.\n")
    assert local_links(page) == ["missing.md", "#title"]
    assert broken_links([page]) == ["page.md: missing.md (no such file)"]
    page.write_text("# Title\n\n[a heading that moved](#old-title)\n")
    assert broken_links([page]) == ["page.md: #old-title (no heading with that anchor)"]
    assert github_anchor("Caching: what reruns when") == "caching-what-reruns-when"
