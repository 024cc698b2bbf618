"""The lifecycle drawn as SVG from the transition table, in pure Python.

The drawing needs no network and no Graphviz: one column per state (final
states, those the table never leaves, have a double border and end in a
bullseye), one row per transition of the table, in the table's order, as an
arrow from its source's column to its destination's, labelled with its
trigger and its guards. ``docs/lifecycle.svg`` is this drawing, committed
(the docs page and the README show it); ``test_diagram_docs.py`` keeps it
equal to the table, and regenerates it (with ``docs/lifecycle.mmd``)::

    python -m tests.docs_and_cli.test_diagram_docs --write
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from klarna_flow import PaymentState
from klarna_flow._domain.lifecycle import Row, transition_table

ROOT = Path(__file__).resolve().parents[2]
SVG_PATH = ROOT / "docs" / "lifecycle.svg"

MARGIN = 16
COLUMN = 114  # width of one state's column
BOX_HEIGHT = 34
TOP = MARGIN + 30  # the start marker's row sits above the boxes' lifelines
ROW = 48  # height of one transition's row
TRIGGER_CHAR = 7.6  # estimated advance of one character of the trigger (bold, 13 px)
GUARD_CHAR = 6.6  # of one character of the guards (monospace, 11 px: 0.6 em)
INK = "#1f2937"
FAINT = "#9ca3af"
FINAL_FILL = "#eef2ff"
FILL = "#ffffff"
FONT = "font-family:Helvetica,Arial,sans-serif"
MONO = "font-family:Menlo,Consolas,'DejaVu Sans Mono',monospace"


def _num(value: float) -> str:
    """A coordinate as short, stable text."""
    return f"{value:.1f}".removesuffix(".0")


def _open(name: str, /, **attrs: float | str) -> str:
    """An element's start tag; attribute names use ``_`` for ``-`` (``class_``: ``class``)."""
    parts = [name]
    for key, value in attrs.items():
        shown = _num(value) if isinstance(value, int | float) else value
        parts.append(f"{key.rstrip('_').replace('_', '-')}={quoteattr(shown)}")
    return "<" + " ".join(parts) + ">"


def _tag(name: str, text: str | None = None, /, **attrs: float | str) -> str:
    """One whole element: empty, or holding ``text``."""
    head = _open(name, **attrs)
    return head.removesuffix(">") + "/>" if text is None else f"{head}{escape(text)}</{name}>"


class Layout:
    """Where each state's column and each row sit."""

    def __init__(self, states: Sequence[PaymentState], rows: Sequence[Row]) -> None:
        self.states = list(states)
        self.rows = list(rows)
        self.final = [s for s in self.states if not any(r.source is s for r in self.rows)]
        self.width = 2 * MARGIN + COLUMN * len(self.states)
        self.boxes_y = TOP + 10
        self.first_row_y = self.boxes_y + BOX_HEIGHT + ROW - 8
        self.end_y = self.first_row_y + ROW * (len(self.rows) - 1) + 34
        self.height = self.end_y + 16 + MARGIN

    def x(self, state: PaymentState) -> float:
        return MARGIN + COLUMN * (self.states.index(state) + 0.5)

    def row_y(self, index: int) -> float:
        return self.first_row_y + ROW * index

    def centre(self, x: float, text_width: float) -> float:
        """``x``, moved so that text of ``text_width`` centred on it stays inside."""
        half = text_width / 2
        return min(max(x, MARGIN + half), self.width - MARGIN - half)


def draw(rows: Sequence[Row] | None = None) -> str:
    """The SVG text of the lifecycle (of ``rows``, by default the transition table)."""
    layout = Layout(list(PaymentState), transition_table() if rows is None else rows)
    parts = [
        _open(
            "svg",
            xmlns="http://www.w3.org/2000/svg",
            viewBox=f"0 0 {layout.width} {_num(layout.height)}",
            width=layout.width,
            height=layout.height,
            role="img",
            aria_labelledby="lifecycle-title",
            class_="lifecycle-diagram",
        ),
        _tag(
            "title", "The payment lifecycle, drawn from the transition table", id="lifecycle-title"
        ),
        "<defs>"
        + _open(
            "marker",
            id="lifecycle-arrow",
            viewBox="0 0 10 10",
            refX=10,
            refY=5,
            markerWidth=7,
            markerHeight=7,
            orient="auto-start-reverse",
        )
        + _tag("path", d="M0,0 L10,5 L0,10 z", fill=INK)
        + "</marker></defs>",
        _tag("rect", x=0, y=0, width=layout.width, height=layout.height, rx=8, fill="#ffffff"),
        *_lifelines(layout),
        *_start(layout),
        *_boxes(layout),
        *(part for i, row in enumerate(layout.rows) for part in _transition(layout, i, row)),
        *_ends(layout),
        "</svg>",
    ]
    return "\n".join(parts) + "\n"


