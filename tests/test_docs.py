"""docs/architecture.md is kept true: its lifecycle tables are the code's tables, row for
row, and the README links to it and to nothing outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streamcore.proto.http import HTTP_STATES
from streamcore.proto.pipe import STREAM_STATES
from streamcore.proto.state import Table
from streamcore.proto.ws import WS_STATES

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "architecture.md").read_text()


def documented(name: str) -> dict[str, list[tuple[str, str]]]:
    block = re.search(rf"<!-- table:{name} -->\n(.*?)<!-- /table -->", DOC, re.S)
    assert block, f"no table:{name} in docs/architecture.md"
    rows: dict[str, list[tuple[str, str]]] = {}
    for line in block.group(1).splitlines()[2:]:
        state, moves = (cell.strip() for cell in line.strip("|").split("|"))
        rows[state] = re.findall(r"`(\w+)` → (\w+)", moves)
    return rows


@pytest.mark.parametrize("table", [HTTP_STATES, WS_STATES, STREAM_STATES],
                         ids=lambda t: t.name)
def test_the_documented_table_is_the_codes(table: Table) -> None:
    code = {state.name: [(event, target.name) for event, target in moves.items()]
            for state, moves in table.transitions.items()}
    assert documented(table.name) == code


def test_readme_links_the_architecture_and_nothing_outside() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docs/architecture.md" in readme
    assert "../shared" not in readme and "DESIGN.md" not in readme
    for path in re.findall(r"\]\(([^)#]+)\)", readme):
        if not path.startswith(("http://", "https://")):
            assert (ROOT / path).exists(), f"README links to a missing {path}"


def test_every_limit_has_a_readme_row() -> None:
    import dataclasses

    from streamcore.limits import Limits

    readme = (ROOT / "README.md").read_text()
    missing = [f.name for f in dataclasses.fields(Limits) if f"| `{f.name}` |" not in readme]
    assert not missing, f"README's limits table lacks {missing}"
