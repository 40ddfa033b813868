"""The layout's promises, checked over every package: imports point one way, floor by floor, with no cycle
inside a package and no private name crossing a module; modules stay small; space names live with their spaces."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: the floors, lowest first: a package may import its own floor and those below it
PACKAGES = ("rsc", "costs", "spaces", "tracking", "search")
MAX_LINES = 500
ENTRY_POINTS = ("__init__", "__main__")


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _all_modules() -> list[Path]:
    return [p for pkg in PACKAGES for p in _modules(pkg)]


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, tuple[str, ...], int]]:
    """``(module, names, line)`` of every import in the file, function-level ones included, made absolute."""
    here = _name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, (), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            out.append((base, tuple(a.name for a in node.names), node.lineno))
    return out


def _internal(module: str, names: tuple[str, ...]) -> list[str]:
    """The project modules an import statement loads: ``from a.b import c`` is ``a.b.c`` where c is a module."""
    if module.split(".")[0] not in PACKAGES:
        return []
    found = []
    for name in names or ("",):
        full = f"{module}.{name}" if name else module
        found.append(full if (ROOT / Path(*full.split("."))).with_suffix(".py").exists()
                     or (ROOT / Path(*full.split("."))).is_dir() else module)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_down_the_floors(package):
    allowed = set(PACKAGES[: PACKAGES.index(package) + 1])
    bad = {}
    for path in _modules(package):
        wrong = sorted({m.split(".")[0] for m, _, _ in _imports(path)} & set(PACKAGES) - allowed)
        if wrong:
            bad[str(path.relative_to(ROOT))] = wrong
    assert bad == {}


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle_inside_a_package(package):
    graph: dict[str, set[str]] = {}
    for path in _modules(package):
        here = _name(path)
        deps = graph.setdefault(here, set())
        for module, names, _ in _imports(path):
            deps.update(m for m in _internal(module, names) if m.split(".")[0] == package and m != here)
    # a package's __init__ may re-export its modules; a module importing its own package is the cycle
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if dep == package and node.count(".") == 0:
                continue
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


@pytest.mark.parametrize("path", _all_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_name_crosses_a_module(path):
    bad = []
    for module, names, line in _imports(path):
        if module.split(".")[0] not in PACKAGES:
            continue
        private_modules = [p for p in module.split(".") if p.startswith("_") and p not in ENTRY_POINTS]
        private_names = [n for n in names if n.startswith("_")]
        if private_modules or private_names:
            bad.append(f"line {line}: {module} {', '.join(private_names)}".strip())
    assert bad == []


@pytest.mark.parametrize("path", _all_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= (200 if path.relative_to(ROOT) == Path("search/run.py") else MAX_LINES)


def _space_names() -> dict[str, str]:
    """Every registered space's name and alias -> the file that defines that space."""
    import inspect

    import spaces  # noqa: F401 - registers the built-in spaces
    from spaces.registry import list_spaces, space_class

    out = {}
    for name in list_spaces():
        cls = space_class(name)
        where = str(Path(inspect.getfile(cls)).resolve().relative_to(ROOT))
        for key in (name, *getattr(cls, "aliases", ())):
            out[key] = where
    return out


@pytest.mark.parametrize("path", _all_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_space_names_live_with_their_spaces(path):
    """No file but a space's own module (and the registry) names that space or its aliases in a string:
    behaviour is read from a space's capabilities, never decided by its name."""
    rel = str(path.relative_to(ROOT))
    if rel == "spaces/registry.py":
        return
    strings = {node.value for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    named = sorted(n for n, home in _space_names().items() if home != rel and n in strings)
    assert named == []


@pytest.mark.parametrize("module", [_name(p) for p in _all_modules() if p.name != "__main__.py"])
def test_every_public_name_exists(module):
    mod = importlib.import_module(module)
    missing = [n for n in getattr(mod, "__all__", ()) if not hasattr(mod, n)
               and importlib.util.find_spec(f"{mod.__name__.removesuffix('.__init__')}.{n}") is None]
    assert missing == []  # ``from module import *`` works


def test_no_package_export_is_named_like_one_of_its_modules():
    """A lazily exported name that is also a submodule's name would turn into the module once that is imported."""
    for package in PACKAGES:
        mod = importlib.import_module(package)
        submodules = {p.stem for p in (ROOT / package).glob("*.py")} | {p.name for p in (ROOT / package).iterdir()
                                                                       if (p / "__init__.py").exists()}
        assert sorted(set(getattr(mod, "__all__", ())) & submodules - {"__init__"}) == [] or package == "rsc"
