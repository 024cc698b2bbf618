"""Translation of Klarna's error answers and of httpx failures into the error tree.

Every error shape Klarna documents is understood: the current envelope
(``error_id``, ``error_type``, ``error_code``, ``error_message``, ``doc_url``,
``validation_errors[]`` of ``{parameter, reason}``), the Klarna Network
error page's ``errors[]`` of ``{parameter, error_message, doc_url}``, and the
older ``correlation_id`` + ``error_messages[]``. A 403 without any of them
comes from Klarna's DDoS protection, not from the API. Known secrets are
masked out of whatever Klarna echoes back before it is attached to an error.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from klarna_flow._errors import (
    KlarnaAPIError,
    KlarnaAuthenticationError,
    KlarnaBlocked,
    KlarnaConflict,
    KlarnaError,
    KlarnaNotFound,
    KlarnaRateLimited,
    KlarnaServerError,
    KlarnaTimeout,
    KlarnaTransportError,
    KlarnaUnexpectedResponse,
    KlarnaValidationError,
)
from klarna_flow._shared.secrets import MASK
from klarna_flow.klarna._wire import decode_object

__all__ = [
    "api_error",
    "parse_ratelimit_reset",
    "parse_retry_after",
    "requested_wait",
    "transport_error",
]

_BY_STATUS: dict[int, type[KlarnaAPIError]] = {
    400: KlarnaValidationError,
    413: KlarnaValidationError,
    401: KlarnaAuthenticationError,
    403: KlarnaAuthenticationError,
    404: KlarnaNotFound,
    409: KlarnaConflict,
}
# Any of these keys makes a body Klarna's error object (of whichever shape).
_ERROR_KEYS = frozenset(
    ["error_code", "error_type", "error_id", "error_message", "error_messages", "errors"]
)
# X-Ratelimit-Reset's unit is not documented: a value this large (about 31
# years) is no sane wait, so it can only be a Unix time in seconds.
_EPOCH_FLOOR = 1e9


def api_error(
    status_code: int,
    headers: Mapping[str, str],
    content: bytes,
    *,
    secrets: Iterable[str] = (),
    now: datetime | None = None,
    acted_before: bool = False,
) -> KlarnaError:
    """The error for a non-2xx answer (returned, for the caller to raise).

    Args:
        status_code: the HTTP status.
        headers: the answer's headers (``Klarna-Correlation-Id``,
            ``Retry-After``, ``X-Ratelimit-Reset``).
        content: the raw body; it need not be JSON.
        secrets: values to mask if Klarna echoes them back.
        now: the current time, for an HTTP-date ``Retry-After`` or a Unix
            time ``X-Ratelimit-Reset``.
        acted_before: an earlier attempt of the same call may have reached Klarna.
    """
    correlation_id = headers.get("Klarna-Correlation-Id")
    if not 400 <= status_code <= 599:
        return KlarnaUnexpectedResponse(
            f"unexpected HTTP status {status_code}",
            status_code=status_code,
            correlation_id=correlation_id,
        )
    body = _scrub(decode_object(content), tuple(secrets))
    fields = _envelope(body)
    fields["correlation_id"] = correlation_id or fields["correlation_id"]
    fields["may_have_acted"] = acted_before or status_code >= 500
    if status_code == 429:
        retry_after = requested_wait(headers, now)
        return KlarnaRateLimited(retry_after=retry_after, status_code=429, **fields)
    return _error_class(status_code, body)(status_code=status_code, **fields)


def _error_class(status_code: int, body: dict[str, Any] | None) -> type[KlarnaAPIError]:
    if status_code >= 500:
        return KlarnaServerError
    if status_code == 403 and (body is None or _ERROR_KEYS.isdisjoint(body)):
        # Klarna's DDoS protection answers 403 without the error object.
        return KlarnaBlocked
    return _BY_STATUS.get(status_code, KlarnaAPIError)


def _envelope(body: dict[str, Any] | None) -> dict[str, Any]:
    """Keyword arguments of :class:`KlarnaAPIError` from any error shape."""
    data: Mapping[str, Any] = body or {}
    return {
        "error_code": _text(data.get("error_code")),
        "error_type": _text(data.get("error_type")),
        "error_id": _text(data.get("error_id")),
        "error_message": _message(data),
        "validation_errors": _problems(data),
        "correlation_id": _text(data.get("correlation_id")),
        "body": body,
    }


def _message(data: Mapping[str, Any]) -> str | None:
    """``error_message``, else the older ``error_messages[]``, else ``errors[]``'s, joined."""
    message = _text(data.get("error_message"))
    if message is not None:
        return message
    texts = [item for item in _list(data, "error_messages") if isinstance(item, str)]
    texts = texts or [
        problem["error_message"]
        for problem in _dicts(data, "errors")
        if isinstance(problem.get("error_message"), str)
    ]
    return "; ".join(texts) or None


