"""The three rooms and their arrows (docs/design.md): the core composes plug-ins through the registry and
imports no concrete backbone or strategy; backends and strategies build on the core and never on each
other, on the evaluation or on the command line. Every import counts, also one inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# installed package name → folder in the checkout (pyproject.toml's package-dir)
ROOMS = {
    "easi3r": ROOT / "easi3r",
    "easi3r.backends": ROOT / "backends",
    "easi3r.strategies": ROOT / "strategies",
}
# the command line may name everything: it is where the rooms are put together
CORE_ENTRY_POINTS = {"easi3r.cli", "easi3r.__main__"}

FORBIDDEN = {
    "core": ("easi3r.backends", "easi3r.strategies"),
    "backends": ("easi3r.strategies", "easi3r.eval", "easi3r.cli"),
    "strategies": ("easi3r.backends", "easi3r.eval", "easi3r.cli"),
}


def _modules() -> dict[str, tuple[str, Path]]:
    """``{module name: (room, file)}`` for every Python file of the three rooms."""
    found = {}
    for package, folder in ROOMS.items():
        room = {"easi3r": "core", "easi3r.backends": "backends", "easi3r.strategies": "strategies"}[package]
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = (room, path)
    return found


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    """``(line, imported module)`` of every import statement in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def violations() -> list[str]:
    found = []
    for module, (room, path) in _modules().items():
        if module in CORE_ENTRY_POINTS:
            continue
        for line, imported in imports_of(path, module):
            for banned in FORBIDDEN[room]:
                if imported == banned or imported.startswith(f"{banned}."):
                    found.append(f"{path.relative_to(ROOT)}:{line} ({room}) imports {imported}")
    return found


def test_every_room_is_seen():
    rooms = {room for room, _ in _modules().values()}
    assert rooms == {"core", "backends", "strategies"}
    assert len(_modules()) > 40


def test_the_rooms_keep_their_arrows():
    assert violations() == []


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("from easi3r.strategies.maps import x\n", "easi3r.pipeline", "easi3r.strategies.maps.x"),
        ("def f():\n    import easi3r.backends.croco\n", "easi3r.pipeline", "easi3r.backends.croco"),
        ("from ..strategies import capture\n", "easi3r.eval.runner", "easi3r.strategies.capture"),
        ("from .croco import CroCoStereo\n", "easi3r.backends.adapter", "easi3r.backends.croco.CroCoStereo"),
    ],
)
def test_imports_are_read_wherever_they_are(tmp_path, source, module, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert [name for _, name in imports_of(path, module)] == [expected]
