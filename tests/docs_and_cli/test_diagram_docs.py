"""The lifecycle drawn in the docs is the one transition table, not a copy of it.

``docs/lifecycle.mmd`` must equal ``klarna_flow.diagram("mermaid")`` and the
concepts page must show it (included inside a ```` ```mermaid ```` fence); the
page's table of transitions must list the table's rows. When the table
changes, regenerate the diagram with::

    python tests/docs_and_cli/test_diagram_docs.py --write
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from klarna_flow import diagram
from klarna_flow._domain.lifecycle import transition_table

ROOT = Path(__file__).resolve().parents[2]
DIAGRAM = ROOT / "docs" / "lifecycle.mmd"
CONCEPTS = ROOT / "docs" / "concepts.md"
REGENERATE = "python tests/docs_and_cli/test_diagram_docs.py --write"

_FENCE = re.compile(r"^```mermaid\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_SNIPPET = re.compile(r'^--8<-- "([^"]+)"$')
_NAME = re.compile(r"`(\w+)`")


def write() -> None:
    """Regenerate ``docs/lifecycle.mmd`` from the transition table."""
    DIAGRAM.write_text(diagram("mermaid"), encoding="utf-8")


def _resolve(fence_body: str) -> str:
    """The fence's text with ``--8<--`` snippet lines replaced by the files they name."""
    lines = []
    for line in fence_body.splitlines(keepends=True):
        match = _SNIPPET.match(line.strip())
        lines.append((ROOT / match[1]).read_text(encoding="utf-8") if match else line)
    return "".join(lines)


def test_diagram_file_is_generated_from_the_transition_table() -> None:
    assert DIAGRAM.exists(), f"docs/lifecycle.mmd is missing; generate it with: {REGENERATE}"
    assert DIAGRAM.read_text(encoding="utf-8") == diagram("mermaid"), (
        f"docs/lifecycle.mmd disagrees with the transition table; regenerate: {REGENERATE}"
    )


def test_concepts_page_draws_the_generated_diagram() -> None:
    fences = [_resolve(body) for body in _FENCE.findall(CONCEPTS.read_text(encoding="utf-8"))]
    assert diagram("mermaid") in fences, (
        "docs/concepts.md must show the lifecycle as "
        '```mermaid / --8<-- "docs/lifecycle.mmd" / ```; '
        f"if the table changed, regenerate: {REGENERATE}"
    )


def _transitions_table(page: str) -> dict[tuple[str, str, str], tuple[str, ...]]:
    """The rows of the page's table headed ``trigger | from | to | ... | guards``."""
    rows: dict[tuple[str, str, str], tuple[str, ...]] = {}
    columns: list[str] = []
    for line in page.splitlines():
        if not line.startswith("|"):
            columns = []
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not columns:
            columns = [cell.lower() for cell in cells]
            continue
        if {"trigger", "from", "to", "guards"} <= set(columns) and _NAME.match(cells[0]):
            row = dict(zip(columns, cells, strict=True))
            for source in _NAME.findall(row["from"]):
                key = (_NAME.findall(row["trigger"])[0], source, _NAME.findall(row["to"])[0])
                rows[key] = tuple(_NAME.findall(row["guards"]))
    return rows


def test_concepts_page_lists_every_transition_and_guard() -> None:
    page = _transitions_table(CONCEPTS.read_text(encoding="utf-8"))
    table = {
        (row.trigger, row.source.value, row.dest.value): row.guards for row in transition_table()
    }
    assert page == table, "the transitions table in docs/concepts.md disagrees with MACHINE"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: {REGENERATE}")
    write()
    print(f"wrote {DIAGRAM.relative_to(ROOT)}")
