"""One exchange with Klarna (authorize, cancel a payment request, read a
transaction), shared by the sync and async clients.

Checking the inputs, building the request, reading the answer and logging each
attempt are the same whichever way the bytes travel; the clients only send and
sleep.
"""

from __future__ import annotations

import functools
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import attrs
import httpx

from klarna_flow._errors import InvalidInput, KlarnaError
from klarna_flow._shared.secrets import mask
from klarna_flow._shared.telemetry import ENABLED, Span, annotate, klarna_latency, span
from klarna_flow._shared.validation import (
    check_amount,
    check_currency,
    check_idempotency_key,
    check_krn,
    check_reference,
    check_token,
)
from klarna_flow.klarna._failures import api_error
from klarna_flow.klarna._purchase import (
    Capture,
    CustomerTokenRequest,
    StepUpConfig,
    SupplementaryPurchaseData,
)
from klarna_flow.klarna._retry import Attempts
from klarna_flow.klarna._wire import (
    AuthorizationResponse,
    PaymentRequest,
    PaymentTransaction,
    authorization_body,
    parse_authorization,
    parse_payment_request,
    parse_transaction,
)

__all__ = [
    "AuthorizeArgs",
    "AuthorizeCall",
    "Call",
    "Endpoint",
    "failed",
    "partner_correlation_id",
    "prepare",
    "prepare_cancel",
    "prepare_read_transaction",
    "received",
]

T = TypeVar("T")

logger = logging.getLogger("klarna_flow.klarna")

# Klarna documents Partner-Correlation-Id as "<= 255 characters ^[A-Za-z0-9]+$".
_ALPHANUMERIC = re.compile(r"[A-Za-z0-9]{1,255}")


def _masked(value: str) -> str:
    return repr(mask(value))


def _masked_or_none(value: str | None) -> str:
    return repr(None if value is None else mask(value))


@attrs.frozen
class Endpoint:
    """Where and as whom a client talks to Klarna."""

    base_url: str
    api_key: str = attrs.field(repr=_masked)
    user_agent: str


@attrs.frozen
class Call(Generic[T]):
    """One checked request to Klarna, how to read its answer, and what to log.

    Attributes:
        operation: what the call does, for log lines (``authorize``...).
        subject: the reference or id it is about, for log lines.
        request: the request, built once and re-sent on every attempt.
        read: parses a 2xx answer (status, correlation id, body).
        secrets: values no error message may repeat.
        token: the session or customer token sent, if any (logged masked).
    """

    operation: str
    subject: str
    request: httpx.Request = attrs.field(repr=False, eq=False)
    read: Callable[[int, str | None, bytes], T] = attrs.field(repr=False, eq=False)
    secrets: tuple[str, ...] = attrs.field(repr=False)
    token: str | None = attrs.field(default=None, repr=_masked_or_none)

    def masked_token(self) -> str | None:
        """The token with its secret part hidden, for log lines."""
        return None if self.token is None else mask(self.token)


AuthorizeCall = Call[AuthorizationResponse]


@attrs.frozen
class AuthorizeArgs:
    """The inputs of one authorize call, as the clients take them (unchecked)."""

    partner_account_id: str
    idempotency_key: str
    currency: str
    amount: int | None = None
    reference: str | None = None
    session_token: str | None = attrs.field(default=None, repr=False)
    customer_token: str | None = attrs.field(default=None, repr=False)
    correlation_id: str | None = None
    purchase: SupplementaryPurchaseData | None = None
    step_up: StepUpConfig | None = None
    capture: Capture | str | None = None
    payment_option_id: str | None = None
    customer_token_request: CustomerTokenRequest | None = None
    payment_request_id: str | None = None


def prepare(
    http: httpx.Client | httpx.AsyncClient,
    endpoint: Endpoint,
    timeout: httpx.Timeout | None,
    args: AuthorizeArgs,
) -> AuthorizeCall:
    """Check every input and build the authorize request, before any I/O.

    Raises:
        InvalidInput: a bad argument; the message never holds a token.
    """
    account = check_krn(args.partner_account_id, "partner_account_id")
    key = _ascii(check_idempotency_key(args.idempotency_key), "idempotency_key")
    currency = check_currency(args.currency)
    amount, reference = _transaction_terms(args)
    session = _optional_token(args.session_token, "session_token")
    customer = _optional_token(args.customer_token, "customer_token")
    body = authorization_body(
        currency=currency,
        amount=amount,
        reference=reference,
        payment_option_id=None
        if args.payment_option_id is None
        else check_reference(args.payment_option_id, "payment_option_id"),
        capture=None if args.capture is None else _capture(args.capture),
        purchase=_typed(args.purchase, SupplementaryPurchaseData, "purchase"),
        step_up=_typed(args.step_up, StepUpConfig, "step_up"),
        customer_token_request=_typed(
            args.customer_token_request, CustomerTokenRequest, "customer_token_request"
        ),
        payment_request_id=_optional_krn(args.payment_request_id, "payment_request_id"),
    )
    headers = _headers(endpoint, args.correlation_id)
    headers["Klarna-Idempotency-Key"] = key
    if session is not None:
        headers["Klarna-Network-Session-Token"] = session
    if customer is not None:
        headers["Klarna-Customer-Token"] = customer
    url = f"{endpoint.base_url}/v2/accounts/{_segment(account)}/payment/authorize"
    request = _build(http, "POST", url, headers, timeout, content=body)
    secrets = tuple(t for t in (session, customer, endpoint.api_key) if t is not None)
    return Call(
        "authorize",
        reference or args.payment_request_id or key,
        request,
        parse_authorization,
        secrets,
        session if session is not None else customer,
    )


