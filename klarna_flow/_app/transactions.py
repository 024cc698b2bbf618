"""After authorization, and when the answer was lost: what Klarna reports of transactions.

- ``payment.transaction.*`` notifications: for an ``AUTHORIZING`` payment a
  transaction naming it resolves the pending call as approved (the second rung
  of the resolution ladder); for an authorized one they update the
  transaction's view; anything else contradicts the record and is recorded as
  a ``TransactionConflict``, logged at ERROR, never dropped.
- ``refresh``: a transaction read (``GET .../payment/transactions/{id}``).
- ``resolve``: the operator's rung, with the evidence, recorded under
  ``operator:<by>``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from uuid import UUID

from klarna_flow._domain.lifecycle import PaymentState
from klarna_flow._errors import (
    ConcurrentModification,
    InvalidInput,
    InvalidTransition,
    PaymentNotFound,
    WrongFlow,
)
from klarna_flow._shared.validation import check_cause, check_krn
from klarna_flow.klarna import AsyncKlarnaClient, KlarnaClient, PaymentTransaction
from klarna_flow.klarna._webhooks import (
    Envelope,
    NotificationOutcome,
    NotificationResult,
    TransactionReport,
    transaction_report,
)
from klarna_flow.klarna._wire import instant

if TYPE_CHECKING:
    from klarna_flow._app.ports import TransactionLedger as Ledger
    from klarna_flow._domain.payment import Payment

__all__ = ["apply_transaction_notification", "refresh", "refresh_async", "resolve"]

logger = logging.getLogger("klarna_flow")

_REPORTED = (
    "state",
    "amount",
    "currency",
    "captured_amount",
    "payment_captures",
    "payment_funding",
    "expires_at",
)
_OPERATOR = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+\-]{0,99}")
_EVIDENCE_LIMIT = 2000


# -- notifications ------------------------------------------------------------------


def apply_transaction_notification(ledger: Ledger, envelope: Envelope) -> NotificationResult:
    """Apply one ``payment.transaction.*`` notification.

    Raises:
        MalformedNotification: the payload names no transaction (answered 400).
    """
    report = transaction_report(envelope.payload)
    payment_id = _find(ledger, envelope, report)
    if payment_id is None:
        # Not ours (another integration on the account): acknowledged, or Klarna
        # would retry for 12 hours.
        return _result(envelope, 200, NotificationOutcome.UNKNOWN_PAYMENT, None, "no payment")
    for _ in range(3):
        try:
            return _apply(ledger, envelope, report, ledger.get(payment_id))
        except ConcurrentModification:
            continue
    return _result(envelope, 503, NotificationOutcome.CONFLICT, payment_id, "kept changing")


def _find(ledger: Ledger, envelope: Envelope, report: TransactionReport) -> UUID | None:
    if report.payment_request_id is not None:
        found = ledger.find_by_payment_request(report.payment_request_id)
        if found is not None:
            return found
    if report.reference is None:
        return None
    accounts = dict.fromkeys(a for a in (envelope.account_id, ledger.partner_account_id) if a)
    for account in accounts:
        try:
            return ledger.find_by_reference(account, report.reference)
        except (PaymentNotFound, InvalidInput):
            continue
    return None


def _apply(
    ledger: Ledger, envelope: Envelope, report: TransactionReport, payment: Payment
) -> NotificationResult:
    cause = f"notification:{envelope.event_id}"
    if envelope.event_id in payment.notification_ids:
        return _result(envelope, 200, NotificationOutcome.DUPLICATE, payment.id, "already applied")
    now = ledger.now()
    fields = dict(report.fields)
    if payment.state is PaymentState.AUTHORIZING and payment.flow.authorizes:
        payment.approve(
            payment_transaction_id=report.payment_transaction_id,
            correlation_id=None,
            transaction_expires_at=_expiry(fields),
            transaction=fields,
            now=now,
            cause=cause,
        )
        ledger.save(payment)
        logger.warning(
            "payment %s: the pending authorization was resolved by Klarna's %s notification",
            payment.id,
            envelope.event_type,
        )
        return _result(envelope, 200, NotificationOutcome.APPLIED, payment.id, "resolved")
    if payment.payment_transaction_id == report.payment_transaction_id:
        changed = payment.report_transaction(
            transaction=fields,
            source="notification",
            event_type=envelope.event_type,
            now=now,
            cause=cause,
        )
        if not changed:
            return _result(envelope, 200, NotificationOutcome.IGNORED, payment.id, "nothing new")
        ledger.save(payment)
        return _result(envelope, 200, NotificationOutcome.APPLIED, payment.id, "")
    return _conflict(ledger, envelope, report, payment, cause)


def _conflict(
    ledger: Ledger, envelope: Envelope, report: TransactionReport, payment: Payment, cause: str
) -> NotificationResult:
    held = payment.payment_transaction_id
    detail = (
        f"Klarna reported transaction {report.payment_transaction_id} ({envelope.event_type}) "
        f"while the payment is {payment.state.value}"
        + (f" with transaction {held}" if held else "")
        + (f", resolved as {payment.resolution}" if payment.resolution else "")
    )
    payment.note_conflict(
        payment_transaction_id=report.payment_transaction_id,
        event_type=envelope.event_type,
        detail=detail,
        now=ledger.now(),
        cause=cause,
    )
    ledger.save(payment)
    logger.error("payment %s: %s; a human must look", payment.id, detail)
    return _result(envelope, 200, NotificationOutcome.APPLIED, payment.id, "conflict recorded")


def _expiry(fields: Mapping[str, Any]) -> Any:
    try:
        return instant(fields.get("expires_at"), "expires_at")
    except ValueError:
        return None


def _result(
    envelope: Envelope,
    status: int,
    outcome: NotificationOutcome,
    payment_id: UUID | None,
    detail: str,
) -> NotificationResult:
    return NotificationResult(
        status_code=status,
        outcome=outcome,
        event_id=envelope.event_id,
        event_type=envelope.event_type,
        payment_id=payment_id,
        detail=detail,
    )


# -- transaction reads --------------------------------------------------------------


def _readable(ledger: Ledger, payment_id: UUID) -> tuple[Payment, str, str]:
    payment = ledger.get(payment_id)
    if payment.payment_transaction_id is None:
        raise InvalidTransition(
            f"payment {payment_id} is {payment.state.value}: it holds no transaction to read",
            payment_id=payment_id,
            command="refresh_transaction",
            state=payment.state.value,
        )
    account = payment.partner_account_id or ledger.partner_account_id or ""
    return payment, account, payment.payment_transaction_id


def _record_read(ledger: Ledger, payment: Payment, read: PaymentTransaction) -> Payment:
    fields = {name: read.raw[name] for name in _REPORTED if name in read.raw}
    for _ in range(3):
        changed = payment.report_transaction(
            transaction=fields,
            source="read",
            event_type=None,
            now=ledger.now(),
            cause="command:refresh_transaction",
        )
        if not changed:
            return payment
        try:
            ledger.save(payment)
        except ConcurrentModification:
            payment = ledger.get(payment.id)
            continue
        return payment
    return payment


def refresh(ledger: Ledger, client: KlarnaClient, payment_id: UUID) -> Payment:
    """Read the payment's transaction at Klarna and record what changed."""
    payment, account, transaction_id = _readable(ledger, payment_id)
    read = client.read_transaction(
        partner_account_id=account,
        payment_transaction_id=transaction_id,
        correlation_id=str(payment_id),
    )
    return _record_read(ledger, payment, read)


