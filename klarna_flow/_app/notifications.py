"""Turning a verified Klarna notification into at most one recorded event.

Duplicates (same ``event_id``) are recognised from the payment's own history,
so deduplication survives restarts and holds across workers. A notification
that would move a payment backwards (a late ``completed`` after ``expired``, a
repeat of a completion) changes nothing and is acknowledged.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

from klarna_flow._domain.lifecycle import PaymentState, is_final
from klarna_flow._errors import (
    CommandRefused,
    ConcurrentModification,
    ConfigurationError,
    InvalidInput,
    NotificationRejected,
    StorageError,
)
from klarna_flow.klarna._webhooks import (
    CANCELED,
    COMPLETED,
    EXPIRED,
    KNOWN_TYPES,
    Envelope,
    Headers,
    NotificationOutcome,
    NotificationResult,
    check_signing_keys,
    parse_envelope,
    verify_signature,
)

if TYPE_CHECKING:
    from uuid import UUID

    from klarna_flow._app.ports import NotificationLedger
    from klarna_flow._domain.payment import Payment

__all__ = ["NotificationHandler"]


class NotificationHandler:
    """Verifies, parses, deduplicates and applies notifications for ``Payments``.

    Raises:
        InvalidInput: ``signing_keys`` is not a mapping of str key ids to
            non-empty bytes or str (str keys are used as their UTF-8 bytes).
    """

    def __init__(self, ledger: NotificationLedger, signing_keys: Mapping[str, bytes | str]) -> None:
        self.ledger = ledger
        self.signing_keys = check_signing_keys(signing_keys)
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, result: NotificationResult) -> NotificationResult:
        with self._lock:
            self.counts[result.outcome] += 1
        return result

    def handle(self, body: bytes, headers: Headers) -> NotificationResult:
        """Verify and apply one notification; ``headers`` may be ASGI's list of pairs.

        Raises:
            ConfigurationError: no signing keys were given.
            InvalidInput: ``headers`` is neither a mapping nor a list of pairs.
        """
        if not self.signing_keys:
            msg = "Payments was given no notification signing keys"
            raise ConfigurationError(msg)
        try:
            verify_signature(body, headers, self.signing_keys)
            envelope = parse_envelope(body)
        except NotificationRejected as e:
            return self._count(NotificationResult(400, NotificationOutcome.REJECTED, detail=str(e)))
        if envelope.event_type not in KNOWN_TYPES:
            return self._count(
                _result(envelope, 200, NotificationOutcome.UNKNOWN_TYPE, None, "ignored")
            )
        try:
            return self._count(self._apply(envelope))
        except StorageError as e:
            return self._count(_result(envelope, 503, NotificationOutcome.ERROR, None, str(e)))

    def _apply(self, envelope: Envelope) -> NotificationResult:
        request_id = envelope.payment_request_id
        payment_id = self.ledger.find_by_payment_request(request_id) if request_id else None
        if payment_id is None:
            return _result(
                envelope,
                404,
                NotificationOutcome.UNKNOWN_PAYMENT,
                None,
                "no payment has this request",
            )
        for _ in range(3):
            try:
                return self._apply_to(envelope, self.ledger.get(payment_id))
            except ConcurrentModification:
                continue  # another writer got there first: look again
        return _result(
            envelope, 503, NotificationOutcome.CONFLICT, payment_id, "payment kept changing; retry"
        )

    def _apply_to(self, envelope: Envelope, payment: Payment) -> NotificationResult:
        cause = f"notification:{envelope.event_id}"
        if envelope.event_id in payment.notification_ids:
            return _result(
                envelope, 200, NotificationOutcome.DUPLICATE, payment.id, "already applied"
            )
        if is_final(payment.state, payment.flow) or payment.state is PaymentState.AUTHORIZING:
            return _result(
                envelope,
                200,
                NotificationOutcome.IGNORED,
                payment.id,
                f"payment is {payment.state}",
            )
        try:
            applied = self._command(envelope, payment, cause)
        except InvalidInput as e:
            # The body carries something unusable (a malformed token): answer
            # 400 so the delivery stays visible at Klarna rather than vanish.
            return _result(envelope, 400, NotificationOutcome.REJECTED, payment.id, str(e))
        except CommandRefused as e:  # a lost race (ConcurrentModification) goes up: retried
            return _result(envelope, 200, NotificationOutcome.REFUSED, payment.id, str(e))
        if not applied:
            return _result(
                envelope,
                200,
                NotificationOutcome.IGNORED,
                payment.id,
                f"payment is {payment.state}",
            )
        return _result(envelope, 200, NotificationOutcome.APPLIED, payment.id, "")

    def _command(self, envelope: Envelope, payment: Payment, cause: str) -> bool:
        ledger = self.ledger
        if envelope.event_type == COMPLETED:
            if payment.state is not PaymentState.CREATED:
                return False  # a late or repeated completion never moves back
            ledger.complete(
                payment,
                session_token=envelope.token("klarna_network_session_token", "payment_token"),
                customer_token=envelope.token("customer_token"),
                # Klarna's clock may run ahead of ours: never record a future time.
                completed_at=min(envelope.occurred_at, ledger.now()),
                payment_request_id=envelope.payment_request_id,
                cause=cause,
            )
        elif envelope.event_type == EXPIRED:
            payment.expire(
                now=ledger.now(), reason="KLARNA_REPORTED", reported_by_klarna=True, cause=cause
            )
            ledger.save(payment)
        elif envelope.event_type == CANCELED:
            payment.cancel(now=ledger.now(), cause=cause)
            ledger.save(payment)
        return True


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
