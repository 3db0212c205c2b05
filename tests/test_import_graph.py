"""The layout's promise: every module imports, and the project's modules import each other without a cycle.

The graph is read from the source with `ast`: every `import` and `from ... import`, at the top of a module or inside
a function (a lazy import still ties two modules together), except those under `if TYPE_CHECKING:` (type hints
only). A cycle is reported with the modules on it, so the failure says which import to move.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "model", "tasks", "sweeper", "analysis", "hydra_plugins")

# Packages whose modules must import each other without a cycle (all of the project's).
ACYCLIC = ("common", "model", "tasks", "sweeper", "analysis")


def project_modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement of a module, skipping `if TYPE_CHECKING:` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (n for child in node.orelse for n in _imports(ast.Module(body=[child], type_ignores=[])))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _imports(node)


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """`name` if it is a project module, else its longest prefix that is (`tasks.judge.X` -> `tasks.judge`)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(_known(alias.name, modules) for alias in node.names)
                continue
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                targets.add(_known(f"{base}.{alias.name}", modules) or _known(base, modules))
        graph[name] = {t for t in targets if t is not None and t != name}
        # importing `a.b.c` first runs `a/b/__init__`: an edge too, unless `a.b` is this module's own package
        # (then it is already being imported)
        own = {name.rsplit(".", n)[0] for n in range(name.count(".") + 1)}
        graph[name] |= {parent for t in graph[name] for parent in _parents(t) if parent not in own}
    return graph


def _parents(name: str) -> list[str]:
    """`a.b.c` -> [`a`, `a.b`]."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as error:
        return list(error.args[1])
    return None


def test_every_module_imports() -> None:
    failures = []
    for name in project_modules():
        if name.endswith("__main__"):
            continue  # runs its command when imported; its import is checked through the package's `main`
        try:
            importlib.import_module(name)
        except Exception as error:
            failures.append(f"{name}: {type(error).__name__}: {error}")
    assert not failures, "\n".join(failures)


def test_the_project_packages_import_each_other_without_a_cycle() -> None:
    modules = project_modules()
    graph = import_graph(modules)
    inside = {name for name in modules if name.split(".")[0] in ACYCLIC}
    cycle = find_cycle({name: graph[name] & inside for name in inside})
    assert cycle is None, f"import cycle: {' -> '.join(cycle or [])}"


def test_the_graph_sees_a_cycle_where_there_is_one(tmp_path: Path) -> None:
    """The check can fail: a lazy import inside a function closes a cycle; a TYPE_CHECKING import does not."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import X\n")
    modules = {"pkg": pkg / "__init__.py", "pkg.a": pkg / "a.py", "pkg.b": pkg / "b.py"}
    assert import_graph(modules) == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": set()}
    assert find_cycle(import_graph(modules)) is None
    (pkg / "b.py").write_text("def f():\n    from . import a\n")
    assert import_graph(modules)["pkg.b"] == {"pkg.a"}
    assert set(find_cycle(import_graph(modules)) or []) == {"pkg.a", "pkg.b"}


def test_a_package_init_that_imports_its_modules_is_part_of_the_graph(tmp_path: Path) -> None:
    """`import pkg.train.optim` runs `pkg/train/__init__` first: when that imports back, it is a cycle."""
    files = {
        "pkg/__init__.py": "",
        "pkg/settings.py": "from pkg.train.optim import NAMES\n",
        "pkg/train/__init__.py": "from pkg.train.trial import run\n",
        "pkg/train/optim.py": "NAMES = ()\n",
        "pkg/train/trial.py": "from pkg.settings import check\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    modules = {name.removesuffix(".py").removesuffix("/__init__").replace("/", "."): tmp_path / name for name in files}
    graph = import_graph(modules)
    assert graph["pkg.settings"] == {"pkg.train", "pkg.train.optim"}
    assert graph["pkg.train.trial"] == {"pkg.settings"}, "a module's own packages are already being imported"
    assert set(find_cycle(graph) or []) == {"pkg.settings", "pkg.train", "pkg.train.trial"}
    (tmp_path / "pkg/train/__init__.py").write_text('"""Nothing imported here."""\n')
    assert find_cycle(import_graph(modules)) is None


@pytest.mark.parametrize("package", ACYCLIC)
def test_every_acyclic_package_exists(package: str) -> None:
    assert (ROOT / package / "__init__.py").is_file(), f"ACYCLIC names {package}, but it is not a package here"