async def refresh_async(ledger: Ledger, client: AsyncKlarnaClient, payment_id: UUID) -> Payment:
    """:func:`refresh` with the async client; storage runs in a thread."""
    payment, account, transaction_id = await asyncio.to_thread(_readable, ledger, payment_id)
    read = await client.read_transaction(
        partner_account_id=account,
        payment_transaction_id=transaction_id,
        correlation_id=str(payment_id),
    )
    return await asyncio.to_thread(_record_read, ledger, payment, read)


# -- the operator's rung ------------------------------------------------------------


def _check_resolution(
    by: object, evidence: object, transaction_id: object, no_transaction: object
) -> tuple[str, str, str | None]:
    if not isinstance(by, str) or not _OPERATOR.fullmatch(by):
        raise InvalidInput(
            "by", "must name the operator: 1..100 letters, digits, '.', '_', '@', '+', '-'"
        )
    if not isinstance(evidence, str) or not evidence.strip() or len(evidence) > _EVIDENCE_LIMIT:
        raise InvalidInput("evidence", f"must be a non-empty text of at most {_EVIDENCE_LIMIT}")
    if not isinstance(no_transaction, bool):
        raise InvalidInput("no_transaction", "must be True or False")
    if (transaction_id is None) != no_transaction:
        raise InvalidInput(
            "transaction_id", "give either transaction_id=... or no_transaction=True"
        )
    if transaction_id is not None:
        transaction_id = check_krn(transaction_id, "transaction_id")
    return by, evidence, transaction_id


def resolve(
    ledger: Ledger,
    payment_id: UUID,
    *,
    by: object,
    evidence: object,
    transaction_id: object,
    no_transaction: object,
) -> Payment:
    """Record an operator's resolution of a pending authorization (cause ``operator:<by>``).

    Raises:
        InvalidInput: a bad argument (nothing recorded).
        InvalidTransition: the payment is not ``AUTHORIZING``.
        WrongFlow: a transaction for a pure tokenization payment.
        ConcurrentModification: the payment changed meanwhile (nothing recorded).
    """
    by, evidence, transaction_id = _check_resolution(by, evidence, transaction_id, no_transaction)
    cause = check_cause(f"operator:{by}")
    payment = ledger.get(payment_id)
    if transaction_id is not None and not payment.flow.authorizes:
        raise WrongFlow(
            f"payment {payment_id} is a pure tokenization: it never holds a transaction",
            payment_id=payment_id,
            command="resolve",
            state=payment.state.value,
        )
    payment.resolve(
        by=by,
        evidence=evidence,
        payment_transaction_id=transaction_id,
        now=ledger.now(),
        cause=cause,
    )
    ledger.save(payment)
    logger.warning(
        "payment %s resolved by operator %s: %s",
        payment_id,
        by,
        f"transaction {transaction_id}" if transaction_id else "no transaction",
    )
    return payment
