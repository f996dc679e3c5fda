"""The package's shape as a newcomer meets it: modules per folder and their sizes, the longest
functions, the import cycles (the graph of tests/test_imports.py), and where the training config
goes: from TrainSegmentNet's `train(cfg)`, every call that passes it on (read from the source: a
function of the package by its imported name, a method by its name where one class defines it),
the modules it enters and how often it comes back into a module it had entered before.

    python bench/code_shape.py            # this checkout
    python bench/code_shape.py OTHER_DIR  # another checkout (e.g. an older commit's worktree)
"""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_imports import cycles, import_graph, modules  # noqa: E402


def longest_functions(package: Path, count: int = 10) -> list[tuple[int, str]]:
    found = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(package.parent)}:{node.name}"))
    return sorted(found, reverse=True)[:count]


def definitions(package: Path):
    """(module -> {function name: (FunctionDef, imported names)}, method name -> [(module, FunctionDef)])."""
    functions, methods = {}, {}
    for name, (path, is_package) in modules(package).items():
        tree = ast.parse(path.read_text(), str(path))
        here = name.split(".") if is_package else name.split(".")[:-1]
        imported = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1] + [node.module or ""] if node.level else
                                [node.module or ""]).strip(".")
                for alias in node.names:
                    imported[alias.asname or alias.name] = (base, alias.name)
        functions[name] = {}
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                functions[name][node.name] = (node, imported)
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef):
                        methods.setdefault(item.name, []).append((name, item, imported))
    return functions, methods


def config_path(root: Path) -> list[tuple[str, str, int]]:
    """(module, function, hops) of each call the config is passed to, depth first from TrainSegmentNet's
    train; hops: how many times the config has crossed into another module of the package to get there."""
    functions, methods = definitions(root / "segmentnet")
    script = ast.parse((root / "TrainSegmentNet.py").read_text())
    start = next((node.module, "train") for node in script.body
                 if isinstance(node, ast.ImportFrom) and any(a.name == "train" for a in node.names))
    calls, done = [], set()

    def receiver(func: ast.FunctionDef, call: ast.Call, name: str, method: bool) -> str | None:
        params = [a.arg for a in func.args.args][1 if method else 0:]
        for index, arg in enumerate(call.args):
            if isinstance(arg, ast.Name) and arg.id == name and index < len(params):
                return params[index]
        for keyword in call.keywords:
            if isinstance(keyword.value, ast.Name) and keyword.value.id == name:
                return keyword.arg
        return None

    def visit(module: str, function: str, name: str, hops: int):
        if (module, function) in done or function not in functions.get(module, {}):
            return
        done.add((module, function))
        node, imported = functions[module][function]
        for call in sorted((n for n in ast.walk(node) if isinstance(n, ast.Call)),
                           key=lambda n: (n.lineno, n.col_offset)):  # (in the source's order)
            target = None
            if isinstance(call.func, ast.Name):
                if call.func.id in functions[module]:
                    target = (module, call.func.id, functions[module][call.func.id][0], False)
                elif call.func.id in imported:
                    source, attr = imported[call.func.id]
                    if attr in functions.get(source, {}):
                        target = (source, attr, functions[source][attr][0], False)
            elif isinstance(call.func, ast.Attribute) and len(methods.get(call.func.attr, [])) == 1:
                owner, func, _ = methods[call.func.attr][0]
                target = (owner, call.func.attr, func, True)
            if target is None:
                continue
            passed = receiver(target[2], call, name, target[3])
            if passed:
                depth = hops + (target[0] != module)
                calls.append((target[0], target[1], depth))
                if not target[3]:
                    visit(target[0], target[1], passed, depth)

    parameter = functions[start[0]]["train"][0].args.args[0].arg
    calls.append((*start, 0))
    visit(start[0], "train", parameter, 0)
    return calls


def main(argv=None) -> None:
    root = Path((argv or sys.argv[1:] or [Path(__file__).resolve().parent.parent])[0]).resolve()
    package = root / "segmentnet"
    folders = defaultdict(list)
    for path in sorted(package.rglob("*.py")):
        folders[str(path.parent.relative_to(root))].append(len(path.read_text().splitlines()))
    print(f"{root}: {sum(map(len, folders.values()))} modules, {sum(map(sum, folders.values()))} lines")
    for folder, sizes in folders.items():
        print(f"  {folder + '/':28s} {len(sizes):3d} modules  {sum(sizes):6d} lines  largest {max(sizes)}")
    print("longest functions (lines):")
    for lines, name in longest_functions(package):
        print(f"  {lines:4d}  {name}")
    found = cycles(import_graph(modules(package)))
    print(f"import cycles: {len(found)}" + "".join(f"\n  {' <-> '.join(group)}" for group in found))
    calls = config_path(root)
    print(f"the training config: passed to {len(calls)} calls in {len({c[0] for c in calls})} modules, at most "
          f"{max(c[2] for c in calls)} module(s) away from the engine's train:")
    for module, function, hops in calls:
        print(f"  {'  ' * hops}{module.removeprefix('segmentnet.')}.{function}")


if __name__ == "__main__":
    main()
