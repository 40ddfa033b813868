"""The layout's promises, checked: imports point one way, search/ names no space, modules stay small."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rsc", "spaces", "tracking", "search")
# who may import whom: the floors rsc -> spaces -> tracking -> search
ALLOWED = {"rsc": {"rsc"}, "spaces": {"rsc", "spaces"}, "tracking": {"rsc", "spaces", "tracking"},
           "search": {"rsc", "spaces", "tracking", "search"}}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported_packages(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
    return out & set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_one_way(package):
    bad = {str(p.relative_to(ROOT)): sorted(_imported_packages(p) - ALLOWED[package]) for p in _modules(package)}
    assert {k: v for k, v in bad.items() if v} == {}


@pytest.mark.parametrize("path", _modules("search"), ids=lambda p: p.name)
def test_search_modules_stay_small_and_name_no_space(path):
    import spaces  # noqa: F401 - registers the built-in spaces
    from spaces.registry import list_spaces

    text = path.read_text()
    assert len(text.splitlines()) <= 400
    if path.name == "run.py":
        assert len(text.splitlines()) <= 200
    named = [name for name in list_spaces() if f'"{name}"' in text or f"'{name}'" in text]
    assert named == []  # capabilities are read from the spaces, never decided by their names


@pytest.mark.parametrize("module", [".".join(p.relative_to(ROOT).with_suffix("").parts)
                                    for pkg in PACKAGES for p in _modules(pkg) if p.name != "__main__.py"])
def test_every_public_name_exists(module):
    mod = importlib.import_module(module)
    missing = [n for n in getattr(mod, "__all__", ()) if not hasattr(mod, n)
               and importlib.util.find_spec(f"{mod.__name__.removesuffix('.__init__')}.{n}") is None]
    assert missing == []  # ``from module import *`` works
