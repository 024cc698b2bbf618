"""FakeKlarna's checks of the tokens an authorize call carries.

Session tokens: single use (a used token replays its original answer to the
same request), 60 minutes from completion, dead with their payment request.
Customer tokens: known, of the caller's account, not revoked, with the scope
the charge needs. No message ever holds a token.

Every method here expects the caller to hold ``self._lock``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx

from klarna_flow.testing._fake_http import (
    SESSION_TOKEN_HEADERS,
    error_response,
    invalid,
    json_response,
)
from klarna_flow.testing._fake_records import PaymentRequestRecord
from klarna_flow.testing._fake_schema import AuthorizeRequest
from klarna_flow.testing._fake_state import FakeState

__all__ = ["TOKEN_LIFETIME", "TokenChecks"]

TOKEN_LIFETIME = timedelta(minutes=60)
_MISMATCH = "does not match the payment request"


class TokenChecks(FakeState):
    """Session and customer token checks of the authorize call."""

    def _session_record(
        self, call: AuthorizeRequest, now: datetime
    ) -> PaymentRequestRecord | httpx.Response:
        """The token's payment request, if the token may be used now; else the answer."""
        request_id = self._by_token.get(call.session_token or "")
        if request_id is None:
            return error_response(404, "RESOURCE_NOT_FOUND", "Unknown session token")
        record = self._refresh(self._payment_requests[request_id])
        if record.partner_account_id != call.partner_account_id:
            return error_response(
                403, "OPERATION_FORBIDDEN", "The session token belongs to another account"
            )
        if record.authorized_with is not None:
            return self._token_replay(call, record)
        refusal = _terms_refusal(call, record, now)
        return record if refusal is None else refusal

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

    def _customer_token_refusal(self, call: AuthorizeRequest) -> httpx.Response | None:
        """404 unknown, 403 another account's or revoked; None when it may be charged."""
        token = self._customer_tokens.get(call.customer_token or "")
        if token is None:
            return error_response(404, "RESOURCE_NOT_FOUND", "Unknown customer token")
        if token.partner_account_id != call.partner_account_id:
            return error_response(
                403, "OPERATION_FORBIDDEN", "The customer token belongs to another account"
            )
        if token.revoked:
            return error_response(403, "OPERATION_FORBIDDEN", "The customer token was revoked")
        return None

    def _scope_refusal(self, call: AuthorizeRequest, scope: str) -> httpx.Response | None:
        """403 when the (known) customer token lacks ``scope``."""
        token = self._customer_tokens.get(call.customer_token or "")
        if token is None or scope in token.scopes:
            return None
        return error_response(
            403, "OPERATION_FORBIDDEN", f"The customer token lacks the scope {scope}"
        )


def _terms_refusal(
    call: AuthorizeRequest, record: PaymentRequestRecord, now: datetime
) -> httpx.Response | None:
    """The error answer for an expired token or terms that differ, else None."""
    assert record.completed_at is not None  # a token exists only once completed
    if record.state != "COMPLETED" or now >= record.completed_at + TOKEN_LIFETIME:
        return invalid(SESSION_TOKEN_HEADERS[0], "expired", "The session token is no longer valid")
    if call.currency != record.currency:
        return invalid("currency", _MISMATCH, "Mismatch")
    if call.amount != record.amount:
        return invalid("request_payment_transaction.amount", _MISMATCH, "Mismatch")
    return None
