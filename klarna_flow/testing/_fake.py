"""FakeKlarna: a stateful, in-process double of Klarna's v2 payment API.

It is an ``httpx.Request -> httpx.Response`` callable, so
``httpx.MockTransport(fake)`` plugs it into either client, and
:func:`~klarna_flow.testing.serve_fake` serves it on loopback. It plays the
whole journey (klarna-api.md §1): the initial authorize call, the customer's
side (from Python), the final call, customer-token charges, payment-request
cancel and transaction read. Only its own clock (``fake.clock``) decides
expiry: requests, session tokens, the idempotency window.

Endpoints (``{account}`` may be percent-escaped):

- ``POST /v2/accounts/{account}/payment/authorize``
- ``DELETE /v2/accounts/{account}/payment/requests/{payment_request_id}``
- ``GET /v2/accounts/{account}/payment/transactions/{payment_transaction_id}``

Any other method or path: 404 ``RESOURCE_NOT_FOUND`` (recorded, no script used).

Authorize, by the tokens it carries (a session token in
``Klarna-Network-Session-Token``, or the older ``Klarna-Payment-Token`` /
``Klarna-Interoperability-Token``; a customer token in ``Klarna-Customer-Token``):

- no token (initial call): ``STEP_UP_REQUIRED`` with a new ``SUBMITTED``
  payment request, living ``interaction_expiry`` (duration or timestamp) or 3
  hours; without ``step_up_config``: 400 ``VALIDATION_ERROR`` (parameter
  ``step_up_config``) unless ``approve_next``/``decline_next`` was scripted;
- session token (final call, or an initial call with a token from
  ``issue_session_token``): ``APPROVED`` unless scripted; the amount and
  currency must be the request's; ``payment_request_id`` (top level), when
  sent, must name the token's request; ``step_up_config`` is refused on a
  final call (it is allowed with an ``issue_session_token`` token);
- customer token: customer present with ``step_up_config`` (scope
  ``payment:customer_present``), else not present (scope
  ``payment:customer_not_present``); ``APPROVED`` unless scripted.

Answers in Klarna's shapes (klarna-api.md §2.2): ``payment_transaction_response``
when ``request_payment_transaction`` was sent, ``customer_token_response``
when ``request_customer_token`` was; an approval's transaction is
``AUTHORIZED`` (``COMPLETED`` with one capture for ``capture: NOW``), with
``payment_funding: {"type": "GUARANTEED", "state": "PENDING"}``; a step-up
carries the top-level ``payment_request`` (``expires_at`` and ``created_at``
with nine fraction digits, the URL in ``state_context.customer_interaction``).

Errors (Klarna's envelope; ``validation_errors`` of ``{parameter, reason}``):

- wrong or missing ``Authorization``: 401 ``UNAUTHORIZED`` (every endpoint);
- body over 1 MB: 413 ``PAYLOAD_TOO_LARGE``;
- Content-Type not application/json: 400 ``INVALID_CONTENT_TYPE``;
- missing idempotency key, an empty token header, ``Partner-Correlation-Id``
  not 1..255 letters and digits, bad body schema (neither
  ``request_payment_transaction`` nor ``request_customer_token``, a bad
  ``step_up_config``, an ``interaction_expiry`` outside 15 min .. 48 h:
  parameter ``step_up_config.customer_interaction_config.interaction_expiry``):
  400 ``VALIDATION_ERROR``;
- unknown partner account, session token, customer token, payment request or
  transaction (or another account's request or transaction): 404
  ``RESOURCE_NOT_FOUND``;
- session or customer token of another account: 403 ``OPERATION_FORBIDDEN``;
- revoked customer token: 403 ``OPERATION_FORBIDDEN``, message "The customer
  token was revoked" (the fake's choice; Klarna documents none);
- customer token without the scope the charge needs: 403 ``OPERATION_FORBIDDEN``;
- session token already used: the same request under another idempotency key
  replays the original answer (the token is itself an idempotency key, for
  good in the fake); a different request with it: 409 ``RESOURCE_CONFLICT``;
- session token expired (60 minutes after completion, or its payment request
  expired, by the clock or not, or canceled): 400 ``VALIDATION_ERROR``,
  ``{"parameter": "Klarna-Network-Session-Token", "reason": "expired"}``;
- amount or currency differ from the payment request: 400 ``VALIDATION_ERROR``;
- same idempotency key with a different request (account, tokens or body):
  409 ``RESOURCE_CONFLICT``;
- cancel of a request not ``SUBMITTED`` or ``IN_PROGRESS`` (completed,
  expired, canceled, declined): 409 ``RESOURCE_CONFLICT`` (the fake's choice).

Same idempotency key and same request within 24 hours replays the original
status and body (with a new ``Klarna-Correlation-Id``); error answers are not
kept. Cancel and read carry no key: a second cancel gets 409.

Where klarna-api.md says [?], the fake chooses (tests rely on it):

- ``result_reason`` appears only when ``decline_next(reason)`` gives one;
- a customer-not-present charge scripted to step up is ``DECLINED`` (there
  is no customer to step up), without ``result_reason``;
- a final call may carry the customer token of the charge that stepped up,
  or not; another customer token: 400 (parameter ``Klarna-Customer-Token``);
- the fraction of request times is microseconds padded to nine digits;
  transaction times (``expires_at``, ``captured_at``) have milliseconds;
  transactions live 28 days;
- a request's ``expires_at`` binds a completed (unauthorized) request too;
- a customer token charge needs ``request_payment_transaction`` (400);
- ``payment.request.state-change.*`` payloads: ``payment_request_id``,
  ``state``, ``previous_state``, ``payment_request_reference`` (when given),
  ``amount`` (when known), ``currency``; on completion the tokens, at the top
  level or under ``state_context`` (``tokens_in``);
- ``payment.transaction.*`` payloads: ``payment_transaction_id``,
  ``payment_transaction_reference``, ``payment_request_id`` (when known),
  ``state``, ``previous_state`` (null until a change), ``amount``,
  ``currency``, ``captured_amount``, ``expires_at``; a capture adds
  ``payment_capture: {payment_capture_id, amount, captured_at}``;
- revoking a customer token sends no notification (names unpublished);
- errors and lost answers scripted with ``fail_next`` and friends hit the
  next call to any endpoint; verdicts wait for the next valid authorize call
  that is processed, one whose answer is then lost included (the two queues
  are independent: scripting order matters only within each).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from urllib.parse import unquote

import httpx

from klarna_flow._shared.clock import Clock, SystemClock
from klarna_flow._shared.validation import check_krn
from klarna_flow.testing._fake_authorize import Decisions
from klarna_flow.testing._fake_http import error_response, json_response
from klarna_flow.testing._fake_records import RecordedTransaction, Scripted
from klarna_flow.testing._fake_script import Scripting

__all__ = ["DEFAULT_PARTNER_ACCOUNT", "FakeKlarna"]

DEFAULT_PARTNER_ACCOUNT = "krn:partner:global:account:test-partner"
_LOST = frozenset({"drop", "timeout"})
_ACCOUNT = r"/v2/accounts/([^/]+)/payment"
_ROUTES = (
    ("POST", re.compile(_ACCOUNT + r"/authorize")),
    ("DELETE", re.compile(_ACCOUNT + r"/requests/([^/]+)")),
    ("GET", re.compile(_ACCOUNT + r"/transactions/([^/]+)")),
)
#: One processing of a request (an authorize call may take a queued verdict).
Route = Callable[[], httpx.Response]


class FakeKlarna(Scripting):
    """A stateful fake of Klarna's payment API (see the module's docstring).

    Args:
        api_key: the key clients must send after ``Basic``.
        clock: anything with ``now()`` (e.g. ``ManualClock``); decides
            payment request expiry, token life (60 min) and the idempotency
            window (24 h).
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
            clock or SystemClock(),
            check_krn(partner_account_id, "partner_account_id"),
            signing_keys,
        )
        self.api_key = api_key
        self.latency = latency
        self._requests: list[httpx.Request] = []

    def __repr__(self) -> str:
        return f"FakeKlarna(partner_account_id={self.partner_account_id!r}, clock={self.clock!r})"

    # -- what happened ------------------------------------------------------------

    @property
    def requests(self) -> list[httpx.Request]:
        """Every request received, in order, rejected ones included (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def transactions(self) -> list[RecordedTransaction]:
        """Every payment transaction created, in order, as it stands now (a copy)."""
        with self._lock:
            return list(self._transactions.values())

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
        route = self._endpoint(request)
        if route is None:
            return error_response(404, "RESOURCE_NOT_FOUND", "No such endpoint")
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
            return _answer(request, route, fault)

    def _endpoint(self, request: httpx.Request) -> Route | None:
        """The processing of ``request``, or None for an unknown endpoint."""
        # Match the raw path: an account KRN may hold an escaped "/".
        path = request.url.raw_path.split(b"?")[0].decode("ascii", "replace")
        for method, pattern in _ROUTES:
            match = pattern.fullmatch(path)
            if match is None or request.method != method:
                continue
            account, *ids = (unquote(part) for part in match.groups())
            if method == "DELETE":
                return lambda: self.cancel_over_http(request, account, self.api_key, *ids)
            if method == "GET":
                return lambda: self.read_over_http(request, account, self.api_key, *ids)
            return lambda: self.authorize(request, account, self.api_key, Decisions(self._verdicts))
        return None


def _answer(request: httpx.Request, route: Route, fault: Scripted | None) -> httpx.Response:
    """Answer under ``fault`` (an error or a lost answer), if any.

    An error, or an answer lost before processing, leaves Klarna untouched (and
    the verdicts queued). Otherwise the call is processed as without the
    fault, queued verdict included, and an answer lost after processing is
    then withheld: Klarna acted, the caller never hears how.
    """
    if fault is not None and fault.kind == "respond":
        return json_response(fault.status_code, fault.body, fault.headers)
    if fault is not None and not fault.after_processing:
        raise _lost(fault.kind, request)
    response = route()
    if fault is not None and fault.kind in _LOST:
        raise _lost(fault.kind, request)
    return response


def _lost(kind: str, request: httpx.Request) -> httpx.TransportError:
    if kind == "timeout":
        return httpx.ReadTimeout("FakeKlarna: no answer in time", request=request)
    return httpx.RemoteProtocolError(
        "FakeKlarna: server disconnected without sending a response", request=request
    )
