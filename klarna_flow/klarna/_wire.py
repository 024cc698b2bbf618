"""Wire types of the Payment Authorize API, and their parsing from JSON.

Parsing keeps every field it does not know (in ``raw``) and is strict only
about what the library relies on: a known ``result`` and, for an approval, a
well-formed transaction. Anything else is
:class:`~klarna_flow.KlarnaUnexpectedResponse`, never a silent success.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

from klarna_flow._errors import KlarnaUnexpectedResponse

__all__ = [
    "AuthorizationResponse",
    "AuthorizationResult",
    "PaymentTransaction",
    "StepUp",
    "authorization_body",
    "decode_object",
    "parse_authorization",
]


class AuthorizationResult(enum.StrEnum):
    """Klarna's verdict on an authorize call."""

    APPROVED = "APPROVED"
    DECLINED = "DECLINED"
    STEP_UP_REQUIRED = "STEP_UP_REQUIRED"


@attrs.frozen
class PaymentTransaction:
    """The payment transaction Klarna created on approval.

    ``payment_transaction_id`` is what later capture, refund and void use.
    """

    payment_transaction_id: str
    payment_transaction_reference: str
    amount: int
    currency: str
    payment_funding: Mapping[str, Any] = attrs.field(factory=dict)
    payment_pricing: Mapping[str, Any] = attrs.field(factory=dict)
    expires_at: datetime | None = None


@attrs.frozen
class StepUp:
    """The new payment request the customer must go through again."""

    payment_request_id: str
    payment_request_url: str | None
    raw: Mapping[str, Any]


@attrs.frozen
class AuthorizationResponse:
    """Klarna's answer to an authorize call.

    Attributes:
        result: approved, declined or step-up required.
        transaction: the payment transaction, on approval only.
        step_up: the new payment request, on step-up (when Klarna sent one).
        result_reason: Klarna's reason, when given (values are not published).
        correlation_id: the ``Klarna-Correlation-Id`` of the answer.
        status_code: the HTTP status of the answer.
        raw: the whole decoded body, unknown fields included.
    """

    result: AuthorizationResult
    transaction: PaymentTransaction | None
    step_up: StepUp | None
    result_reason: str | None
    correlation_id: str | None
    status_code: int
    raw: Mapping[str, Any]


# Digits of a fraction of a second past the sixth (microseconds, all that
# datetime keeps): Klarna sends nanoseconds.
_SUB_MICROSECOND = re.compile(r"(?<=[.,][0-9]{6})[0-9]+")


class _ShapeError(ValueError):
    """The body is not what the API documents (translated before it escapes)."""


def authorization_body(*, currency: str, amount: int, reference: str) -> bytes:
    """The JSON body of an authorize call, compact and in the documented order."""
    body = {
        "currency": currency,
        "request_payment_transaction": {
            "amount": amount,
            "payment_transaction_reference": reference,
        },
    }
    return json.dumps(body, separators=(",", ":")).encode()


def decode_object(content: bytes) -> dict[str, Any] | None:
    """The body decoded as a JSON object, or None if it is anything else."""
    try:
        value = json.loads(content)
    except (ValueError, RecursionError):
        # ValueError covers bad JSON, bad UTF-8 and over-long integers.
        return None
    return value if isinstance(value, dict) else None


def parse_authorization(
    status_code: int, correlation_id: str | None, content: bytes
) -> AuthorizationResponse:
    """Parse a successful (2xx) authorize answer.

    Raises:
        KlarnaUnexpectedResponse: not JSON, an unknown ``result``, or a shape
            the library cannot rely on. The message names the problem, never
            a value from the body.
    """
    try:
        raw = decode_object(content)
        if raw is None:
            raise _ShapeError("the body is not a JSON object")
        return _authorization(raw, status_code, correlation_id)
    except _ShapeError as exc:
        raise KlarnaUnexpectedResponse(
            f"unexpected authorize answer ({status_code}): {exc}",
            status_code=status_code,
            correlation_id=correlation_id,
        ) from exc


def _authorization(
    raw: dict[str, Any], status_code: int, correlation_id: str | None
) -> AuthorizationResponse:
    answer = _object(raw.get("payment_transaction_response"), "payment_transaction_response")
    result = _result(answer.get("result"))
    transaction = step_up = None
    if result is AuthorizationResult.APPROVED:
        found = answer.get("payment_transaction", raw.get("payment_transaction"))
        transaction = _transaction(_object(found, "payment_transaction"))
    elif result is AuthorizationResult.STEP_UP_REQUIRED:
        # Pages disagree on where the new payment request sits: accept both.
        found = answer.get("payment_request", raw.get("payment_request"))
        step_up = None if found is None else _step_up(found)
    return AuthorizationResponse(
        result=result,
        transaction=transaction,
        step_up=step_up,
        result_reason=_optional_str(answer, "result_reason"),
        correlation_id=correlation_id,
        status_code=status_code,
        raw=raw,
    )


def _result(value: object) -> AuthorizationResult:
    if not isinstance(value, str):
        raise _ShapeError("result is missing or not a string")
    try:
        return AuthorizationResult(value)
    except ValueError:
        raise _ShapeError("unknown result value") from None


def _transaction(data: dict[str, Any]) -> PaymentTransaction:
    return PaymentTransaction(
        payment_transaction_id=_str(data, "payment_transaction_id"),
        payment_transaction_reference=_str(data, "payment_transaction_reference"),
        amount=_int(data, "amount"),
        currency=_str(data, "currency"),
        payment_funding=_object(data.get("payment_funding", {}), "payment_funding"),
        payment_pricing=_object(data.get("payment_pricing", {}), "payment_pricing"),
        expires_at=_instant(data.get("expires_at")),
    )


def _step_up(value: object) -> StepUp:
    data = _object(value, "payment_request")
    return StepUp(
        payment_request_id=_str(data, "payment_request_id"),
        payment_request_url=_optional_str(data, "payment_request_url"),
        raw=data,
    )


def _object(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _ShapeError(f"{name} is missing or not an object")
    return value


def _str(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise _ShapeError(f"{name} is missing or not a string")
    return value


def _optional_str(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise _ShapeError(f"{name} is not a string")
    return value


def _int(data: Mapping[str, Any], name: str) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _ShapeError(f"{name} is missing or not an integer")
    return value


def _instant(value: object) -> datetime | None:
    """An RFC 3339 time with an offset, at any fractional precision, in UTC.

    Digits past microseconds are cut, never rounded: ``.999999999`` stays in
    its second. ``t`` and ``z`` may be lower case, as RFC 3339 allows.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise _ShapeError("expires_at is not a string")
    try:
        instant = datetime.fromisoformat(_SUB_MICROSECOND.sub("", value.upper()))
    except ValueError:
        raise _ShapeError("expires_at is not an ISO 8601 time") from None
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise _ShapeError("expires_at has no UTC offset")
    try:
        return instant.astimezone(UTC)
    except OverflowError:
        raise _ShapeError("expires_at is out of range") from None
