"""Each method owns its knowledge: no module outside ``methods/`` decides by a method's name, and
the memory bank and the pairwise label similarity each have one definition."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, List, Set, Tuple

from hybridhash.methods import list_methods

SRC = Path(__file__).resolve().parents[2] / "src" / "hybridhash"
METHODS_DIR = SRC / "methods"
# "hybridhash" is also the package's, its file format's and its architecture's name: in these
# modules it means one of those, not the method
OTHER_SENSES = {("app/rundir.py", "hybridhash"), ("models/factory.py", "hybridhash"),
                ("models/registry.py", "hybridhash"), ("models/weights.py", "hybridhash"),
                ("app/commands/models.py", "hybridhash"), ("app/train/state.py", "hybridhash"),
                ("app/train/run.py", "hybridhash"), ("app/train/fit.py", "hybridhash"),
                ("app/commands/train.py", "hybridhash"), ("models/shallow.py", "hybridhash")}


def _strings(node: ast.AST) -> Iterator[str]:
    """String constants of ``node`` itself, or of a tuple, list or set literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        for item in node.elts:
            yield from _strings(item)


def name_decisions(source: str, names: Set[str]) -> List[Tuple[int, str]]:
    """(line, name) of each comparison, membership test, dict key, subscript or ``.get`` /
    ``.setdefault`` / ``.pop`` key that is one of ``names``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            keys = [s for side in (node.left, *node.comparators) for s in _strings(side)]
        elif isinstance(node, ast.Dict):
            keys = [s for k in node.keys if k is not None for s in _strings(k)]
        elif isinstance(node, ast.Subscript):
            keys = list(_strings(node.slice))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("get", "setdefault", "pop") and node.args):
            keys = list(_strings(node.args[0]))
        else:
            continue
        found += [(node.lineno, k) for k in keys if k in names]
    return found


def test_no_module_outside_methods_decides_by_a_method_name():
    names = set(list_methods())
    assert len(names) >= 10
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if METHODS_DIR in path.parents:
            continue
        where = path.relative_to(SRC).as_posix()
        found += [f"{where}:{line}: {name!r}" for line, name in name_decisions(path.read_text(), names)
                  if (where, name) not in OTHER_SENSES]
    assert not found, "decided by a method's name outside methods/ (make it a property or hook of the method):\n" \
        + "\n".join(found)


def test_the_scan_sees_each_kind_of_decision():
    source = ("a = m == 'dsh'\nb = m in ('x', 'adsh')\nc = {'csq': 1}\nd = t['dnnh']\ne = t.get('cnnh', 0)\n"
              "f = create('dsh')\ng = m == 'other'\n")
    assert name_decisions(source, {"dsh", "adsh", "csq", "dnnh", "cnnh"}) == [
        (1, "dsh"), (2, "adsh"), (3, "csq"), (4, "dnnh"), (5, "cnnh")]


def _definitions(pattern_of) -> List[str]:
    """``module:line`` of each function or class of src/ that ``pattern_of(node)`` recognises."""
    hits = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if pattern_of(node):
                hits.append(f"{path.relative_to(SRC).as_posix()}:{node.lineno}")
    return hits


def _is_similarity(node: ast.AST) -> bool:
    """``a @ b.t() > 0`` (or ``b.T``, ``b.transpose(...)``), with or without casts around a and b."""
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Gt)):
        return False
    right, left = node.comparators[0], node.left
    return (isinstance(right, ast.Constant) and right.value == 0 and isinstance(left, ast.BinOp)
            and isinstance(left.op, ast.MatMult))


def _registers_a_bank(node: ast.AST) -> bool:
    """A class that registers a buffer named "U" (the bank of codes)."""
    if not isinstance(node, ast.ClassDef):
        return False
    return any(isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "register_buffer" and n.args
               and isinstance(n.args[0], ast.Constant) and n.args[0].value == "U" for n in ast.walk(node))


def test_the_pairwise_similarity_is_computed_in_one_place():
    assert len(_definitions(_is_similarity)) == 1, _definitions(_is_similarity)


def test_the_memory_bank_is_defined_once():
    assert len(_definitions(_registers_a_bank)) == 1, _definitions(_registers_a_bank)
