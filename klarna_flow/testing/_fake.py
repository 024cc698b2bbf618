"""FakeKlarna: a stateful, in-process double of Klarna's Payment Authorize API.

It is an ``httpx.Request -> httpx.Response`` callable, so
``httpx.MockTransport(fake)`` plugs it into either client, and
:func:`~klarna_flow.testing.serve_fake` serves it on loopback.

Its answers, including those it chose where Klarna documents none (tests
rely on them):

- wrong or missing ``Authorization``: 401 ``UNAUTHORIZED``;
- body over 1 MB: 413 ``PAYLOAD_TOO_LARGE``;
- Content-Type not application/json: 400 ``INVALID_CONTENT_TYPE``;
- missing header, ``Partner-Correlation-Id`` not 1..255 letters and digits,
  bad body schema: 400 ``VALIDATION_ERROR`` (with ``validation_errors``);
- unknown partner account, unknown session token: 404 ``RESOURCE_NOT_FOUND``;
- token of another partner account: 403 ``OPERATION_FORBIDDEN``;
- token already used: the same request under another idempotency key replays
  the original answer (the token is itself an idempotency key, for good in the
  fake); a different request with a used token: 409 ``RESOURCE_CONFLICT``;
- token expired (60 minutes after completion, or its payment request expired
  or canceled): 400 ``VALIDATION_ERROR``, validation error
  ``{"parameter": "Klarna-Network-Session-Token", "reason": "expired"}``;
- amount or currency differ from the payment request: 400 ``VALIDATION_ERROR``;
- same idempotency key with a different request (account, token or body):
  409 ``RESOURCE_CONFLICT``.

Same idempotency key and same request within 24 hours replays the original
status and body (with a new ``Klarna-Correlation-Id``). Only the fake's own
clock (``fake.clock``) decides token life and the idempotency window.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, TypeAlias
from urllib.parse import unquote

import httpx

from klarna_flow._errors import InvalidInput
from klarna_flow._shared.clock import Clock, SystemClock
from klarna_flow._shared.validation import check_amount, check_currency, check_krn
from klarna_flow.testing._fake_authorize import Authorizer
from klarna_flow.testing._fake_http import error_body, error_response, json_response
from klarna_flow.testing._fake_notify import Signer
from klarna_flow.testing._fake_records import (
    FLOWS,
    CompletedRequest,
    PaymentRequestRecord,
    RecordedTransaction,
    Scripted,
    SignedNotification,
)

__all__ = ["DEFAULT_PARTNER_ACCOUNT", "FakeKlarna"]

DEFAULT_PARTNER_ACCOUNT = "krn:partner:global:account:test-partner"
_LOST = frozenset({"drop", "timeout"})
_OPEN = frozenset({"SUBMITTED", "IN_PROGRESS"})
_TOKEN_PLACES = frozenset({"payload", "state_context"})
#: Where a completion notification carries the tokens.
TokensIn: TypeAlias = Literal["payload", "state_context"]
_AUTHORIZE_PATH = re.compile(r"/v2/accounts/([^/]+)/payment/authorize")


class FakeKlarna(Authorizer):
    """A stateful fake of Klarna's Payment Authorize API.

    Args:
        api_key: the key clients must send after ``Basic``.
        clock: anything with ``now()`` (e.g. ``ManualClock``); decides token
            life (60 min) and the idempotency window (24 h).
        partner_account_id: the default partner account.
        signing_keys: key id -> secret for signing notifications; one random
            key under ``"fake-key-1"`` when None.
        latency: seconds each request waits before it is answered (real
            time; on the loopback server only that request's thread waits;
            in process under an async client it blocks the event loop, so
            measure concurrency on loopback).
    """

    def __init__(
        self,
        *,
        api_key: str = "test-api-key",
        clock: Clock | None = None,
        partner_account_id: str = DEFAULT_PARTNER_ACCOUNT,
        signing_keys: Mapping[str, bytes | str] | None = None,
        latency: float = 0.0,
    ) -> None:
        super().__init__(
            clock or SystemClock(), check_krn(partner_account_id, "partner_account_id")
        )
        self.api_key = api_key
        self.latency = latency
        self._signer = Signer(signing_keys)
        self._requests: list[httpx.Request] = []
        self._script: deque[Scripted] = deque()

    def __repr__(self) -> str:
        return f"FakeKlarna(partner_account_id={self.partner_account_id!r}, clock={self.clock!r})"

    # -- the customer's side ---------------------------------------------------

    def create_payment_request(
        self,
        *,
        amount: int,
        currency: str,
        partner_account_id: str | None = None,
        flow: str = "AUTHORIZATION",
    ) -> str:
        """Create a ``SUBMITTED`` payment request; return its id (a KRN).

        Args:
            flow: ``AUTHORIZATION``, ``TOKENIZATION`` or
                ``AUTHORIZATION_AND_TOKENIZATION``: which tokens completion hands out.
        """
        account = check_krn(partner_account_id or self.partner_account_id, "partner_account_id")
        if flow not in FLOWS:
            raise InvalidInput("flow", f"must be one of {sorted(FLOWS)}")
        with self._lock:
            record = self._new_request(
                account, check_amount(amount), check_currency(currency), flow
            )
        return record.payment_request_id

    def complete_payment_request(
        self, payment_request_id: str, *, tokens_in: TokensIn = "payload"
    ) -> CompletedRequest:
        """The customer finishes: tokens are handed out as the flow says.

        Args:
            tokens_in: where the notification carries the tokens:
                ``"payload"`` (the top level, as webhook consumers read them:
                ``klarna_network_session_token``,
                ``klarna_customer.customer_token``) or ``"state_context"``
                (the same names inside the payload's ``state_context``, as the
                payment request resource holds them).

        Raises:
            InvalidInput: unknown id, the request is no longer open, or an
                unknown ``tokens_in``.
        """
        if tokens_in not in _TOKEN_PLACES:
            raise InvalidInput("tokens_in", f"must be one of {sorted(_TOKEN_PLACES)}")
        with self._lock:
            record, previous = self._move(payment_request_id, "COMPLETED")
            record.completed_at = self.clock.now()
            record.session_token, record.customer_token = self._issue_tokens(record)
            notification = self._state_change(record, previous, tokens_in)
            return CompletedRequest(
                payment_request_id=record.payment_request_id,
                session_token=record.session_token,
                customer_token=record.customer_token,
                completed_at=record.completed_at,
                notification=notification,
            )

    def issue_session_token(
        self, *, amount: int, currency: str, partner_account_id: str | None = None
    ) -> str:
        """Create and complete an authorization request; return its session token."""
        request_id = self.create_payment_request(
            amount=amount, currency=currency, partner_account_id=partner_account_id
        )
        token = self.complete_payment_request(request_id).session_token
        assert token is not None  # an AUTHORIZATION flow always gets one
        return token

    def expire_payment_request(self, payment_request_id: str) -> SignedNotification:
        """Expire an open (or completed, unauthorized) request; its token dies."""
        with self._lock:
            record, previous = self._move(payment_request_id, "EXPIRED")
            return self._state_change(record, previous)

    def cancel_payment_request(self, payment_request_id: str) -> SignedNotification:
        """Cancel an open (or completed, unauthorized) request; its token dies."""
        with self._lock:
            record, previous = self._move(payment_request_id, "CANCELED")
            return self._state_change(record, previous)

    def decline_payment_request(self, payment_request_id: str) -> SignedNotification:
        """Klarna declines an open (``SUBMITTED`` or ``IN_PROGRESS``) request.

        Raises:
            InvalidInput: unknown id, or the request is not open.
        """
        with self._lock:
            state = self._get(payment_request_id).state
            if state not in _OPEN:
                raise InvalidInput(
                    "payment_request_id", f"a {state} payment request cannot become DECLINED"
                )
            record, previous = self._move(payment_request_id, "DECLINED")
            return self._state_change(record, previous)

    def state_of(self, payment_request_id: str) -> str:
        """The payment request's state (``SUBMITTED``, ``COMPLETED``...)."""
        with self._lock:
            return self._get(payment_request_id).state

    # -- notifications ----------------------------------------------------------

    @property
    def signing_keys(self) -> dict[str, bytes]:
        """Key id -> secret: give these to the application's webhook handler."""
        return self._signer.signing_keys

    def sign(self, body: bytes, key_id: str | None = None) -> dict[str, str]:
        """Signature headers for ``body`` (HMAC-SHA256, hex)."""
        return self._signer.sign(body, key_id)

    def notification(
        self,
        event_type: str,
        payload: Mapping[str, Any],
        *,
        event_id: str | None = None,
        occurred_at: datetime | None = None,
        key_id: str | None = None,
        partner_account_id: str | None = None,
    ) -> SignedNotification:
        """Any signed notification, e.g. a late or duplicated one (same ``event_id``)."""
        return self._signer.notification(
            event_type,
            payload,
            account=partner_account_id or self.partner_account_id,
            occurred_at=occurred_at or self.clock.now(),
            event_id=event_id,
            key_id=key_id,
        )

    def _state_change(
        self, record: PaymentRequestRecord, previous: str, tokens_in: TokensIn = "payload"
    ) -> SignedNotification:
        payload: dict[str, Any] = {
            "payment_request_id": record.payment_request_id,
            "state": record.state,
            "previous_state": previous,
            "amount": record.amount,
            "currency": record.currency,
        }
        if record.state == "COMPLETED":
            tokens = _tokens(record)
            if tokens_in == "payload":
                payload.update(tokens)
            elif tokens:
                payload["state_context"] = tokens
        return self.notification(
            f"payment.request.state-change.{record.state.lower()}",
            payload,
            partner_account_id=record.partner_account_id,
        )

    # -- scripted outcomes (each for the next authorize call, in order) -----------

    def decline_next(self, reason: str | None = None) -> None:
        """The next valid authorize call is ``DECLINED`` (token consumed)."""
        self._queue(Scripted("decline", reason=reason))

    def step_up_next(self) -> None:
        """The next valid authorize call needs a step-up (a new payment request)."""
        self._queue(Scripted("step_up"))

    def fail_next(
        self,
        status: int,
        error_code: str | None = None,
        *,
        retry_after: float | str | None = None,
        ratelimit_reset: float | str | None = None,
        times: int = 1,
    ) -> None:
        """The next ``times`` authorize calls fail with ``status`` (nothing processed).

        Args:
            retry_after: sent as ``Retry-After`` (seconds, or an HTTP date string).
            ratelimit_reset: sent as ``X-Ratelimit-Reset`` (seconds to wait,
                or a Unix time: its unit is not documented).
        """
        if not 400 <= status <= 599:
            raise InvalidInput("status", "must be an HTTP error status (400..599)")
        named = (("Retry-After", retry_after), ("X-Ratelimit-Reset", ratelimit_reset))
        headers = tuple((name, str(value)) for name, value in named if value is not None)
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise InvalidInput("times", "must be an int >= 1")
        for _ in range(times):
            body = error_body(status, error_code)
            self._queue(Scripted("respond", status, body, headers))

    def respond_next(
        self, status: int, body: bytes, *, headers: Mapping[str, str] | None = None
    ) -> None:
        """The next authorize call gets exactly this status and raw body."""
        self._queue(Scripted("respond", status, body, tuple((headers or {}).items())))

    def drop_next(self, *, after_processing: bool = False) -> None:
        """The next authorize call gets no answer: the connection drops.

        With ``after_processing`` the request is processed first (a
        transaction is created and kept for idempotent replay): Klarna acted,
        the answer was lost.
        """
        self._queue(Scripted("drop", after_processing=after_processing))

    def timeout_next(self, *, after_processing: bool = True) -> None:
        """Like :meth:`drop_next`, seen in process as ``httpx.ReadTimeout``.

        On the loopback server the connection simply closes (as for a drop):
        the client sees a transport error rather than a timeout.
        """
        self._queue(Scripted("timeout", after_processing=after_processing))

    def _queue(self, scripted: Scripted) -> None:
        with self._lock:
            self._script.append(scripted)

    # -- what happened ------------------------------------------------------------

    @property
    def requests(self) -> list[httpx.Request]:
        """Every request received, in order, rejected ones included (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def transactions(self) -> list[RecordedTransaction]:
        """Every payment transaction created, in order (a copy)."""
        with self._lock:
            return list(self._transactions)

    def transactions_for(self, reference: str) -> list[RecordedTransaction]:
        """The transactions created for one ``payment_transaction_reference``."""
        return [t for t in self.transactions if t.reference == reference]

    # -- HTTP ---------------------------------------------------------------------

    def __call__(self, request: httpx.Request) -> httpx.Response:
        """Answer one HTTP request as Klarna would.

        Raises:
            httpx.RemoteProtocolError, httpx.ReadTimeout: a scripted drop or
                timeout (the loopback server closes the connection instead).
        """
        request.read()
        with self._lock:
            self._requests.append(request)
        if self.latency > 0:
            time.sleep(self.latency)
        # Match the raw path: an account KRN may hold an escaped "/".
        path = request.url.raw_path.split(b"?")[0].decode("ascii", "replace")
        match = _AUTHORIZE_PATH.fullmatch(path)
        if request.method != "POST" or match is None:
            return error_response(404, "RESOURCE_NOT_FOUND", "No such endpoint")
        with self._lock:
            scripted = self._script.popleft() if self._script else None
            return self._answer(request, unquote(match[1]), scripted)

    def _answer(
        self, request: httpx.Request, account: str, scripted: Scripted | None
    ) -> httpx.Response:
        if scripted is not None and scripted.kind == "respond":
            return json_response(scripted.status_code, scripted.body, scripted.headers)
        kind = scripted.kind if scripted is not None else "approve"
        if kind in _LOST and not (scripted and scripted.after_processing):
            raise _lost(kind, request)
        response = self.authorize(request, account, self.api_key, scripted)
        if kind in _LOST:
            raise _lost(kind, request)
        return response


def _tokens(record: PaymentRequestRecord) -> dict[str, Any]:
    """A completed request's tokens, named and nested as Klarna's notifications carry them."""
    tokens: dict[str, Any] = {}
    if record.session_token:
        tokens["klarna_network_session_token"] = record.session_token
    if record.customer_token:
        tokens["klarna_customer"] = {"customer_token": record.customer_token}
    return tokens


def _lost(kind: str, request: httpx.Request) -> httpx.TransportError:
    if kind == "timeout":
        return httpx.ReadTimeout("FakeKlarna: no answer in time", request=request)
    return httpx.RemoteProtocolError(
        "FakeKlarna: server disconnected without sending a response", request=request
    )
