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
