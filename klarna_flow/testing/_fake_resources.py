"""FakeKlarna's payment requests and transactions after authorize.

Over HTTP: cancel a payment request (``DELETE``) and read a transaction
(``GET``). From Python: what Klarna does to a transaction later (capture,
expiry), each returning the notification Klarna would send.
"""

from __future__ import annotations

import httpx

from klarna_flow._errors import InvalidInput
from klarna_flow._shared.validation import check_amount
from klarna_flow.testing._fake_authorize import Authorizer
from klarna_flow.testing._fake_http import error_response, gateway_refusal, json_response
from klarna_flow.testing._fake_records import (
    RecordedCapture,
    RecordedTransaction,
    SignedNotification,
)
from klarna_flow.testing._fake_state import OPEN
from klarna_flow.testing._fake_wire import (
    capture_wire,
    encode,
    krn,
    payment_request,
    transaction_payload,
    transaction_resource,
)

__all__ = ["Resources"]

AUTHORIZED_EVENT = "payment.transaction.state-change.authorized"


class Resources(Authorizer):
    """Cancel and read over HTTP; capture and expire transactions from Python."""

    # -- HTTP (the caller holds the lock) -------------------------------------------------

    def cancel_over_http(
        self, request: httpx.Request, account: str, api_key: str, payment_request_id: str
    ) -> httpx.Response:
        """``DELETE .../payment/requests/{id}``: an open request becomes ``CANCELED``."""
        refusal = gateway_refusal(request, api_key)
        if refusal is not None:
            return refusal
        record = self._find(payment_request_id)
        if record is None or record.partner_account_id != account:
            return error_response(404, "RESOURCE_NOT_FOUND", "Unknown payment request")
        if record.state not in OPEN:
            return error_response(
                409,
                "RESOURCE_CONFLICT",
                f"A {record.state} payment request cannot be canceled",
            )
        record.previous_state, record.state = record.state, "CANCELED"
        return json_response(200, encode(payment_request(record)))

    def read_over_http(
        self, request: httpx.Request, account: str, api_key: str, payment_transaction_id: str
    ) -> httpx.Response:
        """``GET .../payment/transactions/{id}``: the transaction as it stands."""
        refusal = gateway_refusal(request, api_key)
        if refusal is not None:
            return refusal
        found = self._transactions.get(payment_transaction_id)
        if found is None or found.partner_account_id != account:
            return error_response(404, "RESOURCE_NOT_FOUND", "Unknown payment transaction")
        return json_response(200, encode(transaction_resource(found)))

    # -- Klarna's side of transactions ------------------------------------------------------

    def capture_transaction(
        self, payment_transaction_id: str, amount: int | None = None
    ) -> SignedNotification:
        """Capture ``amount`` (default: all that is left); ``COMPLETED`` once nothing is left.

        Returns:
            the ``payment.transaction.captured`` notification, whose payload
            adds ``payment_capture`` to the transaction payload.

        Raises:
            InvalidInput: unknown id, a transaction not ``AUTHORIZED``, or an
                amount that is not 1 .. what is left to capture.
        """
        with self._lock:
            transaction = self._transaction(payment_transaction_id)
            if transaction.state != "AUTHORIZED":
                raise InvalidInput(
                    "payment_transaction_id", f"a {transaction.state} transaction cannot capture"
                )
            left = transaction.amount - transaction.captured_amount
            wanted = left if amount is None else check_amount(amount)
            if wanted > left:
                raise InvalidInput("amount", f"must be at most {left} (what is left to capture)")
            capture = RecordedCapture(krn("capture"), wanted, self.clock.now())
            changes: dict[str, object] = {"captures": (*transaction.captures, capture)}
            if wanted == left:
                changes["state"] = "COMPLETED"
            transaction = self._update(transaction, **changes)
            payload = transaction_payload(transaction)
            payload["payment_capture"] = capture_wire(capture)
            return self._transaction_note("payment.transaction.captured", payload, transaction)

    def expire_transaction(self, payment_transaction_id: str) -> SignedNotification:
        """An ``AUTHORIZED`` transaction was not captured in time: ``EXPIRED``.

        Raises:
            InvalidInput: unknown id, or a transaction not ``AUTHORIZED``.
        """
        with self._lock:
            transaction = self._transaction(payment_transaction_id)
            if transaction.state != "AUTHORIZED":
                raise InvalidInput(
                    "payment_transaction_id", f"a {transaction.state} transaction cannot expire"
                )
            transaction = self._update(transaction, state="EXPIRED")
            return self._transaction_note(
                "payment.transaction.state-change.expired",
                transaction_payload(transaction),
                transaction,
            )

    def transaction_notification(
        self, payment_transaction_id: str, event_type: str = AUTHORIZED_EVENT
    ) -> SignedNotification:
        """A signed ``event_type`` notification about the transaction as it stands.

        E.g. the authorization whose answer was lost, notified afterwards.

        Raises:
            InvalidInput: unknown id.
        """
        with self._lock:
            transaction = self._transaction(payment_transaction_id)
            payload = transaction_payload(transaction)
            return self._transaction_note(event_type, payload, transaction)

    def _transaction_note(
        self, event_type: str, payload: dict[str, object], transaction: RecordedTransaction
    ) -> SignedNotification:
        return self.notification(
            event_type, payload, partner_account_id=transaction.partner_account_id
        )
