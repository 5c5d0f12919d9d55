"""The layout rules of issue 13, checked from the source alone (stdlib only, nothing is imported).

1. No import cycle between shipyard modules. Every `import`/`from … import` counts, function-local
   ones included, except those under `if TYPE_CHECKING:` (they never run). `import a.b` is an edge
   to `a.b`; `from a import b` is an edge to `a.b` when that is a module, else to `a`; so
   `import shipyard` and `from shipyard import x` are edges to `shipyard` (its `__init__`).
   Importing a submodule also runs its parents' `__init__`, but that is not counted: a package
   may import its own stages, a stage must not import the package.
2. No module over 500 lines.

    python scripts/check_layout.py [--max-lines 500] [--src src] [--package shipyard]

Prints every cycle (each group of modules that reach each other, as a path to follow, with the
file:line of every import on it) and every module over the limit, and exits 1; otherwise prints
one summary line and exits 0.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    path: Path
    line: int


def module_names(src: Path, package: str) -> dict[str, Path]:
    """Every module of `package` under `src`: dotted name → file (a package is its `__init__.py`)."""
    out: dict[str, Path] = {}
    for f in sorted((src / package).rglob("*.py")):
        parts = list(f.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _is_type_checking(test: ast.expr) -> bool:
    """`if TYPE_CHECKING:` and `if typing.TYPE_CHECKING:`."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """All import statements that can run: everywhere (functions, classes, try blocks) except the
    body of an `if TYPE_CHECKING:` (its `else:` runs, so it counts)."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return sorted(found, key=lambda n: n.lineno)


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The module `name` refers to: itself, or its longest prefix that is a module."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def edges_of(name: str, path: Path, modules: dict[str, Path], package: str) -> list[Edge]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    here = name if is_pkg else name.rpartition(".")[0]  # the package relative imports start from
    out: list[Edge] = []
    for node in _runtime_imports(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            if node.level:
                base_parts = here.split(".")
                if node.level - 1 > len(base_parts) - 1:
                    continue  # reaches above the package: not ours
                base = ".".join(base_parts[: len(base_parts) - (node.level - 1)])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for a in node.names:
                full = f"{base}.{a.name}"
                targets.append(full if full in modules else base)
        for t in targets:
            if t != package and not t.startswith(package + "."):
                continue
            dst = _owner(t, modules)
            if dst is not None and dst != name:
                out.append(Edge(name, dst, path, node.lineno))
    return out


def strongly_connected(nodes: list[str], succ: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit to worry about)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack.add(v)
            recurse = False
            for j in range(i, len(succ[v])):
                w = succ[v][j]
                if w not in index:
                    work.append((v, j + 1))
                    work.append((w, 0))
                    recurse = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if recurse:
                continue
            if low[v] == index[v]:
                group: list[str] = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    group.append(w)
                    if w == v:
                        break
                groups.append(sorted(group))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return groups


def shortest_cycle(start: str, group: set[str], succ: dict[str, list[str]]) -> list[str]:
    """The shortest path start → … → start inside `group` (breadth first)."""
    prev: dict[str, str] = {}
    queue = deque([start])
    seen = {start}
    while queue:
        v = queue.popleft()
        for w in succ[v]:
            if w not in group:
                continue
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return [*reversed(path), start]
            if w not in seen:
                seen.add(w)
                prev[w] = v
                queue.append(w)
    return [start]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=ROOT / "src")
    ap.add_argument("--package", default="shipyard")
    ap.add_argument("--max-lines", type=int, default=500)
    args = ap.parse_args(argv)

    modules = module_names(args.src, args.package)
    edges: list[Edge] = []
    for name, path in modules.items():
        edges.extend(edges_of(name, path, modules, args.package))
    succ: dict[str, list[str]] = {m: [] for m in modules}
    first: dict[tuple[str, str], Edge] = {}
    for e in edges:
        if (e.src, e.dst) not in first:
            first[(e.src, e.dst)] = e
            succ[e.src].append(e.dst)

    def where(e: Edge) -> str:
        return f"{e.path.relative_to(ROOT) if e.path.is_relative_to(ROOT) else e.path}:{e.line}"

    cycles = [g for g in strongly_connected(sorted(modules), succ) if len(g) > 1]
    for g in cycles:
        members = set(g)
        path = shortest_cycle(g[0], members, succ)
        print(f"import cycle ({len(g)} modules: {', '.join(g)}):")
        for a, b in zip(path, path[1:], strict=False):
            print(f"    {a}  imports  {b}    ({where(first[(a, b)])})")
        others = [e for (a, b), e in sorted(first.items())
                  if a in members and b in members and (a, b) not in set(zip(path, path[1:], strict=False))]
        if others:
            print("  other imports inside this cycle:")
            for e in others:
                print(f"    {e.src}  imports  {e.dst}    ({where(e)})")

    long = []
    for name, path in modules.items():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > args.max_lines:
            long.append((n, name, path))
    for n, name, path in sorted(long, reverse=True):
        rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        print(f"module over {args.max_lines} lines: {rel} ({name}): {n} lines")

    if cycles or long:
        print(f"check_layout: {len(cycles)} import cycle(s), {len(long)} module(s) over {args.max_lines} lines")
        return 1
    print(f"check_layout: ok: {len(modules)} modules, {len(first)} imports between them, no cycle, "
          f"none over {args.max_lines} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