def _problems(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The problems of all three shapes, each with a ``reason`` where one is known."""
    problems = [dict(problem) for problem in _dicts(data, "validation_errors")]
    problems += [_with_reason(problem) for problem in _dicts(data, "errors")]
    problems += [
        {"reason": item} for item in _list(data, "error_messages") if isinstance(item, str)
    ]
    return problems


def _with_reason(problem: dict[str, Any]) -> dict[str, Any]:
    # errors[] says error_message where validation_errors[] says reason: keep
    # every field and add reason, so callers read one key whatever the shape.
    reason = problem.get("error_message")
    if "reason" in problem or not isinstance(reason, str):
        return dict(problem)
    return {**problem, "reason": reason}


def _list(data: Mapping[str, Any], name: str) -> list[Any]:
    value = data.get(name)
    return value if isinstance(value, list) else []


def _dicts(data: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    return [item for item in _list(data, name) if isinstance(item, dict)]


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _scrub(value: Any, secrets: tuple[str, ...]) -> Any:
    """``value`` with every occurrence of a secret replaced by ``****``."""
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, MASK)
        return value
    if isinstance(value, list):
        return [_scrub(item, secrets) for item in value]
    if isinstance(value, dict):
        return {_scrub(k, secrets): _scrub(v, secrets) for k, v in value.items()}
    return value


def requested_wait(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds Klarna asked to wait, from ``Retry-After`` or ``X-Ratelimit-Reset``.

    Klarna documents ``X-Ratelimit-Reset``; whether it sends ``Retry-After``
    is not documented, so either is honoured, and the longer wait if both
    came. None when neither is present and readable; never negative.
    """
    now = now or datetime.now(UTC)
    waits = (
        parse_retry_after(headers.get("Retry-After"), now),
        parse_ratelimit_reset(headers.get("X-Ratelimit-Reset"), now),
    )
    return max((wait for wait in waits if wait is not None), default=None)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date).

    Returns None when absent or unreadable; never a negative number.
    """
    if value is None:
        return None
    seconds = _number(value)
    if seconds is None:
        seconds = _seconds_until(value.strip(), now or datetime.now(UTC))
    if seconds is None or not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def parse_ratelimit_reset(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from an ``X-Ratelimit-Reset`` header.

    Its unit is not documented, so both readings are accepted: seconds to
    wait, or (any value of 10**9 or more, about 31 years) a Unix time in
    seconds, counted from ``now``. Returns None when absent or not a finite
    number; never a negative number. A huge wait is left to the retry
    policy, which never waits longer than ``max_backoff`` nor past its deadline.
    """
    seconds = None if value is None else _number(value)
    if seconds is None or not math.isfinite(seconds):
        return None
    if seconds >= _EPOCH_FLOOR:
        seconds -= (now or datetime.now(UTC)).timestamp()
    return max(0.0, seconds)


def _number(value: str) -> float | None:
    try:
        return float(value.strip())
    except ValueError:
        return None


def _seconds_until(http_date: str, now: datetime) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(http_date)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - now).total_seconds()


# httpx failures that happen before a request leaves the machine.
_NEVER_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
)


def transport_error(exc: httpx.HTTPError, *, acted_before: bool = False) -> KlarnaError:
    """The error tree's view of an httpx failure (for ``raise ... from exc``).

    httpx's own message is left out: it may quote the URL or headers.
    ``acted_before``: an earlier attempt of the same call may have reached Klarna.
    """
    kind = type(exc).__name__
    acted = acted_before or not isinstance(exc, _NEVER_SENT)
    if isinstance(exc, httpx.TimeoutException):
        return KlarnaTimeout(f"Klarna did not answer in time ({kind})", may_have_acted=acted)
    if isinstance(exc, httpx.TransportError):
        return KlarnaTransportError(
            f"the connection to Klarna failed ({kind})", may_have_acted=acted
        )
    # Not a transport failure: an answer arrived but could not be decoded
    # (DecodingError), or a redirect loop; retrying would not help.
    return KlarnaUnexpectedResponse(f"Klarna's answer could not be read ({kind})")
