"""Finds import cycles among the package's modules (exit status 1 when there is one).

Every module-level import counts, including those under ``if TYPE_CHECKING:`` (a cycle there is
still a design cycle); imports inside functions (deliberately lazy ones) do not. ``import a.b`` and
``from a.b import c`` point at ``a.b`` (and at ``a.b.c`` when that is a module); a package's
``__init__`` is its own module, and a module's own parent packages (which Python imports first
anyway) are not counted as its imports. Run it from the repository root.

    python scripts/check_imports.py                 # deepgrpo_env deepgrpo_agent envs_registry
    python scripts/check_imports.py deepgrpo_agent
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path.cwd()
PACKAGES = ("deepgrpo_env", "deepgrpo_agent", "envs_registry")


def modules(packages: tuple[str, ...]) -> dict[str, Path]:
    out = {}
    for pkg in packages:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append(node)
            elif isinstance(node, ast.If | ast.Try):  # `if TYPE_CHECKING:`, `try: import x`
                for block in (node.body, getattr(node, "orelse", []), getattr(node, "finalbody", [])):
                    visit(block)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    return found


def graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _top_level_imports(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            ancestors = {".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 1)}
            for t in targets:
                if t in mods and t != name and t not in ancestors:
                    edges[name].add(t)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def main(argv: list[str]) -> int:
    packages = tuple(argv) or PACKAGES
    mods = modules(packages)
    edges = graph(mods)
    found = cycles(edges)
    print(f"{len(mods)} modules, {sum(len(e) for e in edges.values())} module-level imports, "
          f"{len(found)} import cycle(s)")
    for comp in found:
        print("  cycle: " + " <-> ".join(comp))
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
