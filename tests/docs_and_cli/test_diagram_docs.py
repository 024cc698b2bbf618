"""The lifecycle drawn in the docs is the one transition table, not a copy of it.

``docs/lifecycle.svg`` must equal the drawing ``lifecycle_svg.draw()`` makes
of the table, and the concepts page must show it inline (so it renders with
no script and no network: no ```` ```mermaid ```` fence, which Material draws
with a script from a CDN); the README shows it as an image.
``docs/lifecycle.mmd`` must equal ``klarna_flow.diagram("mermaid")``, shown on
the concepts page as text. The page's table of transitions must list the
table's rows. When the table changes, regenerate both files with::

    python -m tests.docs_and_cli.test_diagram_docs --write
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from xml.etree import ElementTree

from klarna_flow import PaymentState, diagram
from klarna_flow._domain.lifecycle import transition_table
from tests.docs_and_cli.lifecycle_svg import SVG_PATH, draw

ROOT = Path(__file__).resolve().parents[2]
DIAGRAM = ROOT / "docs" / "lifecycle.mmd"
CONCEPTS = ROOT / "docs" / "concepts.md"
README = ROOT / "README.md"
REGENERATE = "python -m tests.docs_and_cli.test_diagram_docs --write"
SVG = "http://www.w3.org/2000/svg"

_FENCE = re.compile(r"^( *)```text\n(.*?)^\1```$", re.MULTILINE | re.DOTALL)
_FIGURE = re.compile(r'^<div class="lifecycle-figure">\n(.*?)^</div>$', re.MULTILINE | re.DOTALL)
_SNIPPET = re.compile(r'^--8<-- "([^"]+)"$')
_NAME = re.compile(r"`(\w+)`")


def write() -> None:
    """Regenerate ``docs/lifecycle.mmd`` and ``docs/lifecycle.svg`` from the table."""
    DIAGRAM.write_text(diagram("mermaid"), encoding="utf-8")
    SVG_PATH.write_text(draw(), encoding="utf-8")


def _dedent(indent: str, text: str) -> str:
    """``text`` without the ``indent`` of a fence nested in a block (``??? note``)."""
    return "".join(line.removeprefix(indent) for line in text.splitlines(keepends=True))


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


def test_svg_file_is_drawn_from_the_transition_table() -> None:
    assert SVG_PATH.exists(), f"docs/lifecycle.svg is missing; generate it with: {REGENERATE}"
    assert SVG_PATH.read_text(encoding="utf-8") == draw(), (
        f"docs/lifecycle.svg disagrees with the transition table; regenerate: {REGENERATE}"
    )


def test_concepts_page_draws_the_generated_diagram() -> None:
    page = CONCEPTS.read_text(encoding="utf-8")
    figures = [_resolve(body) for body in _FIGURE.findall(page)]
    assert figures == [draw()], (
        "docs/concepts.md must show the lifecycle inline, as "
        '<div class="lifecycle-figure"> / --8<-- "docs/lifecycle.svg" / </div>; '
        f"if the table changed, regenerate: {REGENERATE}"
    )
    texts = [_resolve(_dedent(indent, body)) for indent, body in _FENCE.findall(page)]
    assert diagram("mermaid") in texts, (
        'docs/concepts.md must show the Mermaid text: ```text / --8<-- "docs/lifecycle.mmd"'
    )
    assert "```mermaid" not in page, "a mermaid fence needs a script from a CDN to show"


def test_readme_shows_the_svg() -> None:
    readme = README.read_text(encoding="utf-8")

    assert re.search(r"!\[[^\]]+\]\(docs/lifecycle\.svg\)", readme), (
        "README.md must show the lifecycle: ![...](docs/lifecycle.svg)"
    )


def _drawing() -> ElementTree.Element:
    return ElementTree.fromstring(draw())  # noqa: S314 (the drawing this module makes)


def test_the_drawing_names_every_state_and_transition() -> None:
    svg = _drawing()
    texts = [node.text for node in svg.iter(f"{{{SVG}}}text")]
    rows = transition_table()

    assert [t for t in texts if t in PaymentState.__members__] == [s.value for s in PaymentState]
    assert [t for t in texts if t not in PaymentState.__members__] == [
        part
        for row in rows
        for part in [row.trigger, *([f"[{', '.join(row.guards)}]"] if row.guards else [])]
    ]
    arrows = [node for node in svg.iter() if node.get("marker-end")]
    assert len(arrows) == len(rows) + 1  # and the start marker's


def test_a_final_state_is_one_the_table_never_leaves() -> None:
    rings = [node for node in _drawing().iter(f"{{{SVG}}}circle") if node.get("r") == "9"]
    final = set(PaymentState) - {row.source for row in transition_table()}

    assert len(rings) == len(final) == 4  # one bullseye per final state


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
    print(f"wrote {DIAGRAM.relative_to(ROOT)} and {SVG_PATH.relative_to(ROOT)}")
