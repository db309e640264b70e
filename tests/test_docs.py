"""The README and the documentation pages link only to files and headings that exist."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def slug(heading: str) -> str:
    """The anchor mkdocs gives a heading (Python-Markdown's toc slugify, markup removed)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").replace("*", "")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a markdown page (a repeated heading gets ``_1``, ``_2``, ...)."""
    found: set[str] = set()
    for heading in _HEADING.findall(_FENCE.sub("", page.read_text(encoding="utf-8"))):
        base, n = slug(heading), 0
        name = base
        while name in found:
            n += 1
            name = f"{base}_{n}"
        found.add(name)
    return found


def broken_links(page: Path, root: Path) -> list[str]:
    """The links of ``page`` to a missing file or heading; ``root``: the folder links may not leave."""
    text = _CODE.sub("", _FENCE.sub("", page.read_text(encoding="utf-8")))
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.is_relative_to(root.resolve()):
            broken.append(f"{target} (outside {root.name}/)")
        elif not dest.is_file():
            broken.append(f"{target} (no such file)")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            broken.append(f"{target} (no such heading)")
    return broken


def test_there_are_documentation_pages():
    assert len(PAGES) >= 8


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_a_docs_page_links_only_to_pages_images_and_headings_of_the_site(page):
    assert broken_links(page, DOCS) == []


def test_the_readme_links_only_to_files_and_headings_that_exist():
    assert broken_links(ROOT / "README.md", ROOT) == []


def test_a_link_to_a_missing_file_or_heading_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# Title\n\n## A `flag`: here\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#a-flag-here) [ok](#mine) [ok](https://example.com/x)\n"
        "## Mine\n"
        "[file](missing.md) [heading](other.md#nope) [up](../x.md)\n"
        "```\n[in code](ignored.md)\n```\n"
    )
    (tmp_path.parent / "x.md").touch()
    assert broken_links(page, tmp_path) == [
        "missing.md (no such file)",
        "other.md#nope (no such heading)",
        "../x.md (outside " + tmp_path.name + "/)",
    ]


def test_every_page_in_the_site_navigation_exists():
    nav = re.findall(r"^\s+- [^:]+:\s*(\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)
    assert nav and [p for p in nav if not (DOCS / p).is_file()] == []


def test_the_readme_is_one_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150
