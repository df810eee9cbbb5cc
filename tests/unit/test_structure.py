"""Structure rules a newcomer can run: no import cycle in the packages, no long function in the recipe.

The imports are read with ``ast``, not by importing, so a cycle is found even where Python's import
order happens to hide it. Imports inside functions count (they run, only later); imports under
``if TYPE_CHECKING:`` do not (they never run: they name types for annotations).
"""

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = {"internvl_trainer": REPO / "trainer", "internvl_operator": REPO / "operator"}
RECIPE = REPO / "trainer" / "internvl_trainer" / "train"
MAX_FUNCTION_LINES = 60
LONG_REASON = "Long because"


def module_name(path: Path, root: Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def package_modules(package: str) -> dict[str, Path]:
    root = PACKAGES[package]
    return {module_name(path, root): path for path in sorted((root / package).rglob("*.py"))}


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module name ``tree`` imports at run time (module-level or in a function), with
    ``from package import name`` read as the submodule when ``name`` is one."""
    names: set[str] = set()
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and is_type_checking(node):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                anchor = parts if is_package else parts[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        pending.extend(ast.iter_child_nodes(node))
    return names


def import_graph(package: str) -> dict[str, set[str]]:
    modules = package_modules(package)
    graph = {}
    for module, path in modules.items():
        imported = imported_names(ast.parse(path.read_text(), str(path)), module, path.name == "__init__.py")
        graph[module] = {name for name in imported if name in modules and name != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None (iterative depth-first search)."""
    state: dict[str, str] = {}
    for start in sorted(graph):
        if start in state:
            continue
        path = [start]
        state[start] = "open"
        branches = [iter(sorted(graph[start]))]
        while branches:
            following = next(branches[-1], None)
            if following is None:
                state[path.pop()] = "done"
                branches.pop()
            elif state.get(following) == "open":
                return [*path[path.index(following) :], following]
            elif following not in state:
                state[following] = "open"
                path.append(following)
                branches.append(iter(sorted(graph[following])))
    return None


def test_find_cycle_reports_the_cycle_and_accepts_a_diamond():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) is None


def test_imported_names_counts_functions_and_relative_imports_but_not_type_checking():
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "if TYPE_CHECKING:\n"
        "    from p.typed import T\n"
        "def f():\n"
        "    import p.late\n"
    )
    names = imported_names(ast.parse(source), "p.here", is_package=False)
    assert {"p", "p.sibling", "p.late"} <= names
    assert "p.typed" not in names


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_the_import_graph_has_no_cycle(package):
    graph = import_graph(package)
    assert len(graph) > 20, "the modules were not found"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def long_functions(path: Path, root: Path = REPO) -> list[str]:
    """The functions of ``path`` over MAX_FUNCTION_LINES lines whose docstring gives no reason."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        lines = node.end_lineno - node.lineno + 1
        if lines > MAX_FUNCTION_LINES and LONG_REASON not in (ast.get_docstring(node) or ""):
            found.append(f"{path.relative_to(root)}:{node.lineno} {node.name}() has {lines} lines")
    return found


def test_long_functions_are_found_unless_their_docstring_says_why(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    path = tmp_path / "module.py"
    path.write_text(f"def long():\n{body}\ndef excused():\n    '''{LONG_REASON} it must.'''\n{body}")
    assert long_functions(path, tmp_path) == [f"module.py:1 long() has {MAX_FUNCTION_LINES + 1} lines"]


def test_no_function_in_the_recipe_is_long_without_a_reason():
    assert sorted(RECIPE.rglob("*.py")), "the recipe's modules were not found"
    found = [problem for path in sorted(RECIPE.rglob("*.py")) for problem in long_functions(path)]
    assert found == [], (
        f"functions over {MAX_FUNCTION_LINES} lines: split them, or say why in the docstring"
        f" ({LONG_REASON} ...):\n" + "\n".join(found)
    )
