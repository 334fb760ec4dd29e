"""The arrows point one way (DESIGN.md): the sans-I/O core imports neither asyncio nor
anything of ours above it, and the app's routing types import no I/O code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "streamcore"


def imports(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """Every module a file imports, absolute (relative imports resolved)."""
    parts = path.relative_to(root).with_suffix("").parts
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(parts[:-node.level])
                found.add(".".join([*base, node.module] if node.module else base))
            elif node.module:
                found.add(node.module)
    return found


PROTO = sorted((PACKAGE / "proto").glob("*.py"))


@pytest.mark.parametrize("path", PROTO, ids=lambda p: p.name)
def test_proto_is_sans_io(path: Path) -> None:
    bad = {name for name in imports(path)
           if name.split(".")[0] in {"asyncio", "uvloop", "socket", "selectors"}
           or (name.startswith("streamcore.") and not name.startswith(
               ("streamcore.proto", "streamcore.errors", "streamcore.limits")))}
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_app_imports_no_io() -> None:
    bad = {name for name in imports(PACKAGE / "app.py")
           if name.startswith(("asyncio", "uvloop", "streamcore.aio", "streamcore.gateway"))}
    assert not bad, sorted(bad)


def test_the_check_sees_a_bad_import(tmp_path: Path) -> None:
    """The import scan itself finds an asyncio import (so the tests above can fail)."""
    fake = tmp_path / "streamcore" / "proto" / "probe.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("import asyncio\nfrom ..aio import stream\n")
    found = imports(fake, tmp_path)
    assert "asyncio" in found and "streamcore.aio" in found
