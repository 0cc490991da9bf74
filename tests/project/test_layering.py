"""The package's shape: imports point only down the layers, never in a cycle, and the public contract is sorted."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Set

import warppack

PACKAGE = Path(warppack.__file__).resolve().parent

# Bottom to top; a module may import its own layer (without cycles) and any layer below it.
LAYERS = [
    ("warppack._version", "warppack._packer", "warppack.import_hooks", "warppack.progress"),
    ("warppack.engine",),
    ("warppack.batch",),
    ("warppack.distributed",),
    ("warppack.loaders",),
    ("warppack.attention",),
    ("warppack.model",),
    ("warppack.memory",),
    ("warppack.hf_trainer", "warppack.harness"),
    ("warppack.cli",),
    ("warppack", "warppack.__main__"),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> Dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}  # the extension's .pyx imports nothing


def _imports(name: str, path: Path, known: Set[str]) -> Set[str]:
    """The warppack modules that ``name`` imports, at any depth of its code (lazy imports count)."""
    found: Set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def _layer(name: str) -> int:
    best, index = -1, -1
    for position, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, index = len(prefix), position
    assert index >= 0, f"{name} belongs to no layer: add it to LAYERS"
    return index


def _graph() -> Dict[str, Set[str]]:
    modules = _modules()
    known = set(modules) | {"warppack._packer"}
    graph = {name: _imports(name, path, known) for name, path in modules.items()}
    graph["warppack._packer"] = set()  # the extension imports nothing of warppack
    return graph


def test_every_module_has_a_layer():
    for name in _modules():
        _layer(name)


def test_imports_never_point_up():
    upward = sorted(f"{source} -> {target}" for source, targets in _graph().items() for target in targets
                    if _layer(target) > _layer(source))
    assert upward == []


def test_no_import_cycles():
    graph = _graph()
    state: Dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert cycles == []


def test_private_names_stay_in_their_module():
    crossings = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("warppack"):
                crossings += [f"{name} imports {node.module}.{a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")
                              and a.name != "_packer"]
    assert crossings == []


def test_public_contract_is_sorted():
    assert warppack.__all__ == sorted(warppack.__all__)
    for name in warppack.__all__:
        assert getattr(warppack, name) is not None
