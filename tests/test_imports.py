"""The package's import graph: no module imports itself back through others (a cycle makes the import
order matter and hides which stage depends on which), and each stage's folder imports only what it
stands on."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "segmentnet"


def modules(root: Path = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package's __init__)."""
    found = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if package else parts)] = (path, package)
    return found


def import_graph(found: dict[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """Module -> the package modules it imports, at any level of the file (function-level imports count:
    they run, only later). `from P import m` of a submodule m imports m (and P, unless P is a package
    the importer is inside: that one is already importing)."""
    graph = {}
    for name, (path, package) in found.items():
        here = name.split(".") if package else name.split(".")[:-1]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1] + [node.module or ""] if node.level else
                                [node.module or ""]).strip(".")
                submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in found]
                targets = submodules + [base]
            else:
                continue
            for target in targets:
                while target:  # a module and the packages above it, but those the importer is inside
                    if target in found and not name.startswith(target + ".") and target != name:
                        edges.add(target)
                    target = target.rpartition(".")[0]
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return found


def test_the_package_has_no_import_cycle():
    graph = import_graph(modules())
    assert len(graph) > 50  # (the whole package was read)
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub.b import thing\n")
    (package / "sub" / "b.py").write_text("def thing():\n    from .. import a\n    from . import c\n")
    (package / "sub" / "c.py").write_text("import os\n")
    graph = import_graph(modules(package))
    assert graph["pkg.a"] == {"pkg.sub", "pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.a", "pkg.sub.c"}  # (pkg.sub: the package b is inside)
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]
    (package / "sub" / "b.py").write_text("def thing():\n    from . import c\n")
    assert cycles(import_graph(modules(package))) == []


# The bottom layers: what each may import besides itself. core is the foundation of every stage; the
# models and the data preparation stand on it alone, so that a model or a dataset can be read, built
# and tested without training, results or deployment. (The stages above use one another.)
BELOW = {
    "core": set(),
    "models": {"core"},
    "preparation": {"core"},
    "datasets": {"core", "preparation"},
}


@pytest.mark.parametrize("stage", sorted(BELOW))
def test_the_bottom_layers_import_only_what_is_below_them(stage):
    graph = import_graph(modules())
    reached = {target.split(".")[1] for name, targets in graph.items()
               if name.startswith(f"segmentnet.{stage}.") or name == f"segmentnet.{stage}"
               for target in targets if target.count(".") >= 1}
    assert reached - {stage} <= BELOW[stage]
