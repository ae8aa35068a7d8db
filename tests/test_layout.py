"""The package's shape: no import circles (function-level imports included), the library apart
from the program (``hybridhash.app``), modules small enough to read in one sitting, each with its
opening line, and tests that mirror the source tree (one obvious home for a new test)."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "hybridhash"
PROGRAM = "hybridhash.app"
MAX_LINES = 450


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> Dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _imports(name: str, path: Path, known: Set[str]) -> Set[str]:
    """Modules of the package that ``name`` imports anywhere in its file."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: Set[str] = set()
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", getattr(block.test, "attr", None)) == "TYPE_CHECKING"
                   for stmt in block.body for n in ast.walk(stmt)}  # never run
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the submodule when there is one
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
            if node.level and mod not in known:
                found.add(f"<missing {mod}>")  # a relative import of a module that does not exist
                continue
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> Dict[str, Set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_relative_import_names_a_module_of_the_package():
    missing = {m: sorted(d for d in deps if d.startswith("<missing")) for m, deps in _graph().items()}
    assert {m: d for m, d in missing.items() if d} == {}


def test_the_checker_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    # a package's __init__ importing its submodules is fine; one of them importing the package back is a circle
    assert _cycles(_graph()) == []


def _program(module: str) -> bool:
    return module == PROGRAM or module.startswith(PROGRAM + ".")


def test_the_library_never_imports_the_program():
    # every module outside hybridhash.app, found by walking the tree, not listed by hand
    graph = _graph()
    library = [m for m in graph if not _program(m)]
    assert len(library) > 40 and any(_program(m) for m in graph)
    bad = {m: sorted(d for d in graph[m] if _program(d)) for m in library}
    assert {m: d for m, d in bad.items() if d} == {}


def test_the_rule_sees_a_library_module_importing_the_program(tmp_path):
    """The import scan on a made-up library module that reaches the program three ways."""
    path = tmp_path / "codes.py"
    path.write_text("from .app import cli\nfrom .app.train import loop\n"
                    "def f():\n    import hybridhash.app.serve\n")
    known = {"hybridhash", "hybridhash.codes", "hybridhash.app", "hybridhash.app.cli", "hybridhash.app.train",
             "hybridhash.app.train.loop", "hybridhash.app.serve"}
    found = _imports("hybridhash.codes", path, known)
    assert sorted(d for d in found if _program(d)) == ["hybridhash.app.cli", "hybridhash.app.serve",
                                                       "hybridhash.app.train.loop"]


@pytest.mark.parametrize("name", sorted(_modules()))
def test_modules_are_small_and_say_what_they_hold(name):
    path = _modules()[name]
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_LINES, f"{path} has {len(text.splitlines())} lines"
    doc = ast.get_docstring(ast.parse(text))
    assert doc and doc.strip(), f"{path} has no opening docstring"


def test_the_command_line_builds_without_torch():
    """``hybridhash --help`` must answer at once: building every parser imports no torch, timm or FastAPI."""
    import subprocess
    import sys

    code = ("import sys; from hybridhash.app.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'timm', 'fastapi') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ----------------------------------------------------------------------------------------------
# the tests mirror the source tree

TESTS = Path(__file__).resolve().parent
# tests of the package as a whole (its shape, its docs, one home per concept), not of one module
PACKAGE_WIDE = {"test_layout.py", "test_docs.py", "test_one_home.py"}
# folders of tests sorted by something else than the module: bad inputs by kind of input
NOT_MIRRORED = {"bad_inputs", "helpers", "fixtures"}


def home_of(test: Path) -> str:
    """Why ``test`` (a tests/**/test_*.py file) is where it is, or "" when it has no home there: its
    folder must mirror a package of src/hybridhash and its name a module or sub-package of that
    package (``test_<module>.py``, ``test_<module>_<topic>.py``) or the package itself."""
    rel = test.relative_to(TESTS)
    folder, stem = rel.parent, test.stem[len("test_"):]
    if folder.parts and folder.parts[0] in NOT_MIRRORED:
        return "not mirrored"
    if not folder.parts and test.name in PACKAGE_WIDE:
        return "package-wide"
    package = SRC.joinpath(*folder.parts)
    if not (package / "__init__.py").is_file():
        return ""
    names = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    names |= {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    names |= {package.name}
    for name in sorted(names, key=len, reverse=True):
        if stem == name or stem.startswith(name + "_"):
            return f"{'/'.join(folder.parts + (name,))}"
    return ""


def test_every_test_file_mirrors_a_module():
    tests = sorted(p for p in TESTS.rglob("test_*.py"))
    assert len(tests) > 30
    homeless = [str(t.relative_to(TESTS)) for t in tests if not home_of(t)]
    assert homeless == [], "tests/<package path>/test_<module>.py is the home of a module's tests"


def test_the_mirror_rule_places_tests(tmp_path):
    assert home_of(TESTS / "test_codes.py") == "codes"
    assert home_of(TESTS / "methods" / "test_shallow.py") == "methods/shallow"
    assert home_of(TESTS / "app" / "test_serve_browser.py") == "app/serve"
    assert home_of(TESTS / "models" / "test_models.py") == "models/models"  # the package itself
    assert home_of(TESTS / "test_train.py") == ""  # training is app/train: its tests live in tests/app/
    assert home_of(TESTS / "nowhere" / "test_codes.py") == ""
