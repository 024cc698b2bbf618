"""``klarna-flow payments``: the payment index, filtered and paged.

Pure functions over the read model's rows (:class:`IndexRow`): a
:class:`Query` selects and pages them in a stable order (oldest first, by
creation time, then id), and :func:`row_view` turns a row into JSON-safe,
typed values (ISO 8601 UTC times, ints, None). Nothing here opens a store.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import attrs
from rich.table import Table

from klarna_flow._errors import InvalidInput, PaymentNotFound
from klarna_flow._store.read_models import IndexRow

__all__ = ["Page", "Query", "iso", "listing_table", "parse_duration", "row_view", "select"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str, *, option: str = "duration") -> timedelta:
    """``90s``, ``5m``, ``2h``, ``3d``, ``1w``, or sums of them (``1h30m``).

    Raises:
        InvalidInput: anything else (a bare number has no unit: it is refused).
    """
    compact = text.strip().lower().replace(" ", "")
    parts = _PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise InvalidInput(option, f"{text!r} is not a duration like 90s, 5m, 2h, 3d or 1h30m")
    return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))


def iso(seconds: float | None) -> str | None:
    """POSIX seconds as an ISO 8601 UTC time, or None."""
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat()


def _created(row: IndexRow) -> float:
    return row.since if row.created_at is None else row.created_at


def _order(row: IndexRow) -> tuple[float, str]:
    return (_created(row), str(row.payment_id))


@attrs.frozen
class Query:
    """What to list. Every filter given must hold (they combine with AND).

    Attributes:
        states: only these states (empty: any).
        unresolved: only payments whose authorization waits for evidence.
        older_than: only payments created at least this long ago.
        newer_than: only payments created less than this long ago.
        reference: only the payment with this reference.
        klarna_id: only the payment with this payment request or transaction id.
        limit: at most this many rows.
        after: only rows after this payment's, in the listing's order.
        offset: skip this many rows first.
    """

    states: frozenset[str] = frozenset()
    unresolved: bool = False
    older_than: timedelta | None = None
    newer_than: timedelta | None = None
    reference: str | None = None
    klarna_id: str | None = None
    limit: int = 50
    after: UUID | None = None
    offset: int = 0

    def matches(self, row: IndexRow, now: datetime) -> bool:
        """Every filter but ``unresolved`` (which needs the payment itself)."""
        created = _created(row)
        return not (
            (self.states and row.state not in self.states)
            or (self.older_than is not None and created > (now - self.older_than).timestamp())
            or (self.newer_than is not None and created <= (now - self.newer_than).timestamp())
            or (self.reference is not None and row.reference != self.reference)
            or (
                self.klarna_id is not None
                and self.klarna_id not in (row.payment_request_id, row.payment_transaction_id)
            )
            or (self.unresolved and row.state != "AUTHORIZING")
        )


@attrs.frozen
class Page:
    """The rows of one page, and the id to pass as ``--after`` for the next (None: last page)."""

    rows: Sequence[IndexRow]
    next_after: UUID | None


def select(
    rows: Iterable[IndexRow],
    query: Query,
    now: datetime,
    is_unresolved: Callable[[UUID], bool],
) -> Page:
    """The page ``query`` asks for, in a stable order (oldest created first, then id).

    Raises:
        PaymentNotFound: ``after`` names a payment the index does not hold.
    """
    ordered = sorted(rows, key=_order)
    if query.after is not None:
        start = next((r for r in ordered if r.payment_id == query.after), None)
        if start is None:
            raise PaymentNotFound(query.after)
        key = _order(start)
        ordered = [r for r in ordered if _order(r) > key]
    chosen = [r for r in ordered if query.matches(r, now)]
    if query.unresolved:
        chosen = [r for r in chosen if is_unresolved(r.payment_id)]
    page = chosen[query.offset : query.offset + query.limit]
    more = len(chosen) > query.offset + query.limit
    return Page(page, page[-1].payment_id if more and page else None)


def row_view(row: IndexRow, *, unresolved: bool) -> dict[str, Any]:
    """A row as JSON-safe typed values."""
    return {
        "payment_id": str(row.payment_id),
        "state": row.state,
        "flow": row.flow,
        "amount": row.amount,
        "currency": row.currency,
        "reference": row.reference,
        "created_at": iso(row.created_at),
        "state_since": iso(row.since),
        "deadline": iso(row.deadline),
        "payment_request_id": row.payment_request_id,
        "payment_transaction_id": row.payment_transaction_id,
        "version": row.version,
        "unresolved": unresolved,
    }


def listing_table(views: Sequence[dict[str, Any]], title: str) -> Table:
    """Rows as a table for people (times to the second, UTC)."""
    table = Table(title=title, title_justify="left")
    for column in ("payment", "state"):
        table.add_column(column, no_wrap=True)
    for column in ("flow", "amount", "reference"):
        table.add_column(column, overflow="fold")
    for column in ("created (UTC)", "deadline (UTC)"):
        table.add_column(column, no_wrap=True)
    table.add_column("Klarna ids", overflow="fold")
    for v in views:
        state = v["state"] + (" (unresolved)" if v["unresolved"] else "")
        amount = "" if v["amount"] is None else f"{v['amount']} {v['currency'] or ''}".strip()
        klarna = [i for i in (v["payment_request_id"], v["payment_transaction_id"]) if i]
        table.add_row(
            v["payment_id"],
            state,
            v["flow"],
            amount,
            v["reference"] or "",
            _short(v["created_at"]),
            _short(v["deadline"]),
            "\n".join(klarna),
        )
    return table


def _short(text: str | None) -> str:
    return "" if text is None else text[:19].replace("T", " ")
