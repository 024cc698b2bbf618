"""FakeKlarna's state and its authorize decision: tokens, idempotency, transactions.

Every method here expects the caller to hold ``self._lock``.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx

from klarna_flow._errors import InvalidInput
from klarna_flow._shared.clock import Clock
from klarna_flow._shared.secrets import mask
from klarna_flow.testing._fake_http import (
    AuthorizeRequest,
    error_response,
    json_response,
    parse_authorize,
)
from klarna_flow.testing._fake_notify import iso_millis
from klarna_flow.testing._fake_records import (
    PaymentRequestRecord,
    RecordedTransaction,
    Scripted,
    StoredAnswer,
)

__all__ = ["Authorizer"]

TOKEN_LIFETIME = timedelta(minutes=60)
IDEMPOTENCY_WINDOW = timedelta(hours=24)
TRANSACTION_LIFETIME = timedelta(days=28)
_OPEN = frozenset({"SUBMITTED", "IN_PROGRESS"})
_SESSION_HEADER = "Klarna-Network-Session-Token"


def _krn(kind: str) -> str:
    return f"krn:payment:eu1:{kind}:{uuid.uuid4()}"


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _invalid(parameter: str, reason: str, message: str) -> httpx.Response:
    problem = {"parameter": parameter, "reason": reason}
    return error_response(400, "VALIDATION_ERROR", message, [problem])


def _terms_refusal(
    call: AuthorizeRequest, record: PaymentRequestRecord, now: datetime
) -> httpx.Response | None:
    """The error answer for an expired token or terms that differ, else None."""
    assert record.completed_at is not None  # a token exists only once completed
    if record.state != "COMPLETED" or now >= record.completed_at + TOKEN_LIFETIME:
        return _invalid(_SESSION_HEADER, "expired", "The session token is no longer valid")
    if call.currency != record.currency:
        return _invalid("currency", "does not match the payment request", "Mismatch")
    if call.amount != record.amount:
        return _invalid(
            "request_payment_transaction.amount", "does not match the payment request", "Mismatch"
        )
    return None


class Authorizer:
    """Payment requests, session tokens, idempotent answers and transactions."""

    def __init__(self, clock: Clock, partner_account_id: str) -> None:
        self.clock = clock
        self.partner_account_id = partner_account_id
        self._lock = threading.Lock()
        self._accounts = {partner_account_id}
        self._payment_requests: dict[str, PaymentRequestRecord] = {}
        self._by_token: dict[str, str] = {}
        self._answers: dict[tuple[str, str], StoredAnswer] = {}
        self._transactions: list[RecordedTransaction] = []

    # -- payment requests ---------------------------------------------------------

    def _new_request(
        self, account: str, amount: int, currency: str, flow: str
    ) -> PaymentRequestRecord:
        record = PaymentRequestRecord(
            payment_request_id=_krn("payment-request"),
            partner_account_id=account,
            amount=amount,
            currency=currency,
            flow=flow,
            created_at=self.clock.now(),
        )
        self._payment_requests[record.payment_request_id] = record
        self._accounts.add(account)
        return record

    def _get(self, payment_request_id: str) -> PaymentRequestRecord:
        try:
            return self._payment_requests[payment_request_id]
        except (KeyError, TypeError):
            raise InvalidInput("payment_request_id", "no such payment request") from None

    def _move(self, payment_request_id: str, state: str) -> tuple[PaymentRequestRecord, str]:
        """Move a request to ``state``; return it and its previous state."""
        record = self._get(payment_request_id)
        allowed = _OPEN if state == "COMPLETED" else _OPEN | {"COMPLETED"}
        if record.state not in allowed or record.authorized_with is not None:
            raise InvalidInput(
                "payment_request_id", f"a {record.state} payment request cannot become {state}"
            )
        previous, record.state = record.state, state
        return record, previous

    def _issue_tokens(self, record: PaymentRequestRecord) -> tuple[str | None, str | None]:
        session = _krn("klarna-network-session-token") if "AUTHORIZATION" in record.flow else None
        customer = _krn("customer-token") if "TOKENIZATION" in record.flow else None
        if session is not None:
            self._by_token[session] = record.payment_request_id
        return session, customer

    # -- authorize ----------------------------------------------------------------

    def authorize(
        self, request: httpx.Request, account: str, api_key: str, scripted: Scripted | None
    ) -> httpx.Response:
        """Check, then answer (or replay) one authorize call."""
        call = parse_authorize(request, account, api_key)
        if isinstance(call, httpx.Response):
            return call
        now = self.clock.now()
        stored = self._answers.get((call.partner_account_id, call.idempotency_key))
        if stored is not None and now < stored.stored_at + IDEMPOTENCY_WINDOW:
            if stored.fingerprint != call.fingerprint:
                return error_response(
                    409,
                    "RESOURCE_CONFLICT",
                    "The idempotency key was already used with a different request",
                )
            return json_response(stored.status_code, stored.body)
        refusal = self._refusal(call, now)
        if refusal is not None:
            return refusal
        record = self._payment_requests[self._by_token[call.session_token]]
        body = self._decide(call, record, now, scripted)
        self._answers[(call.partner_account_id, call.idempotency_key)] = StoredAnswer(
            fingerprint=call.fingerprint, status_code=200, body=body, stored_at=now
        )
        return json_response(200, body)

    def _refusal(self, call: AuthorizeRequest, now: datetime) -> httpx.Response | None:
        """The error answer for a token that cannot be used, else None."""
        if call.partner_account_id not in self._accounts:
            return error_response(404, "RESOURCE_NOT_FOUND", "Unknown partner account")
        request_id = self._by_token.get(call.session_token)
        if request_id is None:
            return error_response(404, "RESOURCE_NOT_FOUND", "Unknown session token")
        record = self._payment_requests[request_id]
        if record.partner_account_id != call.partner_account_id:
            return error_response(
                403, "OPERATION_FORBIDDEN", "The session token belongs to another account"
            )
        if record.authorized_with is not None:
            return self._token_replay(call, record)
        return _terms_refusal(call, record, now)

    def _token_replay(self, call: AuthorizeRequest, record: PaymentRequestRecord) -> httpx.Response:
        """A used token sent again: the original answer for the same request, else 409.

        Klarna: "Repeating the request with the same token returns the same
        result" (how long is not documented; the fake keeps it for good).
        """
        original = self._answers.get((call.partner_account_id, record.authorized_with or ""))
        if original is not None and original.fingerprint == call.fingerprint:
            return json_response(original.status_code, original.body)
        return error_response(
            409, "RESOURCE_CONFLICT", "The session token was already used for another request"
        )

    def _decide(
        self,
        call: AuthorizeRequest,
        record: PaymentRequestRecord,
        now: datetime,
        scripted: Scripted | None,
    ) -> bytes:
        """Use the token and return the answer body (approve unless scripted)."""
        record.authorized_with = call.idempotency_key
        kind = scripted.kind if scripted is not None else "approve"
        if kind == "decline":
            record.state = "DECLINED"
            answer: dict[str, Any] = {"result": "DECLINED"}
            if scripted is not None and scripted.reason is not None:
                answer["result_reason"] = scripted.reason
            return _encode({"payment_transaction_response": answer})
        if kind == "step_up":
            return _encode(self._step_up(record))
        return _encode(self._approve(call, now))

    def _step_up(self, record: PaymentRequestRecord) -> dict[str, Any]:
        new = self._new_request(
            record.partner_account_id, record.amount, record.currency, record.flow
        )
        return {
            "payment_transaction_response": {"result": "STEP_UP_REQUIRED"},
            "payment_request": {
                "payment_request_id": new.payment_request_id,
                "payment_request_url": f"https://pay.test.klarna.com/{uuid.uuid4()}",
                "state": new.state,
            },
        }

    def _approve(self, call: AuthorizeRequest, now: datetime) -> dict[str, Any]:
        transaction = RecordedTransaction(
            payment_transaction_id=_krn("transaction"),
            reference=call.reference,
            amount=call.amount,
            currency=call.currency,
            partner_account_id=call.partner_account_id,
            session_token=mask(call.session_token),
            idempotency_key=call.idempotency_key,
            created_at=now,
            expires_at=now + TRANSACTION_LIFETIME,
        )
        self._transactions.append(transaction)
        wire = {
            "payment_transaction_id": transaction.payment_transaction_id,
            "payment_transaction_reference": transaction.reference,
            "amount": transaction.amount,
            "currency": transaction.currency,
            "payment_funding": {"type": "GUARANTEED"},
            "payment_pricing": {"fee_amount": 0, "currency": transaction.currency},
            "expires_at": iso_millis(transaction.expires_at),
        }
        return {
            "payment_transaction_response": {
                "result": "APPROVED",
                "payment_transaction": wire,
            }
        }
