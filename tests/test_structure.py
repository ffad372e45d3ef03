"""Laws of the code's shape, read from its syntax trees: modules import each other without a circle (lazy imports
inside functions and TYPE_CHECKING imports included), only the ball module knows the norms' names, no core function
(train/ included) grows past 80 lines, and the run settings' defaults are written only in robustsim/settings.py."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"robustsim": "robustsim", "attacks": "robustsim.attacks", "certify": "robustsim.certify",
            "train": "robustsim.train"}  # fmt: skip
CORE = ("robustsim", "attacks", "certify", "train")


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The module of ours that ``name`` (a module or a module's attribute) lives in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: Path) -> set[str]:
    """The modules of ours ``path`` imports anywhere: module level, inside functions, and under TYPE_CHECKING (a
    type-only arrow back is still two modules that need each other; a Protocol breaks it)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for alias in child.names:
                    owner = _owner(f"{child.module}.{alias.name}") or _owner(child.module)
                    if owner:
                        found.add(owner)
            elif isinstance(child, ast.Import):
                found.update(o for o in (_owner(a.name) for a in child.names) if o)
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                out.append(sorted(part))

    for v in list(edges):
        if v not in index:
            strong(v)
    return out


def test_no_module_imports_back_into_a_circle_even_lazily():
    """Package ``__init__`` files only re-export (lazily), so the modules themselves must form a DAG: a lazy
    import inside a function that closes a circle (certify2afc -> radius -> certify2afc) counts too."""
    hubs = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    edges: dict[str, set[str]] = defaultdict(set)
    for module, path in MODULES.items():
        if module not in hubs:
            edges[module] = {m for m in _imports(path) if m != module and m not in hubs}
    assert _cycles(edges) == []


def test_the_detector_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _norm_comparisons(tree: ast.AST) -> list[int]:
    """Lines comparing something with the string "l2" or "linf" (==, !=, in, not in a literal collection)."""
    names = {"l2", "linf"}

    def literal(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in names
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(literal(e) for e in node.elts)
        return False

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(literal(x) for x in (node.left, *node.comparators)):
            lines.append(node.lineno)
    return lines


def test_only_the_ball_module_compares_norm_names():
    """Norm geometry lives in robustsim/ball.py: measure, project, start, membership, radii, axes."""
    found = {
        str(path.relative_to(ROOT)): lines
        for module, path in MODULES.items()
        if module != "robustsim.ball" and (lines := _norm_comparisons(ast.parse(path.read_text())))
    }
    assert found == {}


def test_the_norm_comparison_scan_sees_each_form():
    code = 'a = x == "l2"\nb = "linf" != y\nc = n in ("l2", "linf")\nd = e if f == "l2" else g\nh = x == "l1"\n'
    assert _norm_comparisons(ast.parse(code)) == [1, 2, 3, 4]


def test_no_core_function_is_longer_than_80_lines():
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for module, path in MODULES.items()
        if path.relative_to(ROOT).parts[0] in CORE
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80
    ]
    assert long == []


@pytest.mark.parametrize("value", [0.001, 512, 2000, 2.5])
def test_a_settings_default_is_written_only_in_settings(value):
    """ALPHA, the smoothing sample counts, center smoothing's centre draws and the PGD step size: no other module
    writes these numbers as an argument's or an option's default; each reads them from robustsim.settings."""
    where = []
    for module, path in MODULES.items():
        if module == "robustsim.settings":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            defaults: list[ast.AST] = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                defaults = [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]
            elif isinstance(node, ast.Call):
                defaults = [k.value for k in node.keywords if k.arg == "default"]
            numbers = [d for d in defaults if isinstance(d, ast.Constant) and type(d.value) in (int, float)]
            where += [f"{path.relative_to(ROOT)}:{d.lineno}" for d in numbers if d.value == value]
    assert where == []