def prepare_cancel(
    http: httpx.Client | httpx.AsyncClient,
    endpoint: Endpoint,
    timeout: httpx.Timeout | None,
    *,
    partner_account_id: str,
    payment_request_id: str,
    correlation_id: str | None,
) -> Call[PaymentRequest]:
    """Check and build ``DELETE .../payment/requests/{id}``.

    Raises:
        InvalidInput: a bad argument.
    """
    account = check_krn(partner_account_id, "partner_account_id")
    request_id = check_krn(payment_request_id, "payment_request_id")
    url = (
        f"{endpoint.base_url}/v2/accounts/{_segment(account)}"
        f"/payment/requests/{_segment(request_id)}"
    )
    headers = _headers(endpoint, correlation_id)
    del headers["Content-Type"]  # no body
    request = _build(http, "DELETE", url, headers, timeout)
    return Call(
        "cancel payment request",
        request_id,
        request,
        parse_payment_request,
        (endpoint.api_key,),
    )


def prepare_read_transaction(
    http: httpx.Client | httpx.AsyncClient,
    endpoint: Endpoint,
    timeout: httpx.Timeout | None,
    *,
    partner_account_id: str,
    payment_transaction_id: str,
    correlation_id: str | None,
) -> Call[PaymentTransaction]:
    """Check and build ``GET .../payment/transactions/{id}``.

    Raises:
        InvalidInput: a bad argument.
    """
    account = check_krn(partner_account_id, "partner_account_id")
    transaction_id = check_krn(payment_transaction_id, "payment_transaction_id")
    url = (
        f"{endpoint.base_url}/v2/accounts/{_segment(account)}"
        f"/payment/transactions/{_segment(transaction_id)}"
    )
    headers = _headers(endpoint, correlation_id)
    del headers["Content-Type"]
    request = _build(http, "GET", url, headers, timeout)
    return Call("read transaction", transaction_id, request, parse_transaction, (endpoint.api_key,))


def _segment(value: str) -> str:
    return quote(value, safe=":")


def _build(
    http: httpx.Client | httpx.AsyncClient,
    method: str,
    url: str,
    headers: dict[str, str],
    timeout: httpx.Timeout | None,
    *,
    content: bytes | None = None,
) -> httpx.Request:
    """The request as ``http.build_request`` makes it, for an absolute URL and no cookies.

    The client's own headers come first, ours over them; the timeout is ours
    or the client's. A third of the cost of ``build_request``, which also
    merges a base URL, query parameters and cookies that Klarna's calls never use.
    """
    merged = httpx.Headers(http.headers)
    merged.update(headers)
    chosen = http.timeout if timeout is None else timeout
    extensions = {"timeout": chosen.as_dict()}
    return httpx.Request(
        method, _parsed_url(url), headers=merged, content=content, extensions=extensions
    )


@functools.lru_cache(maxsize=1024)
def _parsed_url(url: str) -> httpx.URL:
    """httpx's parse of ``url``, kept: a client calls the same few endpoints
    (one per account and call; httpx.URL is immutable), and parsing is a tenth
    of a call's own cost."""
    return httpx.URL(url)


def _transaction_terms(args: AuthorizeArgs) -> tuple[int | None, str | None]:
    """Amount and reference: both (a payment transaction) or neither (tokenization)."""
    if args.amount is None and args.reference is None:
        if args.customer_token_request is None:
            raise InvalidInput(
                "amount", "is required unless a customer token is requested (tokenization)"
            )
        if args.capture is not None or args.payment_option_id is not None:
            raise InvalidInput("capture", "applies only to a payment transaction")
        return None, None
    if args.reference is None:
        raise InvalidInput("reference", "is required with an amount")
    if args.amount is None:
        raise InvalidInput("amount", "is required with a reference")
    return check_amount(args.amount), check_reference(args.reference)


def _optional_token(value: str | None, field: str) -> str | None:
    return None if value is None else check_token(value, field)


def _optional_krn(value: str | None, field: str) -> str | None:
    return None if value is None else check_krn(value, field)


def _capture(value: object) -> str:
    try:
        return Capture(value).value  # type: ignore[arg-type]  # a bad value raises
    except ValueError:
        raise InvalidInput("capture", "must be NOW or LATER") from None


def _typed(value: object, kind: type[Any], field: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, kind):
        raise InvalidInput(field, f"must be a {kind.__name__} or None")
    wire: dict[str, Any] = value.to_wire()
    return wire


