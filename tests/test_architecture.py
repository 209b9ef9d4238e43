"""Layering: ``bot → handlers → generation, storage``; the inner packages never import the
Telegram side (checked on the source, so a lazy import inside a function counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "generation": {"telegram", "handlers", "bot", "storage"},
    "storage": {"telegram", "handlers", "bot"},
    "handlers": {"bot"},
}


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_the_layers(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources found for {package}"
    offenders = {
        f"{path.relative_to(ROOT)}: {sorted(_imported_roots(path) & FORBIDDEN[package])}"
        for path in files
        if _imported_roots(path) & FORBIDDEN[package]
    }
    assert not offenders, offenders


# -- import cycles ---------------------------------------------------------------------------

PACKAGES = ("bot", "handlers", "generation", "storage")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _our_modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module of ours that ``name`` (a module or a name inside one) refers to."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module of ours that ``module`` imports: at the top, inside functions, under
    ``TYPE_CHECKING``, absolute or relative."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            # ``from pkg import mod`` imports the module ``pkg.mod``; ``from mod import name``
            # the module ``mod``.
            full = [f"{base}.{alias.name}" for alias in node.names]
            names = [n if n in modules else base for n in full]
        else:
            continue
        found.update(r for n in names if (r := _resolve(n, modules)) is not None)
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _our_modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
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
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_the_graph_sees_static_lazy_and_relative_imports() -> None:
    graph = import_graph()
    assert "handlers.submit" in graph["handlers.prompt_commands"]  # a plain top-level import
    assert "handlers" in graph["bot.app"]  # ``from handlers import register``
    assert "bot.local.runner" in graph["bot.__main__"]  # imported inside main()


def test_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert find_cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles_in_or_between_our_packages() -> None:
    assert find_cycles(import_graph()) == []


# -- size ------------------------------------------------------------------------------------

MAX_MODULE_LINES = 400
LARGER_ALLOWED = {"bot/local/emulator.py"}  # the Bot API emulator: one cohesive thing


@pytest.mark.parametrize("package", ["bot", "handlers"])
def test_telegram_side_modules_stay_small(package: str) -> None:
    too_long = {
        str(path.relative_to(ROOT)): n
        for path in sorted((ROOT / package).rglob("*.py"))
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
        and str(path.relative_to(ROOT)) not in LARGER_ALLOWED
    }
    assert too_long == {}
