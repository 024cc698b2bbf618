"""The operator's rung of the resolution ladder: ``unresolved`` and ``resolve``.

``unresolved`` lists the payments whose authorization may have reached
Klarna and waits for evidence (what ``Payments.unresolved()`` returns), read
as ``payments`` reads: read-only, no key. ``resolve`` records what a person
found with ``Payments.resolve`` (cause ``operator:<by>``, the evidence kept in
the audit trail), so it needs the cipher key, as every command that records
events does. ``klarna_flow.cli.commands`` registers both.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from klarna_flow._audit.log import AuditEntry, AuditLog
from klarna_flow._domain.lifecycle import PaymentState
from klarna_flow._domain.payment import Payment
from klarna_flow._errors import PaymentNotFound
from klarna_flow._store.locations import shown
from klarna_flow._store.read_models import IndexRow
from klarna_flow.cli import render, showing
from klarna_flow.cli.listing import iso
from klarna_flow.cli.options import (
    DEFAULT_DB,
    Db,
    Json,
    KeyFile,
    PaymentArg,
    audit_log,
    payments_at,
    print_json,
)

__all__ = ["resolve", "unresolved", "unresolved_views"]

By = Annotated[
    str,
    typer.Option(
        "--by",
        help="Who resolves (letters, digits, . _ @ + -); the audit trail shows operator:<by>.",
        show_default=False,
    ),
]
Evidence = Annotated[
    str,
    typer.Option(
        "--evidence",
        help="What the resolution rests on (a ticket, what Klarna's portal shows).",
        show_default=False,
    ),
]
TransactionId = Annotated[
    str | None,
    typer.Option(
        "--transaction-id",
        help="The transaction Klarna holds: the payment becomes AUTHORIZED with it.",
        show_default=False,
    ),
]
NoTransaction = Annotated[
    bool,
    typer.Option(
        "--no-transaction",
        help="Klarna holds none: the payment goes back to where the attempt began.",
    ),
]


# -- unresolved -----------------------------------------------------------------------


def unresolved_views(log: AuditLog, db: str) -> list[dict[str, Any]]:
    """The payments waiting for evidence, longest waiting first, as JSON-safe values."""
    found: list[tuple[IndexRow, Payment]] = []
    for row in log.read_model(PaymentState.AUTHORIZING):
        try:
            payment = log.get(row.payment_id)
        except PaymentNotFound:  # deleted from the store under the index: verify reports it
            continue
        if payment.is_unresolved:
            found.append((row, payment))
    found.sort(key=lambda pair: (pair[0].since, str(pair[0].payment_id)))
    return [_unresolved_view(row, payment, db) for row, payment in found]


def _unresolved_view(row: IndexRow, payment: Payment, db: str) -> dict[str, Any]:
    return {
        "payment_id": str(payment.id),
        "reference": payment.reference,
        "flow": payment.flow.value,
        "amount": payment.amount,
        "currency": payment.currency,
        "authorizing_since": iso(row.since),
        "payment_request_id": payment.payment_request_id,
        "authorization_attempts": payment.authorization_attempts,
        "reason": payment.unresolved_reason,
        "correlation_id": payment.correlation_id,
        "next_step": showing.resolve_command(payment.id, db),
    }


def _unresolved_table(views: Sequence[dict[str, Any]]) -> Table:
    table = Table(
        title=f"{len(views)} unresolved payment(s): each waits for a person's evidence",
        title_justify="left",
    )
    table.add_column("payment", no_wrap=True)
    for column in ("reference", "amount"):
        table.add_column(column, overflow="fold")
    table.add_column("AUTHORIZING since (UTC)", no_wrap=True)
    table.add_column("payment request", no_wrap=True)
    table.add_column("why unresolved", overflow="fold")
    for v in views:
        table.add_row(
            v["payment_id"],
            escape(v["reference"]),
            f"{v['amount']} {v['currency']}",
            (v["authorizing_since"] or "")[:19].replace("T", " "),
            v["payment_request_id"] or "",
            escape(v["reason"] or ""),
        )
    return table


def unresolved(db: Db = DEFAULT_DB, as_json: Json = False) -> None:
    """List the payments whose authorization waits for evidence, and how to resolve each.

    Each is AUTHORIZING: its call may have reached Klarna, and a re-send was
    answered with an error that proves nothing. Look in Klarna's portal, then
    record what you found with `klarna-flow resolve`. Read-only; needs no cipher key.
    """
    with audit_log(db) as log:
        views = unresolved_views(log, db)
    if as_json:
        print_json(views)
        return
    if not views:
        typer.echo("no unresolved payments")
        return
    render.stdout().print(_unresolved_table(views))
    for v in views:
        typer.echo(f"next: {v['next_step']}")


# -- resolve --------------------------------------------------------------------------


def _recorded(entries: Sequence[AuditEntry], version: int) -> AuditEntry:
    return next(e for e in reversed(entries) if e.version == version)


def resolution_view(payment: Payment, entry: AuditEntry, db: str) -> dict[str, Any]:
    """What ``resolve`` recorded, read back from the audit trail, and what comes next."""
    return {
        "payment_id": str(payment.id),
        "event": entry.event,
        "version": entry.version,
        "recorded_at": entry.recorded_at.isoformat(),
        "state_before": None if entry.state_before is None else entry.state_before.value,
        "state": payment.state.value,
        "cause": f"{entry.cause_kind}:{entry.cause}",
        "evidence": entry.details.get("evidence"),
        "payment_transaction_id": entry.details.get("payment_transaction_id"),
        "payment_next_step": showing.next_step(payment, datetime.now(UTC)).as_dict(),
        "next_step": f"klarna-flow audit {payment.id} --db {shown(db)}",
    }


def _print_resolution(view: dict[str, Any]) -> None:
    transaction = view["payment_transaction_id"] or "none (Klarna holds no transaction)"
    for line in (
        f"recorded {view['event']} (event {view['version']}) on payment {view['payment_id']}: "
        f"{view['state_before']} -> {view['state']}",
        f"cause: {view['cause']}",
        f"transaction: {transaction}",
        f"evidence: {view['evidence']}",
        f"its next step: {view['payment_next_step']['text']}",
        f"next: {view['next_step']}",
    ):
        typer.echo(line)


def resolve(
    payment_id: PaymentArg,
    *,
    by: By,
    evidence: Evidence,
    transaction_id: TransactionId = None,
    no_transaction: NoTransaction = False,
    db: Db = DEFAULT_DB,
    key_file: KeyFile = None,
    as_json: Json = False,
) -> None:
    """Record what a person found about a payment left AUTHORIZING, with the evidence.

    Give exactly one of --transaction-id (Klarna holds this transaction: the
    payment becomes AUTHORIZED) or --no-transaction (Klarna holds none: the
    payment goes back to COMPLETED, or CREATED for an initial call). Recorded
    with the cause operator:<by>; refused, with nothing recorded, unless the
    payment is AUTHORIZING. Needs the cipher key, as every command that records does.
    """
    if (transaction_id is None) != no_transaction:
        raise typer.BadParameter(
            "give exactly one of --transaction-id or --no-transaction",
            param_hint="'--transaction-id' / '--no-transaction'",
        )
    with payments_at(db, key_file) as payments:
        payment = payments.resolve(
            payment_id,
            by=by,
            evidence=evidence,
            transaction_id=transaction_id,
            no_transaction=no_transaction,
        )
        entry = _recorded(payments.audit_trail(payment_id), payment.version)
    view = resolution_view(payment, entry, db)
    if as_json:
        print_json(view)
    else:
        _print_resolution(view)
