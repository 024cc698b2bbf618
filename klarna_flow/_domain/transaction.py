"""The transaction's view: what Klarna last reported about a payment's transaction.

The lifecycle ends at ``AUTHORIZED``; the transaction goes on at Klarna
(captured, expired, closed). Its view is built from the fields Klarna
reported (the authorize answer, ``payment.transaction.*`` notifications,
transaction reads), never guessed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

__all__ = ["TransactionView"]


def _instant(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo is not None else None


def _captured(fields: Mapping[str, Any]) -> int:
    stated = fields.get("captured_amount")
    if isinstance(stated, int) and not isinstance(stated, bool):
        return stated
    captures = fields.get("payment_captures")
    if not isinstance(captures, list):
        return 0
    amounts = (c.get("amount") for c in captures if isinstance(c, Mapping))
    return sum(a for a in amounts if isinstance(a, int) and not isinstance(a, bool))


@attrs.frozen
class TransactionView:
    """A payment's transaction as Klarna last reported it.

    Attributes:
        payment_transaction_id: Klarna's transaction id.
        state: ``AUTHORIZED``, ``COMPLETED``, ``EXPIRED``, ``CLOSED``, or
            None when Klarna named none.
        funding_state: ``payment_funding.state`` (``PENDING``, ``FUNDED``...).
        captured_amount: minor units captured so far.
        expires_at: when an uncaptured authorization expires, if known.
    """

    payment_transaction_id: str
    state: str | None
    funding_state: str | None
    captured_amount: int
    expires_at: datetime | None

    @classmethod
    def of(cls, payment_transaction_id: str, fields: Mapping[str, Any]) -> TransactionView:
        """The view of the reported ``fields`` (a transaction object as Klarna writes it)."""
        funding = fields.get("payment_funding")
        funding_state = funding.get("state") if isinstance(funding, Mapping) else None
        state = fields.get("state")
        return cls(
            payment_transaction_id=payment_transaction_id,
            state=state if isinstance(state, str) else None,
            funding_state=funding_state if isinstance(funding_state, str) else None,
            captured_amount=_captured(fields),
            expires_at=_instant(fields.get("expires_at")),
        )
