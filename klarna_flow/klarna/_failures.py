"""Translation of Klarna's error answers and of httpx failures into the error tree.

Both error envelopes are understood: the current one (``error_id``,
``error_type``, ``error_code``, ``error_message``, ``doc_url``,
``validation_errors[]``) and the older one (``correlation_id`` +
``error_messages[]``). Known secrets are masked out of whatever Klarna echoes
back before it is attached to an error.
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

__all__ = ["api_error", "parse_retry_after", "transport_error"]

_BY_STATUS: dict[int, type[KlarnaAPIError]] = {
    400: KlarnaValidationError,
    413: KlarnaValidationError,
    401: KlarnaAuthenticationError,
    403: KlarnaAuthenticationError,
    404: KlarnaNotFound,
    409: KlarnaConflict,
}


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
            ``Retry-After``).
        content: the raw body; it need not be JSON.
        secrets: values to mask if Klarna echoes them back.
        now: the current time, for an HTTP-date ``Retry-After``.
        acted_before: an earlier attempt of the same call may have reached Klarna.
    """
    correlation_id = headers.get("Klarna-Correlation-Id")
    if not 400 <= status_code <= 599:
        return KlarnaUnexpectedResponse(
            f"unexpected HTTP status {status_code}",
            status_code=status_code,
            correlation_id=correlation_id,
        )
    fields = _envelope(_scrub(decode_object(content), tuple(secrets)))
    fields["correlation_id"] = correlation_id or fields["correlation_id"]
    fields["may_have_acted"] = acted_before or status_code >= 500
    if status_code == 429:
        retry_after = parse_retry_after(headers.get("Retry-After"), now)
        return KlarnaRateLimited(retry_after=retry_after, status_code=429, **fields)
    error_class = (
        KlarnaServerError if status_code >= 500 else _BY_STATUS.get(status_code, KlarnaAPIError)
    )
    return error_class(status_code=status_code, **fields)


def _envelope(body: Any) -> dict[str, Any]:
    """Keyword arguments of :class:`KlarnaAPIError` from either envelope."""
    data: Mapping[str, Any] = body if isinstance(body, dict) else {}
    message = _text(data.get("error_message"))
    older = data.get("error_messages")
    if message is None and isinstance(older, list):
        message = "; ".join(item for item in older if isinstance(item, str)) or None
    problems = data.get("validation_errors")
    return {
        "error_code": _text(data.get("error_code")),
        "error_type": _text(data.get("error_type")),
        "error_id": _text(data.get("error_id")),
        "error_message": message,
        "validation_errors": [p for p in problems if isinstance(p, dict)]
        if isinstance(problems, list)
        else [],
        "correlation_id": _text(data.get("correlation_id")),
        "body": body if isinstance(body, dict) else None,
    }


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


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date).

    Returns None when absent or unreadable; never a negative number.
    """
    if value is None:
        return None
    value = value.strip()
    seconds: float | None
    try:
        seconds = float(value)
    except ValueError:
        seconds = _seconds_until(value, now or datetime.now(UTC))
    if seconds is None or not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


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