def partner_correlation_id(value: object) -> str:
    """The ``Partner-Correlation-Id`` to send for ``value``.

    Klarna accepts only ASCII letters and digits, at most 255: such a value is
    sent as is, and a UUID in its usual hyphenated form (as ``str(uuid)``
    gives) is sent as its 32 hex digits.

    Raises:
        InvalidInput: anything else.
    """
    if isinstance(value, str):
        if _ALPHANUMERIC.fullmatch(value):
            return value
        as_uuid = _uuid_hex(value)
        if as_uuid is not None:
            return as_uuid
    raise InvalidInput("correlation_id", "must be 1..255 ASCII letters and digits, or a UUID")


def _uuid_hex(value: str) -> str | None:
    """The hex of a UUID written ``8-4-4-4-12`` (any case), else None."""
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return None
    # uuid.UUID also reads braces, "urn:uuid:" and stray hyphens: only the
    # canonical form is a UUID here, anything looser is a mistake to report.
    return parsed.hex if str(parsed) == value.lower() else None


def _ascii(value: str, field: str) -> str:
    # HTTP header values must be ASCII; httpx would fail later with a foreign
    # UnicodeEncodeError.
    if not value.isascii():
        raise InvalidInput(field, "must be ASCII (it travels in an HTTP header)")
    return value


def _headers(endpoint: Endpoint, correlation_id: str | None) -> dict[str, str]:
    headers = {
        "Authorization": f"Basic {endpoint.api_key}",
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": endpoint.user_agent,
    }
    if correlation_id is not None:
        headers["Partner-Correlation-Id"] = partner_correlation_id(correlation_id)
    return headers


def received(call: Call[T], attempts: Attempts, response: httpx.Response) -> T:
    """Read an answer: the parsed 2xx body, or raise.

    Raises:
        KlarnaAPIError: an error status (a subclass by status).
        KlarnaUnexpectedResponse: a body or status that cannot be read.
    """
    status = response.status_code
    correlation_id = response.headers.get("Klarna-Correlation-Id")
    _observe(call, attempts, status, correlation_id)
    if 200 <= status < 300:
        answer = call.read(status, correlation_id, response.content)
        outcome = getattr(answer, "result", None) or getattr(answer, "state", None) or ""
        annotate({"klarna_flow.outcome": outcome})
        _log(logging.INFO, call, attempts, f"{status} {outcome}".rstrip(), correlation_id)
        return answer
    raise api_error(
        status,
        response.headers,
        response.content,
        secrets=call.secrets,
        acted_before=attempts.may_have_acted,
    )


def failed(call: Call[Any], attempts: Attempts, error: KlarnaError) -> float | None:
    """Log a failed attempt; return the seconds to wait before the next one.

    None means give up: the caller raises ``error``.
    """
    attempts.may_have_acted = attempts.may_have_acted or error.may_have_acted
    delay = attempts.delay_after(error)
    status = getattr(error, "status_code", None) or type(error).__name__
    if not isinstance(status, int):  # no answer: the attempt's latency is recorded here
        _observe(call, attempts, status, None)
    what = f"{status} {getattr(error, 'error_code', None) or ''}".rstrip()
    what += f", retrying in {delay:.3f}s" if delay is not None else ", giving up"
    _log(logging.WARNING, call, attempts, what, error.correlation_id)
    return delay


@contextmanager
def call_span(call: Call[Any]) -> Iterator[Span]:
    """The span of one call to Klarna, all its attempts included (kind CLIENT)."""
    attributes = {
        "klarna.operation": call.operation,
        "klarna.partner_correlation_id": call.request.headers.get("Partner-Correlation-Id"),
        "http.request.method": call.request.method,
    }
    with span(f"klarna {call.operation}", attributes, client=True) as opened:
        yield opened


def _observe(
    call: Call[Any], attempts: Attempts, status: int | str, correlation: str | None
) -> None:
    """One attempt's latency in the histogram and its facts on the call's span."""
    if not ENABLED:
        return
    klarna_latency(attempts.attempt_elapsed, call.operation, status)
    annotate(
        {
            "klarna.attempts": attempts.number,
            "http.response.status_code" if isinstance(status, int) else "error.type": status,
            "klarna.correlation_id": correlation,
        }
    )


def _log(
    level: int,
    call: Call[Any],
    attempts: Attempts,
    outcome: str,
    correlation_id: str | None,
) -> None:
    if not logger.isEnabledFor(level):
        return
    logger.log(
        level,
        "%s %s attempt %d/%d: %s (klarna correlation id %s, %.3fs, token %s)",
        call.operation,
        call.subject,
        attempts.number,
        attempts.policy.max_attempts,
        outcome,
        correlation_id,
        attempts.elapsed,
        call.masked_token(),
        extra={
            "klarna_attempt": attempts.number,
            "klarna_correlation_id": correlation_id,
            "klarna_reference": call.subject,
            "klarna_operation": call.operation,
        },
    )
