"""Turning a verified Klarna notification into at most one recorded event.

Duplicates (same ``event_id``) are recognised from the payment's own history,
so deduplication survives restarts and holds across workers. A notification
that would move a payment backwards (a late ``completed`` after ``expired``, a
repeat of a completion, a ``declined`` after the customer completed) changes
nothing and is acknowledged.

What each payment-request notification records:

- ``completed``: ``PurchaseCompleted`` with the tokens (``CREATED`` only);
- ``expired``: ``PaymentExpired``; ``canceled``: ``PaymentCanceled``;
- ``declined``: ``PaymentRequestDeclined`` (``CREATED`` only);
- ``submitted``, ``in-progress``, ``updated``: ``PaymentRequestReported``, the
  state unchanged (``CREATED`` only).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

from klarna_flow._app.transactions import apply_transaction_notification
from klarna_flow._domain.lifecycle import PaymentState, is_final
from klarna_flow._errors import (
    CommandRefused,
    ConcurrentModification,
    ConfigurationError,
    InvalidInput,
    MalformedNotification,
    NotificationRejected,
    StorageError,
)
from klarna_flow._shared import telemetry
from klarna_flow.klarna._webhooks import (
    CANCELED,
    COMPLETED,
    DECLINED,
    EXPIRED,
    KNOWN_TYPES,
    REPORTED_TYPES,
    TRANSACTION_PREFIX,
    Envelope,
    Headers,
    NotificationOutcome,
    NotificationResult,
    check_signing_keys,
    completion_tokens,
    parse_envelope,
    reported_expiry,
    reported_state,
    verify_signature,
)

if TYPE_CHECKING:
    from uuid import UUID

    from klarna_flow._app.ports import NotificationLedger
    from klarna_flow._domain.payment import Payment

__all__ = ["NotificationHandler"]

# Notifications about the payment request while the customer is at Klarna:
# once the payment left CREATED, they are late and change nothing.
_WHILE_CREATED = frozenset({COMPLETED, DECLINED}) | REPORTED_TYPES


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
        telemetry.count_notification(result.outcome.value, result.event_type)
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
        if envelope.event_type.startswith(TRANSACTION_PREFIX):
            return self._count(self._transaction(envelope))
        if envelope.event_type not in KNOWN_TYPES:
            return self._count(
                _result(envelope, 200, NotificationOutcome.UNKNOWN_TYPE, None, "ignored")
            )
        try:
            return self._count(self._apply(envelope))
        except StorageError as e:
            return self._count(_result(envelope, 503, NotificationOutcome.ERROR, None, str(e)))

    def _transaction(self, envelope: Envelope) -> NotificationResult:
        try:
            return apply_transaction_notification(self.ledger, envelope)
        except MalformedNotification as e:
            return NotificationResult(
                400,
                NotificationOutcome.REJECTED,
                event_id=envelope.event_id,
                event_type=envelope.event_type,
                detail=str(e),
            )
        except StorageError as e:
            return _result(envelope, 503, NotificationOutcome.ERROR, None, str(e))

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
        except (InvalidInput, MalformedNotification) as e:
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
        """Record what ``envelope`` reports; False when it is late and changes nothing.

        Raises:
            MalformedNotification: the payload carries unusable tokens.
            InvalidInput: a token of the wrong shape.
            CommandRefused: the lifecycle refuses the command.
        """
        kind = envelope.event_type
        if kind in _WHILE_CREATED and payment.state is not PaymentState.CREATED:
            return False  # late or repeated: never moves the payment back
        if kind == COMPLETED:
            self._complete(envelope, payment, cause)
            return True
        now = self.ledger.now()
        if kind == EXPIRED:
            payment.expire(now=now, reason="KLARNA_REPORTED", reported_by_klarna=True, cause=cause)
        elif kind == CANCELED:
            payment.cancel(now=now, cause=cause)
        elif kind == DECLINED:
            payment.decline_request(now=now, cause=cause)
        else:
            payment.note_request_report(
                event_type=kind,
                klarna_state=reported_state(kind, envelope.payload),
                request_expires_at=reported_expiry(envelope.payload),
                now=now,
                cause=cause,
            )
        self.ledger.save(payment)
        return True

    def _complete(self, envelope: Envelope, payment: Payment, cause: str) -> None:
        ledger = self.ledger
        tokens = completion_tokens(envelope.payload)
        ledger.complete(
            payment,
            session_token=tokens.session_token,
            customer_token=tokens.customer_token,
            # Klarna's clock may run ahead of ours: never record a future time.
            completed_at=min(envelope.occurred_at, ledger.now()),
            payment_request_id=envelope.payment_request_id,
            cause=cause,
        )


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
