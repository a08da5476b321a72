"""The package's import graph, from an AST walk of ``mtmg/`` (imports at module level, inside functions
and under ``TYPE_CHECKING`` alike): no circle between packages or between modules, and every import
goes down the layers of :data:`LAYERS` (``book/extending.md`` prints the same map).

``python tests/test_import_graph.py`` prints the package-level graph and the layering problems.
"""
from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mtmg"
LAYERS: dict[str, int] = {"core": 0, "models": 1, "data": 2, "evaluation": 3, "method": 4, "runs": 5,
                          "book": 6, "mapping": 6, "cli": 6}
"""Package -> layer: a package imports only packages of lower layers (``cli`` and ``book`` also ``book``)."""
BOOK_READERS = {"book", "cli"}
"""The only packages that may import ``mtmg.book``."""
LAZY = {"cli": "the command line imports the library inside its commands, so that --help and argument errors "
               "answer without loading torch"}
"""Packages whose imports stay inside functions by design, and why."""


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package."""
    out = {}
    for file in sorted(package.rglob("*.py")):
        parts = file.relative_to(package.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return out


def imports(name: str, file: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported mtmg module, line, at module level) for every import statement of ``file``."""
    tree = ast.parse(file.read_text(), str(file))
    is_package = file.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    top_level = {id(node) for node in tree.body} | {
        id(n) for node in tree.body if isinstance(node, ast.If) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[:len(here.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("mtmg") and target != name:
                out.append((target, node.lineno, id(node) in top_level))
    return out


def package_of(module: str) -> str:
    """``mtmg.data.datasets.eurosat`` -> ``data``; ``mtmg.__main__`` -> ``cli``; the root ``mtmg`` -> ``mtmg``."""
    parts = module.split(".")
    return ("cli" if parts[1] == "__main__" else parts[1]) if len(parts) > 1 else "mtmg"


def module_graph() -> dict[str, dict[str, list[tuple[int, bool]]]]:
    """module -> imported module -> [(line, at module level)]."""
    mods = modules()
    graph: dict[str, dict[str, list[tuple[int, bool]]]] = {m: defaultdict(list) for m in mods}
    for name, file in mods.items():
        for target, line, top in dict.fromkeys(imports(name, file, set(mods))):
            graph[name][target].append((line, top))
    return graph


def package_graph(graph=None) -> dict[str, set[str]]:
    """package -> packages it imports (itself left out)."""
    out: dict[str, set[str]] = defaultdict(set)
    for module, targets in (graph or module_graph()).items():
        out[package_of(module)]
        for target in targets:
            if package_of(target) != package_of(module):
                out[package_of(module)].add(package_of(target))
    return dict(out)


def cycles(graph: dict[str, set[str] | dict]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def allowed(importer: str, imported: str) -> bool:
    """Whether package ``importer`` may import package ``imported`` (the root ``mtmg`` holds the version only)."""
    if imported == "mtmg" or importer == imported:
        return True
    if importer == "mtmg":
        return imported == "cli"
    if imported == "book":
        return importer in BOOK_READERS
    return LAYERS[imported] < LAYERS[importer] or importer == "cli"


def violations(graph=None) -> list[str]:
    """One line per import that goes up or sideways: ``importer:line -> imported``."""
    graph = graph or module_graph()
    return [f"{module}:{line} -> {target}" for module, targets in graph.items() for target, sites in targets.items()
            if not allowed(package_of(module), package_of(target)) for line, _ in sites]


def report() -> str:
    """The package-level graph, the layers and what goes wrong, as text."""
    graph = module_graph()
    packages = package_graph(graph)
    lines = ["package     layer  imports"]
    for pkg in sorted(packages, key=lambda p: (LAYERS.get(p, 7), p)):
        lines.append(f"{pkg:<11} {LAYERS.get(pkg, '-')!s:<6} {', '.join(sorted(packages[pkg])) or '-'}")
    local = sum(not top for targets in graph.values() for sites in targets.values() for _, top in sites)
    total = sum(len(sites) for targets in graph.values() for sites in targets.values())
    lines.append(f"{total} internal imports, {local} inside functions")
    problems = (violations(graph) + [" <-> ".join(c) for c in cycles(packages) + cycles(graph)]
                + [f"{site}: import inside a function without a comment" for site in unexplained_local_imports()])
    return "\n".join(lines + (["problems:", *problems] if problems else ["no circles, no layering violations"]))


def test_every_import_goes_down_the_layers():
    assert not violations(), "imports against the layers:\n" + "\n".join(violations())


def test_no_circle_between_packages_or_modules():
    graph = module_graph()
    assert not cycles(package_graph(graph)), cycles(package_graph(graph))
    assert not cycles(graph), cycles(graph)


def test_every_package_has_a_layer():
    assert set(package_graph()) - {"mtmg"} <= set(LAYERS), "give every package of mtmg/ a layer in LAYERS"


def unexplained_local_imports() -> list[str]:
    """``module:line`` of every import inside a function without a comment saying why (on its line, or on the
    first line of its import block), packages of :data:`LAZY` left out."""
    unexplained = []
    for module, file in modules().items():
        if package_of(module) in LAZY:
            continue
        lines = file.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        top = {id(node) for node in tree.body} | {
            id(n) for node in tree.body if isinstance(node, ast.If) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                block = lines[node.lineno - 1:node.end_lineno]
                above = [line.strip() for line in lines[:node.lineno - 1] if line.strip()]
                previous = above[-1] if above else ""  # an import block shares the comment of its first line
                if not any("#" in line for line in block) and not previous.startswith(("import ", "from ", "#")):
                    unexplained.append(f"{module}:{node.lineno}")
    return unexplained


def test_function_level_imports_say_why():
    """An import inside a function is there for import cost (or a late optional dependency): a comment says so."""
    unexplained = unexplained_local_imports()
    assert not unexplained, "function-level imports without a comment saying why:\n" + "\n".join(unexplained)


def test_the_map_in_extending_md_matches_the_layers():
    text = (ROOT / "book" / "extending.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `mtmg\.(\w+)` \|[^|]*\| ([^|]*) \|$", text, re.M)}
    assert set(rows) == set(LAYERS), f"book/extending.md: the map lists {sorted(rows)}, the layers {sorted(LAYERS)}"
    for pkg, may in rows.items():
        expected = sorted(p for p in LAYERS if p != pkg and allowed(pkg, p))
        listed = sorted(re.findall(r"`(\w+)`", may))
        assert listed == expected, f"book/extending.md: {pkg} may import {expected}, the map says {listed}"


if __name__ == "__main__":
    print(report())
    sys.exit(1 if "problems:" in report() else 0)
