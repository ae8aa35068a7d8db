"""The documentation: a README that fits on a page and starts with the set-up, pages short enough to
read in one sitting, links that lead somewhere, a section per registered method, an architecture
picture that matches the import graph, and no citation of documents the repository does not hold."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from .test_layout import _graph

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 150
PAGE_MAX_LINES = 200  # a page read in one sitting
SETUP = ("make demo   # creates .venv, installs, trains on the embedded digits, evaluates, indexes, searches\n"
         "make test   # creates .venv if needed and runs the test suite")

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
# documents that were never part of the repository, by name (the names are split so that this
# file does not match its own patterns)
_OUTSIDE = re.compile(r"\b(?:SPEC|METHODS|STYLE)\.md\b")
_OUTSIDE_SECTION = re.compile(r"\bSPEC\s+sec(?:tion)?\b")


def _pages() -> List[Path]:
    return [README] + sorted(DOCS.rglob("*.md"))


def _prose(text: str) -> str:
    """Markdown without fenced blocks and code spans, where brackets are code, not links."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set:
    return {_slug(h) for h in _HEADING.findall(_FENCE.sub("", page.read_text()))}


def _links(page: Path) -> List[str]:
    return [t for t in _LINK.findall(_prose(page.read_text())) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


# ------------------------------------------------------------------------------------------------
# the readers themselves


def test_the_link_reader_skips_code_and_urls():
    text = ("[a](a.md) ![b](img/b.png \"title\") [c](https://example.org) `[d](d.md)`\n"
            "```\n[e](e.md)\n```\n[f](#frag)\n")
    assert [t for t in _LINK.findall(_prose(text)) if not re.match(r"[a-z][a-z0-9+.-]*:", t)] == \
        ["a.md", "img/b.png", "#frag"]


def test_slugs_follow_github():
    assert _slug("Codes, splits and model selection") == "codes-splits-and-model-selection"
    assert _slug("`hybridhash` on a CPU: PyTorch") == "hybridhash-on-a-cpu-pytorch"
    assert _slug("dsh") == "dsh"


# ------------------------------------------------------------------------------------------------
# the front door


def test_the_readme_fits_on_a_page():
    n = len(README.read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; move detail to docs/"


def test_the_readme_starts_with_the_two_setup_commands():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)\n```", text, re.S)
    assert first_block is not None and first_block.start() < text.index("\n## ")
    assert first_block.group(1) == SETUP
    targets = set(re.findall(r"^([a-z]+):", (ROOT / "Makefile").read_text(), re.M))
    assert {"demo", "test"} <= targets


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_are_read_in_one_sitting(page):
    n = len(page.read_text().splitlines())
    assert n <= PAGE_MAX_LINES, f"{page.relative_to(ROOT)} has {n} lines; split it"


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken: List[Tuple[str, str]] = []
    for target in _links(page):
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append((target, "no such file"))
        elif fragment and dest.suffix == ".md" and fragment not in _anchors(dest):
            broken.append((target, "no such heading"))
    assert broken == []


def test_the_readme_links_every_page():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in _links(README)}
    assert [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked] == []


# ------------------------------------------------------------------------------------------------
# the pages against the code


def test_every_method_has_its_section():
    from hybridhash.methods import list_methods

    # methods.md, and roster.md for the rest of DeepHash-pytorch's roster (one page would not be read in one sitting)
    sections = {h for page in ("methods.md", "roster.md", "mdshc.md")
                for h in _HEADING.findall(_FENCE.sub("", (DOCS / page).read_text()))}
    names = list_methods()
    assert len(names) >= 10
    assert [n for n in names if n not in sections] == []


def _layers() -> Dict[str, int]:
    """Unit (a top-level module, or ``app/<module>`` of the program) -> layer number (0 the lowest)
    from the picture in docs/architecture.md."""
    picture = re.search(r"```\n(.*?)\n```", (DOCS / "architecture.md").read_text(), re.S).group(1)
    names = ("foundation", "library", "pipeline", "program")
    modules = set(_units().values())
    layer, found = None, {}
    for line in picture.splitlines():
        words = line.split()
        if words and words[0] in names:
            layer = names.index(words[0])
        for word in words:
            if word.rstrip("/") in modules and word.rstrip("/") not in found:
                found[word.rstrip("/")] = layer
    return found


def _units() -> Dict[str, str]:
    """Module -> its unit in the picture: ``hybridhash.codes`` -> ``codes``, ``hybridhash.app.train.loop``
    -> ``app/train``."""
    units = {}
    for m in _graph():
        parts = m.split(".")
        if len(parts) > 2 and parts[1] == "app":
            units[m] = "app/" + parts[2]
        elif len(parts) > 1 and parts[1] != "app":
            units[m] = parts[1]
    return units


def test_the_architecture_picture_matches_the_imports():
    layers = _layers()
    graph = _graph()
    top = _units()
    assert sorted(set(top.values()) - set(layers)) == [], "modules missing from docs/architecture.md"
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() if m in top
                    for d in deps if d in top and layers[top[d]] > layers[top[m]])
    assert upward == [], "imports from a higher layer than the picture allows"


def _sources() -> List[Path]:
    return sorted(p for folder in ("src", "tests") for p in (ROOT / folder).rglob("*")
                  if p.suffix in (".py", ".md", ".txt", ".cfg", ".toml") and p.is_file())


def test_the_outside_document_patterns_match():
    assert _OUTSIDE.search("see " + "SPEC" + ".md section 5") and _OUTSIDE.search("(" + "METHODS" + ".md)")
    assert not _OUTSIDE.search("_METHODS: Dict") and not _OUTSIDE.search("docs/methods.md")
    assert _OUTSIDE_SECTION.search("(" + "SPEC" + " section 7)") and _OUTSIDE_SECTION.search("SPEC" + " sec 6")
    assert not _OUTSIDE_SECTION.search("_SPECIAL = ")


def test_nothing_cites_documents_outside_the_repository():
    found = [f"{p.relative_to(ROOT)}:{i}" for p in _sources()
             for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if _OUTSIDE.search(line)]
    assert not found, "cite a page of docs/ or the paper instead: " + ", ".join(found)


def test_nothing_cites_sections_of_a_specification_outside_the_repository():
    found = [f"{p.relative_to(ROOT)}:{i}" for p in _sources()
             for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if _OUTSIDE_SECTION.search(line)]
    assert not found, "cite a page of docs/ instead: " + ", ".join(found)
