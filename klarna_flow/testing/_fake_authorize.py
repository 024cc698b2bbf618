"""FakeKlarna's authorize call in all its forms: initial, final, with a customer token.

Every method here expects the caller to hold ``self._lock``.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timedelta
from typing import Any

import attrs
import httpx

from klarna_flow._shared.secrets import mask
from klarna_flow.testing._fake_http import (
    error_response,
    invalid,
    json_response,
    parse_authorize,
)
from klarna_flow.testing._fake_records import (
    DEFAULT_SCOPES,
    PaymentRequestRecord,
    RecordedCapture,
    RecordedTransaction,
    Scripted,
    StoredAnswer,
)
from klarna_flow.testing._fake_schema import (
    EXPIRY_PARAMETER,
    MAX_EXPIRY,
    MIN_EXPIRY,
    AuthorizeRequest,
)
from klarna_flow.testing._fake_state import DEFAULT_REQUEST_LIFETIME
from klarna_flow.testing._fake_tokens import TokenChecks
from klarna_flow.testing._fake_wire import (
    customer_token_answer,
    encode,
    krn,
    step_up_answer,
    transaction_answer,
    verdicts,
)

__all__ = ["DECISIONS", "Authorizer", "Decisions"]

IDEMPOTENCY_WINDOW = timedelta(hours=24)
TRANSACTION_LIFETIME = timedelta(days=28)
DECISIONS = frozenset({"approve", "decline", "step_up"})
_PRESENT = "payment:customer_present"
_NOT_PRESENT = "payment:customer_not_present"
_PAYMENT_REQUIRED = ("request_payment_transaction", "is required when charging a customer token")


class Decisions:
    """The scripted verdicts queued for the next valid authorize call, first one first.

    A call takes the head verdict only once it has passed every check, so a
    refused call (400, 403, 404, 409...) or an idempotent replay leaves it
    queued for the next call that Klarna processes.
    """

    def __init__(self, queue: deque[Scripted]) -> None:
        self._queue = queue

    def peek(self) -> Scripted | None:
        """The next scripted verdict, left in the queue."""
        return self._queue[0] if self._queue else None

    def take(self) -> Scripted | None:
        """The next scripted verdict, taken out of the queue."""
        return self._queue.popleft() if self._queue else None


class Authorizer(TokenChecks):
    """Checks, then answers (or replays) authorize calls."""

    def authorize(
        self, request: httpx.Request, account: str, api_key: str, decisions: Decisions
    ) -> httpx.Response:
        """Answer one authorize call; a 200 answer is kept for idempotent replay."""
        call = parse_authorize(request, account, api_key)
        if isinstance(call, httpx.Response):
            return call
        if call.partner_account_id not in self._accounts:
            return error_response(404, "RESOURCE_NOT_FOUND", "Unknown partner account")
        now = self.clock.now()
        key = (call.partner_account_id, call.idempotency_key)
        stored = self._answers.get(key)
        if stored is not None and now < stored.stored_at + IDEMPOTENCY_WINDOW:
            if stored.fingerprint != call.fingerprint:
                return error_response(
                    409,
                    "RESOURCE_CONFLICT",
                    "The idempotency key was already used with a different request",
                )
            return json_response(stored.status_code, stored.body)
        answer = self._route(call, now, decisions)
        if isinstance(answer, httpx.Response):
            return answer
        self._answers[key] = StoredAnswer(call.fingerprint, 200, answer, now)
        return json_response(200, answer)

    def _route(
        self, call: AuthorizeRequest, now: datetime, decisions: Decisions
    ) -> httpx.Response | bytes:
        if call.session_token is not None:
            return self._with_session_token(call, now, decisions)
        if call.customer_token is not None:
            return self._token_charge(call, now, decisions)
        return self._initial(call, now, decisions)

    # -- the three forms ----------------------------------------------------------------

    def _initial(
        self, call: AuthorizeRequest, now: datetime, decisions: Decisions
    ) -> httpx.Response | bytes:
        """No token: step up by default; approve or decline when scripted."""
        scripted = decisions.peek()
        if call.step_up is None and (scripted is None or scripted.kind == "step_up"):
            return invalid("step_up_config", "is required on the initial call")
        refusal = _deadline_refusal(call, now)
        if refusal is not None:
            return refusal
        decisions.take()
        return self._outcome(scripted.kind if scripted else "step_up", call, now, None, scripted)

    def _with_session_token(
        self, call: AuthorizeRequest, now: datetime, decisions: Decisions
    ) -> httpx.Response | bytes:
        """The final call (or an initial one with an Express session token)."""
        found = self._session_record(call, now)
        if not isinstance(found, PaymentRequestRecord):
            return found
        record = found
        refusal = self._final_refusal(call, record, now)
        if refusal is not None:
            return refusal
        record.authorized_with = call.idempotency_key
        scripted = decisions.take()
        return self._outcome(scripted.kind if scripted else "approve", call, now, record, scripted)

    def _token_charge(
        self, call: AuthorizeRequest, now: datetime, decisions: Decisions
    ) -> httpx.Response | bytes:
        """A stored customer token: customer present with ``step_up_config``, else not."""
        present = call.step_up is not None
        refusal = self._customer_token_refusal(call)
        if refusal is None and not call.wants_payment:
            refusal = invalid(*_PAYMENT_REQUIRED)
        if refusal is None:
            refusal = self._scope_refusal(call, _PRESENT if present else _NOT_PRESENT)
        if refusal is None:
            refusal = _deadline_refusal(call, now)
        if refusal is not None:
            return refusal
        scripted = decisions.take()
        kind = scripted.kind if scripted else "approve"
        if kind == "step_up" and not present:
            kind = "decline"  # no customer to step up: only APPROVED or DECLINED
        return self._outcome(kind, call, now, None, scripted)

    def _final_refusal(
        self, call: AuthorizeRequest, record: PaymentRequestRecord, now: datetime
    ) -> httpx.Response | None:
        if call.customer_token is not None:
            refusal = self._customer_token_refusal(call)
            if refusal is not None:
                return refusal
            charged = record.charged_customer_token
            if charged is not None and charged != call.customer_token:
                reason = "does not match the payment request"
                return invalid("Klarna-Customer-Token", reason)
        if call.payment_request_id not in (None, record.payment_request_id):
            reason = "does not name the session token's payment request"
            return invalid("payment_request_id", reason)
        if call.step_up is not None and not record.express:
            return invalid("step_up_config", "must be omitted on the final call")
        if call.step_up is not None:
            return _deadline_refusal(call, now)
        return None

    # -- verdicts ------------------------------------------------------------------------

    def _outcome(
        self,
        kind: str,
        call: AuthorizeRequest,
        now: datetime,
        record: PaymentRequestRecord | None,
        scripted: Scripted | None,
    ) -> bytes:
        asked: dict[str, bool] = {"payment": call.wants_payment, "customer_token": call.wants_token}
        if kind == "decline":
            if record is not None:
                record.previous_state, record.state = record.state, "DECLINED"
            reason = scripted.reason if scripted is not None else None
            return encode(verdicts("DECLINED", reason=reason, **asked))
        if kind == "step_up":
            return encode(step_up_answer(self._stepped_up(call, now, record), **asked))
        return encode(self._approval(call, now, record))

    def _stepped_up(
        self, call: AuthorizeRequest, now: datetime, like: PaymentRequestRecord | None
    ) -> PaymentRequestRecord:
        """The new payment request of a step-up (like ``like`` on a final call)."""
        if like is not None and call.step_up is None:
            return self._new_request(
                like.partner_account_id,
                like.amount,
                like.currency,
                like.flow,
                **_copied(like, now),
            )
        assert call.step_up is not None  # no step-up without a config, but on a final call
        return self._new_request(
            call.partner_account_id,
            call.amount,
            call.currency,
            call.flow,
            expires_at=_deadline(call, now),
            method=call.step_up.method,
            reference=call.step_up.reference,
            scopes=call.scopes or DEFAULT_SCOPES,
            customer_token_reference=call.customer_token_reference,
            body=call.body,
            charged_customer_token=call.customer_token,
        )

    def _approval(
        self, call: AuthorizeRequest, now: datetime, record: PaymentRequestRecord | None
    ) -> dict[str, Any]:
        answer: dict[str, Any] = {}
        if call.wants_payment:
            transaction = self._new_transaction(call, now, record)
            answer["payment_transaction_response"] = {
                "result": "APPROVED",
                "payment_transaction": transaction_answer(transaction),
            }
        if call.wants_token:
            issued = record.customer_token if record is not None else None
            token = self._customer_tokens.get(issued or "") or self._new_customer_token(
                call.partner_account_id,
                call.scopes or DEFAULT_SCOPES,
                call.customer_token_reference,
            )
            answer["customer_token_response"] = customer_token_answer(token)
        return answer

    def _new_transaction(
        self, call: AuthorizeRequest, now: datetime, record: PaymentRequestRecord | None
    ) -> RecordedTransaction:
        assert call.amount is not None  # wants_payment
        assert call.reference is not None
        transaction = RecordedTransaction(
            payment_transaction_id=krn("transaction"),
            reference=call.reference,
            amount=call.amount,
            currency=call.currency,
            partner_account_id=call.partner_account_id,
            session_token=mask(call.session_token),
            idempotency_key=call.idempotency_key,
            created_at=now,
            expires_at=now + TRANSACTION_LIFETIME,
            payment_request_id=None if record is None else record.payment_request_id,
            customer_token=mask(call.customer_token),
        )
        if call.capture == "NOW":
            capture = RecordedCapture(krn("capture"), call.amount, now)
            transaction = attrs.evolve(transaction, state="COMPLETED", captures=(capture,))
        self._transactions[transaction.payment_transaction_id] = transaction
        return transaction


def _copied(like: PaymentRequestRecord, now: datetime) -> dict[str, Any]:
    """What a step-up request on a final call takes over from the token's request."""
    return {
        "expires_at": now + like.lifetime,
        "method": like.method,
        "reference": like.reference,
        "scopes": like.scopes,
        "customer_token_reference": like.customer_token_reference,
        "body": like.body,
        "charged_customer_token": like.charged_customer_token,
    }


def _deadline(call: AuthorizeRequest, now: datetime) -> datetime:
    """When a payment request created by ``call`` expires (3 hours unless it says)."""
    step_up = call.step_up
    if step_up is not None and step_up.deadline is not None:
        return step_up.deadline
    duration = step_up.duration if step_up is not None else None
    return now + (duration or DEFAULT_REQUEST_LIFETIME)


def _deadline_refusal(call: AuthorizeRequest, now: datetime) -> httpx.Response | None:
    """400 for an ``interaction_expiry`` timestamp not 15 minutes .. 48 hours away."""
    deadline = call.step_up.deadline if call.step_up is not None else None
    if deadline is not None and not MIN_EXPIRY <= deadline - now <= MAX_EXPIRY:
        return invalid(EXPIRY_PARAMETER, "must lie between 15 minutes and 48 hours from now")
    return None
