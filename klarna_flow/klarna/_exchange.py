"""One authorize exchange, shared by the sync and async clients.

Checking the inputs, building the request, reading the answer and logging each
attempt are the same whichever way the bytes travel; the clients only send and
sleep.
"""

from __future__ import annotations

import logging
import re
import uuid
from urllib.parse import quote

import attrs
import httpx

from klarna_flow._errors import InvalidInput, KlarnaError
from klarna_flow._shared.secrets import mask
from klarna_flow._shared.validation import (
    check_amount,
    check_currency,
    check_idempotency_key,
    check_krn,
    check_reference,
    check_token,
)
from klarna_flow.klarna._failures import api_error
from klarna_flow.klarna._retry import Attempts
from klarna_flow.klarna._wire import (
    AuthorizationResponse,
    authorization_body,
    parse_authorization,
)

__all__ = [
    "AuthorizeCall",
    "Endpoint",
    "failed",
    "partner_correlation_id",
    "prepare",
    "received",
]

logger = logging.getLogger("klarna_flow.klarna")

# Klarna documents Partner-Correlation-Id as "<= 255 characters ^[A-Za-z0-9]+$".
_ALPHANUMERIC = re.compile(r"[A-Za-z0-9]{1,255}")


def _masked(value: str) -> str:
    return repr(mask(value))


@attrs.frozen
class Endpoint:
    """Where and as whom a client talks to Klarna."""

    base_url: str
    api_key: str = attrs.field(repr=_masked)
    user_agent: str


@attrs.frozen
class AuthorizeCall:
    """The checked inputs of one authorize call, and its request."""

    partner_account_id: str
    session_token: str = attrs.field(repr=_masked)
    currency: str
    amount: int
    reference: str
    idempotency_key: str
    correlation_id: str | None
    request: httpx.Request = attrs.field(repr=False, eq=False)
    secrets: tuple[str, ...] = attrs.field(repr=False)

    def masked_token(self) -> str | None:
        """The session token with its secret part hidden, for log lines."""
        return mask(self.session_token)


def prepare(
    http: httpx.Client | httpx.AsyncClient,
    endpoint: Endpoint,
    timeout: httpx.Timeout | None,
    *,
    partner_account_id: str,
    session_token: str,
    currency: str,
    amount: int,
    reference: str,
    idempotency_key: str,
    correlation_id: str | None,
) -> AuthorizeCall:
    """Check every input and build the request, before any I/O.

    Raises:
        InvalidInput: a bad argument; the message never holds the token.
    """
    account = check_krn(partner_account_id, "partner_account_id")
    token = check_token(session_token, "session_token")
    currency = check_currency(currency)
    amount = check_amount(amount)
    reference = check_reference(reference)
    key = _ascii(check_idempotency_key(idempotency_key), "idempotency_key")
    if correlation_id is not None:
        correlation_id = partner_correlation_id(correlation_id)
    url = f"{endpoint.base_url}/v2/accounts/{quote(account, safe=':')}/payment/authorize"
    request = http.build_request(
        "POST",
        url,
        headers=_headers(endpoint, token, key, correlation_id),
        content=authorization_body(currency=currency, amount=amount, reference=reference),
        timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
    )
    return AuthorizeCall(
        partner_account_id=account,
        session_token=token,
        currency=currency,
        amount=amount,
        reference=reference,
        idempotency_key=key,
        correlation_id=correlation_id,
        request=request,
        secrets=(token, endpoint.api_key),
    )


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


def _headers(
    endpoint: Endpoint, token: str, key: str, correlation_id: str | None
) -> dict[str, str]:
    headers = {
        "Authorization": f"Basic {endpoint.api_key}",
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": endpoint.user_agent,
        "Klarna-Network-Session-Token": token,
        "Klarna-Idempotency-Key": key,
    }
    if correlation_id is not None:
        headers["Partner-Correlation-Id"] = correlation_id
    return headers


def received(
    call: AuthorizeCall, attempts: Attempts, response: httpx.Response
) -> AuthorizationResponse:
    """Read an answer: the parsed approval/decline/step-up, or raise.

    Raises:
        KlarnaAPIError: an error status (a subclass by status).
        KlarnaUnexpectedResponse: a body or status that cannot be read.
    """
    status = response.status_code
    correlation_id = response.headers.get("Klarna-Correlation-Id")
    if 200 <= status < 300:
        answer = parse_authorization(status, correlation_id, response.content)
        _log(logging.INFO, call, attempts, f"{status} {answer.result}", correlation_id)
        return answer
    raise api_error(
        status,
        response.headers,
        response.content,
        secrets=call.secrets,
        acted_before=attempts.may_have_acted,
    )


def failed(call: AuthorizeCall, attempts: Attempts, error: KlarnaError) -> float | None:
    """Log a failed attempt; return the seconds to wait before the next one.

    None means give up: the caller raises ``error``.
    """
    attempts.may_have_acted = attempts.may_have_acted or error.may_have_acted
    delay = attempts.delay_after(error)
    status = getattr(error, "status_code", None) or type(error).__name__
    what = f"{status} {getattr(error, 'error_code', None) or ''}".rstrip()
    what += f", retrying in {delay:.3f}s" if delay is not None else ", giving up"
    _log(logging.WARNING, call, attempts, what, error.correlation_id)
    return delay


def _log(
    level: int,
    call: AuthorizeCall,
    attempts: Attempts,
    outcome: str,
    correlation_id: str | None,
) -> None:
    if not logger.isEnabledFor(level):
        return
    logger.log(
        level,
        "authorize %s attempt %d/%d: %s (klarna correlation id %s, %.3fs, token %s)",
        call.reference,
        attempts.number,
        attempts.policy.max_attempts,
        outcome,
        correlation_id,
        attempts.elapsed,
        call.masked_token(),
        extra={
            "klarna_attempt": attempts.number,
            "klarna_correlation_id": correlation_id,
            "klarna_reference": call.reference,
        },
    )
