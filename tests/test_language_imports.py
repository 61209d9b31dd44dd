"""The language package's modules import each other one way: every import of edm_runner.language
sits at a module's top level (none deferred into a function or hidden behind TYPE_CHECKING),
and the imports between its modules form no cycle."""
from __future__ import annotations

import ast
from pathlib import Path

SPEC = Path(__file__).resolve().parent.parent / "edm_runner" / "spec"
PACKAGE = "edm_runner.language"


def _module(path: Path) -> str:
    return PACKAGE if path.stem == "__init__" else f"{PACKAGE}.{path.stem}"


def _imported(node: ast.Import | ast.ImportFrom, submodules: set[str]) -> list[str]:
    """The modules of edm_runner.language that ``node`` imports (``from edm_runner.language import x``
    imports the submodule x when there is one, else a name of the package)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif node.module == PACKAGE:
        names = [f"{PACKAGE}.{a.name}" if f"{PACKAGE}.{a.name}" in submodules else PACKAGE for a in node.names]
    else:
        names = [node.module or ""]
    return [name for name in names if name == PACKAGE or name.startswith(PACKAGE + ".")]


def _imports() -> tuple[dict[str, set[str]], list[str]]:
    """Edges module -> spec modules it imports, and the imports that are not at top level."""
    files = sorted(SPEC.glob("*.py"))
    submodules = {_module(f) for f in files}
    edges: dict[str, set[str]] = {m: set() for m in submodules}
    nested: list[str] = []
    for file in files:
        tree = ast.parse(file.read_text(), str(file))
        top = {id(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets = _imported(node, submodules)
                edges[_module(file)].update(targets)
                if targets and id(node) not in top:
                    nested.append(f"{file.name}:{node.lineno}")
    return edges, nested


def test_spec_imports_of_spec_are_at_top_level():
    assert _imports()[1] == []


def test_spec_modules_import_each_other_without_a_cycle():
    edges, _ = _imports()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        for target in sorted(edges.get(module, ())):
            visit(target, path + [module])
        done.add(module)

    for module in sorted(edges):
        visit(module, [])
