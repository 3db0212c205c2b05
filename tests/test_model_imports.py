"""model/'s modules import one another one way: no cycle, even through imports inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

MODEL = Path(__file__).resolve().parents[1] / "model"


def _module_name(path: Path) -> str:
    parts = path.relative_to(MODEL.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(path: Path) -> set[str]:
    """`model.*` modules imported anywhere in the file (functions included), except under `if TYPE_CHECKING:`."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "model":
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "model")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in MODEL.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in files and m != name} for name, path in files.items()}


def test_no_module_imports_the_model_package_itself() -> None:
    offenders = sorted(name for name, deps in _graph().items() if name != "model" and "model" in deps)
    assert offenders == []


@pytest.mark.parametrize("start", sorted(_graph()))
def test_imports_have_no_cycle(start: str) -> None:
    graph = _graph()
    packages = {n for n in graph if (MODEL.parent / n.replace(".", "/") / "__init__.py").is_file()}

    def deps(name: str) -> set[str]:
        # a package's __init__ re-exports its modules: stepping into it from inside is not a cycle of code
        return {d for d in graph[name] if not (d in packages and name.startswith(d + "."))}

    path: list[str] = []

    def walk(name: str) -> None:
        assert name not in path, f"import cycle: {' -> '.join([*path[path.index(name) :], name])}"
        path.append(name)
        for dep in sorted(deps(name)):
            walk(dep)
        path.pop()

    walk(start)
