"""The package's shape as a newcomer meets it: modules per folder and their sizes, the longest
functions, and the import cycles (the graph of tests/test_imports.py).

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


if __name__ == "__main__":
    main()
