"""The arrows point one way (docs/architecture.md, "The layers"):

    cli -> gateway -> app -> aio -> store -> proto -> (errors, limits)

The sans-I/O core imports no I/O; no layer imports one above it; and no module imports
itself back through others (no import circle anywhere in the package, TYPE_CHECKING
imports included: a circle of types is a circle of design)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "streamcore"


def imports(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """Every module a file imports, absolute (relative imports resolved)."""
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = (*parts[:-1], "__init__")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(parts[:-node.level])
                module = ".".join([*base, node.module] if node.module else base)
                found.add(module)
                # "from . import x" may name a submodule
                found.update(f"{module}.{alias.name}" for alias in node.names)
            elif node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def module_name(path: Path, root: Path = PACKAGE.parent) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}

#: The layers, bottom up; a module may import its own layer and those below.
LAYERS = [
    ("streamcore.errors", "streamcore.limits", "streamcore.metrics"),
    ("streamcore.proto",),
    ("streamcore.store",),
    ("streamcore.aio",),
    ("streamcore.sources", "streamcore.app"),
    ("streamcore.gateway", "streamcore.demo", "streamcore.tls"),
    ("streamcore.cli", "streamcore.config", "streamcore.workers", "streamcore.__main__",
     "streamcore", "streamcore.scorecard"),
]


def layer_of(name: str) -> int:
    best = -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and (
                    prefix != "streamcore" or name == "streamcore"):
                best = index
    assert best >= 0, f"{name} is in no layer: add it to LAYERS"
    return best


def ours(path: Path) -> set[str]:
    return {name for name in imports(path) if name in MODULES}


@pytest.mark.parametrize("name", sorted(MODULES), ids=str)
def test_no_import_reaches_up(name: str) -> None:
    here = layer_of(name)
    above = sorted(dep for dep in ours(MODULES[name]) if layer_of(dep) > here)
    assert not above, f"{name} imports {above} from a layer above it"


@pytest.mark.parametrize("path", sorted((PACKAGE / "proto").glob("*.py")),
                         ids=lambda p: p.name)
def test_proto_is_sans_io(path: Path) -> None:
    bad = {name for name in imports(path)
           if name.split(".")[0] in {"asyncio", "uvloop", "socket", "selectors", "ssl"}}
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_no_import_circle() -> None:
    graph = {name: {dep for dep in ours(path) if dep != name} for name, path in MODULES.items()}
    # A package's __init__ re-exports its modules; importing a module runs its package's
    # __init__ first, which is not an arrow of design: leave the edges into __init__ out.
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    for deps in graph.values():
        deps -= packages
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        seen[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if seen.get(dep) == 1:
                circle = [*stack[stack.index(dep):], dep]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if dep not in seen:
                visit(dep)
        stack.pop()
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node)


def test_the_checks_see_bad_imports(tmp_path: Path) -> None:
    """The import scan itself finds an asyncio import and an upward one (so the tests
    above can fail)."""
    fake = tmp_path / "streamcore" / "proto" / "probe.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("import asyncio\nfrom ..aio import stream\n")
    found = imports(fake, tmp_path)
    assert "asyncio" in found and "streamcore.aio.stream" in found
    assert layer_of("streamcore.aio.stream") > layer_of("streamcore.proto.probe")