def _lifelines(layout: Layout) -> list[str]:
    return [
        _tag(
            "line",
            x1=layout.x(s),
            y1=layout.boxes_y + BOX_HEIGHT,
            x2=layout.x(s),
            y2=layout.end_y - (9 if s in layout.final else 0),
            stroke=FAINT,
            stroke_dasharray="4 4",
        )
        for s in layout.states
    ]


def _start(layout: Layout) -> list[str]:
    """The initial marker, above the first state's box."""
    x = layout.x(layout.states[0])
    return [
        _tag("circle", cx=x, cy=MARGIN + 6, r=6, fill=INK),
        _tag(
            "line",
            x1=x,
            y1=MARGIN + 12,
            x2=x,
            y2=layout.boxes_y,
            stroke=INK,
            stroke_width=1.5,
            marker_end="url(#lifecycle-arrow)",
        ),
    ]


def _boxes(layout: Layout) -> list[str]:
    parts = []
    for s in layout.states:
        final = s in layout.final
        left = layout.x(s) - (COLUMN - 16) / 2
        box: dict[str, float | str] = {
            "x": left,
            "y": layout.boxes_y,
            "width": COLUMN - 16,
            "height": BOX_HEIGHT,
        }
        parts.append(
            _tag(
                "rect",
                **box,
                rx=8,
                fill=FINAL_FILL if final else FILL,
                stroke=INK,
                stroke_width=1.5,
            )
        )
        if final:
            inner: dict[str, float | str] = {
                "x": left + 3,
                "y": layout.boxes_y + 3,
                "width": COLUMN - 22,
            }
            parts.append(
                _tag("rect", **inner, height=BOX_HEIGHT - 6, rx=6, fill="none", stroke=INK)
            )
        parts.append(
            _tag(
                "text",
                s.value,
                x=layout.x(s),
                y=layout.boxes_y + BOX_HEIGHT / 2 + 5,
                text_anchor="middle",
                style=f"{FONT};font-size:12px;font-weight:bold",
                fill=INK,
            )
        )
    return parts


def _transition(layout: Layout, index: int, row: Row) -> list[str]:
    y = layout.row_y(index)
    x1, x2 = layout.x(row.source), layout.x(row.dest)
    if x1 == x2:  # a transition back to its own state: a loop to the right
        mid = x1 + 30
        arrow = _tag(
            "path",
            d=f"M{_num(x1)},{_num(y - 8)} C{_num(x1 + 40)},{_num(y - 16)} "
            f"{_num(x1 + 40)},{_num(y + 16)} {_num(x1)},{_num(y + 8)}",
            fill="none",
            stroke=INK,
            stroke_width=1.5,
            marker_end="url(#lifecycle-arrow)",
        )
    else:
        mid = (x1 + x2) / 2
        step = 5 if x2 > x1 else -5  # start just off the source's lifeline
        arrow = _tag(
            "line",
            x1=x1 + step,
            y1=y,
            x2=x2,
            y2=y,
            stroke=INK,
            stroke_width=1.5,
            marker_end="url(#lifecycle-arrow)",
        )
    halo: dict[str, float | str] = {
        "stroke": "#ffffff",
        "stroke_width": 4,
        "paint_order": "stroke",
        "fill": INK,
    }
    parts = [
        _tag("circle", cx=x1, cy=y, r=3, fill=INK),
        arrow,
        _tag(
            "text",
            row.trigger,
            x=layout.centre(mid, len(row.trigger) * TRIGGER_CHAR),
            y=y - 7,
            text_anchor="middle",
            style=f"{FONT};font-size:13px;font-weight:bold",
            **halo,
        ),
    ]
    if row.guards:
        guards = f"[{', '.join(row.guards)}]"
        width = len(guards) * GUARD_CHAR
        x = layout.centre(mid, width)
        backdrop: dict[str, float | str] = {
            "x": x - width / 2 - 2,
            "y": y + 5,
            "width": width + 4,
            "height": 14,
        }
        parts.append(_tag("rect", **backdrop, fill="#ffffff", opacity=0.85))
        parts.append(
            _tag(
                "text",
                guards,
                x=x,
                y=y + 15,
                text_anchor="middle",
                style=f"{MONO};font-size:11px",
                **halo,
            )
        )
    return parts


def _ends(layout: Layout) -> list[str]:
    """A bullseye under each final state's lifeline."""
    parts = []
    for s in layout.final:
        x = layout.x(s)
        parts.append(_tag("circle", cx=x, cy=layout.end_y, r=9, fill="none", stroke=INK))
        parts.append(_tag("circle", cx=x, cy=layout.end_y, r=5, fill=INK))
    return parts
