"""How ``klarna-flow`` shows things: Rich tables for people, plain dicts for ``--json``.

Nothing here reads a store or holds a secret: commands hand over what they
read, and tokens arrive already masked (a payment's sealed tokens are shown as
the id of the key that sealed them).
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from klarna_flow._app.authorization import AuthorizationOutcome
from klarna_flow._audit.log import AuditEntry, sealed_view
from klarna_flow._audit.verify import VerificationReport
from klarna_flow._domain.payment import Payment
from klarna_flow._store.projections import Progress as ProgressCallback

__all__ = [
    "audit_table",
    "counts_table",
    "ids_table",
    "outcomes_table",
    "payment_table",
    "payment_view",
    "progress_bar",
    "report_table",
    "stdout",
]

_WIDE = 200  # when piped, Rich would otherwise cut tables at 80 columns


class _Console(Console):
    """A Rich console that leaves a closed stdout to the command.

    Rich would exit with status 1 itself; ``klarna-flow`` ends every command
    whose reader went away the same quiet way (see ``klarna_flow.cli``).
    """

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, "the reader of stdout went away")


def stdout() -> Console:
    """A console on stdout: styled on a terminal, plain and wide when piped."""
    console = _Console(highlight=False)
    if not console.is_terminal:
        console.width = _WIDE
    return console


@contextmanager
def progress_bar(label: str, *, enabled: bool = True) -> Iterator[ProgressCallback | None]:
    """A ``progress(done, total)`` callback drawing a bar on stderr.

    Only on a terminal (stdout and stderr both): piped or redirected output,
    and tests, stay quiet and get None.
    """
    err = Console(stderr=True)
    if not (enabled and err.is_terminal and sys.stdout.isatty()):
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        yield update


def _details(details: Mapping[str, Any]) -> str:
    """One line per detail; text in square brackets stays text (rich markup is escaped)."""
    return escape("\n".join(f"{k}={v}" for k, v in details.items() if v is not None))


def audit_table(entries: Sequence[AuditEntry], title: str | None = None) -> Table:
    """The timeline of one payment: event and state change, cause, details."""
    table = _table(title, "#", "recorded (UTC)", "event / state", "cause / correlation id")
    table.add_column("details", overflow="fold", min_width=30)
    for e in entries:
        before = e.state_before.value if e.state_before else "-"
        after = e.state_after.value if e.state_after else "(unchanged)"
        cause = f"{e.cause_kind}:{e.cause}"
        if e.correlation_id:
            cause += f"\ncorrelation id {e.correlation_id}"
        table.add_row(
            str(e.version),
            f"{e.recorded_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}",
            f"{e.event}\n{before} -> {after}",
            cause,
            _details(e.details),
        )
    return table


def _table(title: str | None, *columns: str, show_header: bool = True) -> Table:
    """A table whose cells fold rather than cut: ids and KRNs are shown whole."""
    table = Table(title=title, title_justify="left", show_header=show_header, show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def payment_view(payment: Payment) -> dict[str, Any]:
    """A payment as plain values; tokens shown as the key that sealed them."""
    return {
        "payment_id": str(payment.id),
        "version": payment.version,
        "state": payment.state.value,
        "flow": payment.flow.value,
        "amount": payment.amount,
        "currency": payment.currency,
        "reference": payment.reference,
        "partner_account_id": payment.partner_account_id or None,
        "payment_request_id": payment.payment_request_id,
        "created_at": payment.created_on.isoformat(),
        "last_event_at": payment.modified_on.isoformat(),
        "request_expires_at": _iso(payment.request_expires_at),
        "completed_at": _iso(payment.completed_at),
        "authorize_by": _iso(payment.authorize_by),
        "session_token": sealed_view(payment.session_token),
        "customer_token": sealed_view(payment.customer_token),
        "authorization_attempts": payment.authorization_attempts,
        "idempotency_key": payment.idempotency_key,
        "payment_transaction_id": payment.payment_transaction_id,
        "correlation_id": payment.correlation_id,
        "decline_reason": payment.decline_reason,
        "expiry_reason": payment.expiry_reason,
        "last_error": payment.last_error,
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def payment_table(view: Mapping[str, Any], title: str) -> Table:
    table = _table(title, "field", "value", show_header=False)
    for key, value in view.items():
        if value is not None:
            table.add_row(key, str(value))
    return table


def report_table(report: VerificationReport) -> Table:
    """The findings of a verification (empty when the log is clean)."""
    table = _table("findings", "payment", "version", "problem", "detail")
    for f in report.findings:
        table.add_row(str(f.payment_id), str(f.version), f.problem, f.detail)
    return table


def counts_table(counts: Mapping[str, int]) -> Table:
    table = _table("payments by state", "state", "payments")
    for state, n in sorted(counts.items()):
        table.add_row(state, str(n))
    table.add_row("total", str(sum(counts.values())), style="bold")
    return table


def outcomes_table(outcomes: Sequence[AuthorizationOutcome]) -> Table:
    table = _table("reconciled", "payment", "result", "state", "transaction id", "correlation id")
    for o in outcomes:
        table.add_row(
            str(o.payment_id),
            o.result.value,
            o.state.value,
            o.payment_transaction_id or "",
            o.correlation_id or "",
        )
    return table


def ids_table(title: str, ids: Sequence[UUID]) -> Table:
    table = _table(title, "payment")
    for payment_id in ids:
        table.add_row(str(payment_id))
    return table
