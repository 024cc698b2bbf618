"""How ``klarna-flow demo`` shows a run: one table row per scenario, or plain values.

Per scenario: its payment id, flow, final state, what happened (step by step,
each with the state it left) and the commands to look further. The steps name
no token: what a run holds arrives masked or sealed (see
:mod:`klarna_flow.cli.demo_scenarios`).
"""

from __future__ import annotations

import shlex
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from klarna_flow.cli.demo import DemoResult
from klarna_flow.cli.render import audit_table

__all__ = ["demo_table", "demo_view", "print_demo"]


def demo_view(result: DemoResult) -> dict[str, Any]:
    """A demo run as plain values (``--json``)."""
    return {
        "db": result.db,
        "run": result.run,
        "key_file": result.key_file,
        "payments": [
            {
                "path": p.path,
                "reference": p.reference,
                "payment_id": str(p.payment_id),
                "flow": p.flow,
                "state": p.state,
                "payment_transaction_id": p.payment_transaction_id,
                "happened": list(p.happened),
                "next_steps": list(p.next_steps),
            }
            for p in result.payments
        ],
        "audit_trail": [e.as_dict() for e in result.trail],
        "next_steps": [_verify_all(result)],
    }


def demo_table(result: DemoResult) -> Table:
    """One row per scenario: what it is, how it ended, what happened, where to look."""
    table = Table(
        title=escape(f"demo run {result.run} on {result.db}: {len(result.payments)} scenarios"),
        title_justify="left",
        show_lines=True,
    )
    table.add_column("scenario / payment id", overflow="fold", min_width=36)
    table.add_column("flow / final state", overflow="fold")
    table.add_column("what happened", overflow="fold", ratio=3)
    table.add_column("next steps", overflow="fold", ratio=2)
    for p in result.payments:
        cells = (
            f"{p.path}\n{p.payment_id}",
            f"{p.flow}\n{p.state}",
            "\n".join(f"{n}. {step}" for n, step in enumerate(p.happened, 1)),
            "\n".join(p.next_steps),
        )
        table.add_row(*(escape(cell) for cell in cells))  # text in [brackets] stays text
    return table


def print_demo(console: Console, result: DemoResult) -> None:
    """The scenarios, the audit trail of the step-up payment, then the next step."""
    console.print(demo_table(result))
    if result.trail:
        step_up = result.trail[0].payment_id
        console.print(
            audit_table(result.trail, title=f"audit trail of payment {step_up} (step-up)")
        )
    console.print(escape(f"next: {_verify_all(result)}   (every payment's hash chain)"))


def _verify_all(result: DemoResult) -> str:
    return f"klarna-flow verify --db {shlex.quote(result.db)}"
