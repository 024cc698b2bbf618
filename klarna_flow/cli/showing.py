"""``klarna-flow show``: one payment as it stands, and what should happen next.

Reads attributes of :class:`~klarna_flow.Payment`; those that not every
version has (the payment request's URL, the transaction's view, an operator's
resolution) are read with defaults. Tokens are never shown, not even masked.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

import attrs
from rich.table import Table

from klarna_flow._domain.lifecycle import PaymentState
from klarna_flow._domain.payment import Payment
from klarna_flow._store.locations import shown

__all__ = ["Action", "NextStep", "next_step", "payment_view", "resolve_command", "show_table"]


class Action(StrEnum):
    """What a person or the platform should do next about a payment."""

    WAIT_FOR_CUSTOMER = "WAIT_FOR_CUSTOMER"
    INITIATE = "INITIATE"
    AUTHORIZE = "AUTHORIZE"
    EXPIRE = "EXPIRE"
    RECONCILE = "RECONCILE"
    RESOLVE = "RESOLVE"
    NONE = "NONE"


@attrs.frozen
class NextStep:
    """The next step: what, until when (if there is a deadline), in words."""

    action: Action
    text: str
    until: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action.value, "until": _iso(self.until), "text": self.text}


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def resolve_command(payment_id: UUID, db: str | None = None) -> str:
    """The ``klarna-flow resolve`` line for a payment (``db`` shown without a password)."""
    where = "" if db is None else f" --db {shown(db)}"
    return (
        f"klarna-flow resolve {payment_id}{where} --by WHO --evidence TEXT "
        "(--transaction-id KRN | --no-transaction)"
    )


def next_step(payment: Payment, now: datetime, db: str | None = None) -> NextStep:
    """What should happen next to ``payment``, seen at ``now`` (on the store ``db``)."""
    state = payment.state
    if state is PaymentState.CREATED:
        return _created(payment, now)
    if state is PaymentState.COMPLETED:
        return _completed(payment, now)
    if state is PaymentState.AUTHORIZING:
        reason = getattr(payment, "unresolved_reason", None)
        if reason is not None:
            return NextStep(
                Action.RESOLVE,
                f"unresolved: resolve with evidence from Klarna ({reason}): "
                + resolve_command(payment.id, db),
            )
        since = payment.modified_on
        text = f"reconcile: authorization pending since {_iso(since)} (the worker re-sends it)"
        return NextStep(Action.RECONCILE, text)
    return NextStep(Action.NONE, f"final: {state.value}")


def _created(payment: Payment, now: datetime) -> NextStep:
    expires = getattr(payment, "request_expires_at", None)
    if expires is not None and expires <= now:
        return NextStep(Action.EXPIRE, f"expire: the payment request ran out at {_iso(expires)}")
    if payment.payment_request_id is None and getattr(payment, "payment_request_url", None) is None:
        text = f"initiate: no payment request yet; start the purchase before {_iso(expires)}"
        return NextStep(Action.INITIATE, text, expires)
    return NextStep(
        Action.WAIT_FOR_CUSTOMER, f"waiting for the customer until {_iso(expires)}", expires
    )


def _completed(payment: Payment, now: datetime) -> NextStep:
    authorize_by = payment.authorize_by
    if authorize_by is None:  # a tokenization: the customer token is the result
        return NextStep(Action.NONE, "final: COMPLETED (customer token issued)")
    if authorize_by <= now:
        text = f"expire: the authorization window closed at {_iso(authorize_by)}"
        return NextStep(Action.EXPIRE, text)
    return NextStep(Action.AUTHORIZE, f"authorize before {_iso(authorize_by)}", authorize_by)


def _transaction(payment: Payment) -> dict[str, Any] | None:
    view = getattr(payment, "transaction_view", None)
    if callable(view):  # a method in some versions, a property in others
        view = view()
    if view is None:
        return None
    fields = ("payment_transaction_id", "state", "funding_state", "captured_amount", "expires_at")
    out = {name: getattr(view, name, None) for name in fields}
    if isinstance(out["expires_at"], datetime):
        out["expires_at"] = out["expires_at"].isoformat()
    return out


def payment_view(payment: Payment, now: datetime, db: str | None = None) -> dict[str, Any]:
    """The payment as JSON-safe typed values; no token, sealed or not."""
    return {
        "payment_id": str(payment.id),
        "state": payment.state.value,
        "flow": payment.flow.value,
        "amount": payment.amount,
        "currency": payment.currency,
        "reference": payment.reference,
        "partner_account_id": payment.partner_account_id or None,
        "created_at": _iso(payment.created_on),
        "last_event_at": _iso(payment.modified_on),
        "version": payment.version,
        "payment_request_id": payment.payment_request_id,
        "payment_request_url": getattr(payment, "payment_request_url", None),
        "payment_transaction_id": payment.payment_transaction_id,
        "transaction": _transaction(payment),
        "authorization_attempts": payment.authorization_attempts,
        "last_result": getattr(payment, "last_result", None),
        "correlation_id": payment.correlation_id,
        "unresolved_reason": getattr(payment, "unresolved_reason", None),
        "resolution": getattr(payment, "resolution", None),
        "decline_reason": payment.decline_reason,
        "expiry_reason": payment.expiry_reason,
        "last_error": payment.last_error,
        "request_expires_at": _iso(getattr(payment, "request_expires_at", None)),
        "completed_at": _iso(payment.completed_at),
        "authorize_by": _iso(payment.authorize_by),
        "next_step": next_step(payment, now, db).as_dict(),
    }


def show_table(view: Mapping[str, Any]) -> Table:
    """The view as a two-column table; empty fields are left out."""
    table = Table(title=f"payment {view['payment_id']}", title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("next step", view["next_step"]["text"])
    for key, value in view.items():
        if key in {"payment_id", "next_step"} or value is None:
            continue
        text = (
            ", ".join(f"{k}={v}" for k, v in value.items() if v is not None)
            if isinstance(value, Mapping)
            else str(value)
        )
        table.add_row(key.replace("_", " "), text)
    return table
