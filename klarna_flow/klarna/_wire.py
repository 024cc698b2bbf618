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
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import attrs

from klarna_flow._errors import KlarnaUnexpectedResponse
from klarna_flow._shared.secrets import mask

__all__ = [
    "AuthorizationResponse",
    "AuthorizationResult",
    "CustomerToken",
    "PaymentCapture",
    "PaymentRequest",
    "PaymentTransaction",
    "StepUp",
    "authorization_body",
    "decode_object",
    "instant",
    "parse_authorization",
    "parse_payment_request",
    "parse_transaction",
    "payment_request",
]

T = TypeVar("T")


class AuthorizationResult(enum.StrEnum):
    """Klarna's verdict on an authorize call."""

    APPROVED = "APPROVED"
    DECLINED = "DECLINED"
    STEP_UP_REQUIRED = "STEP_UP_REQUIRED"


@attrs.frozen
class PaymentCapture:
    """One capture of a transaction (capture ``NOW`` creates one at authorization)."""

    payment_capture_id: str
    amount: int
    captured_at: datetime | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)


@attrs.frozen
class PaymentTransaction:
    """The payment transaction Klarna created on approval, or reports on a read.

    ``payment_transaction_id`` is what later capture, refund and void use.
    ``state`` is Klarna's (``AUTHORIZED``, ``COMPLETED``, ``EXPIRED``,
    ``CLOSED``), None when the answer names none.
    """

    payment_transaction_id: str
    payment_transaction_reference: str
    amount: int
    currency: str
    payment_funding: Mapping[str, Any] = attrs.field(factory=dict)
    payment_pricing: Mapping[str, Any] = attrs.field(factory=dict)
    expires_at: datetime | None = None
    state: str | None = None
    payment_captures: tuple[PaymentCapture, ...] = ()
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @property
    def captured_amount(self) -> int:
        """The sum of the captures Klarna listed."""
        return sum(c.amount for c in self.payment_captures)


@attrs.frozen
class PaymentRequest:
    """A payment request as Klarna returns it (step-up answers, cancel answers).

    Klarna gives the request id at the top level and again in
    ``state_context.customer_interaction``; the top-level one is preferred
    and both are kept (``interaction_payment_request_id``). The URL is read
    from ``customer_interaction`` first, then from the top level.
    """

    payment_request_id: str
    payment_request_url: str | None
    raw: Mapping[str, Any] = attrs.field(repr=False)
    state: str | None = None
    method: str | None = None
    expires_at: datetime | None = None
    created_at: datetime | None = None
    interaction_payment_request_id: str | None = None


StepUp = PaymentRequest
"""The payment request of a ``STEP_UP_REQUIRED`` answer (the same type)."""


def _masked_token(value: str) -> str:
    return repr(mask(value))


@attrs.frozen
class CustomerToken:
    """The customer token Klarna issued (tokenization flows); a secret."""

    customer_token: str = attrs.field(repr=_masked_token)
    customer_token_reference: str | None = None
    scopes: tuple[str, ...] = ()


@attrs.frozen
class AuthorizationResponse:
    """Klarna's answer to an authorize call.

    Attributes:
        result: approved, declined or step-up required.
        transaction: the payment transaction, on approval of a flow that asked for one.
        step_up: the payment request the customer must go through, on step-up.
        result_reason: Klarna's reason, when given (values are not published).
        correlation_id: the ``Klarna-Correlation-Id`` of the answer.
        status_code: the HTTP status of the answer.
        raw: the whole decoded body, unknown fields included.
        customer_token: the customer token, on approval of a flow that asked for one.
    """

    result: AuthorizationResult
    transaction: PaymentTransaction | None
    step_up: PaymentRequest | None
    result_reason: str | None
    correlation_id: str | None
    status_code: int
    raw: Mapping[str, Any] = attrs.field(repr=False)
    customer_token: CustomerToken | None = None


# Digits of a fraction of a second past the sixth (microseconds, all that
# datetime keeps): Klarna sends nanoseconds.
_SUB_MICROSECOND = re.compile(r"(?<=[.,][0-9]{6})[0-9]+")


class _ShapeError(ValueError):
    """The body is not what the API documents (translated before it escapes)."""


def authorization_body(
    *,
    currency: str,
    amount: int | None = None,
    reference: str | None = None,
    payment_option_id: str | None = None,
    capture: str | None = None,
    purchase: Mapping[str, Any] | None = None,
    step_up: Mapping[str, Any] | None = None,
    customer_token_request: Mapping[str, Any] | None = None,
    payment_request_id: str | None = None,
) -> bytes:
    """The JSON body of an authorize call, compact, in the documented order.

    ``request_payment_transaction`` is sent when ``amount`` is given,
    ``request_customer_token`` when ``customer_token_request`` is.
    """
    body: dict[str, Any] = {"currency": currency}
    if payment_request_id is not None:
        body["payment_request_id"] = payment_request_id
    if amount is not None:
        transaction: dict[str, Any] = {"amount": amount, "payment_transaction_reference": reference}
        if payment_option_id is not None:
            transaction["payment_option_id"] = payment_option_id
        if capture is not None:
            transaction["capture"] = capture
        body["request_payment_transaction"] = transaction
    if purchase is not None:
        body["supplementary_purchase_data"] = purchase
    if step_up is not None:
        body["step_up_config"] = step_up
    if customer_token_request is not None:
        body["request_customer_token"] = customer_token_request
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

    def read(raw: dict[str, Any]) -> AuthorizationResponse:
        return _authorization(raw, status_code, correlation_id)

    return _parsed(read, "authorize", status_code, correlation_id, content)


def _authorization(
    raw: dict[str, Any], status_code: int, correlation_id: str | None
) -> AuthorizationResponse:
    answer = _optional_object(
        raw.get("payment_transaction_response"), "payment_transaction_response"
    )
    token_answer = _optional_object(raw.get("customer_token_response"), "customer_token_response")
    verdict = answer if answer is not None else token_answer
    if verdict is None:
        raise _ShapeError("neither payment_transaction_response nor customer_token_response")
    result = _result(verdict.get("result"))
    transaction = step_up = customer_token = None
    if result is AuthorizationResult.APPROVED:
        if answer is not None:
            found = answer.get("payment_transaction", raw.get("payment_transaction"))
            transaction = _transaction(_object(found, "payment_transaction"))
        if token_answer is not None:
            customer_token = _customer_token(token_answer.get("customer_token"))
    elif result is AuthorizationResult.STEP_UP_REQUIRED:
        # Documented at the top level; older readings put it in the answer.
        found = raw.get("payment_request", verdict.get("payment_request"))
        step_up = None if found is None else payment_request(found)
    return AuthorizationResponse(
        result=result,
        transaction=transaction,
        step_up=step_up,
        result_reason=_optional_str(verdict, "result_reason"),
        correlation_id=correlation_id,
        status_code=status_code,
        raw=raw,
        customer_token=customer_token,
    )


def _result(value: object) -> AuthorizationResult:
    if not isinstance(value, str):
        raise _ShapeError("result is missing or not a string")
    try:
        return AuthorizationResult(value)
    except ValueError:
        raise _ShapeError("unknown result value") from None


def _transaction(data: dict[str, Any]) -> PaymentTransaction:
    captures = data.get("payment_captures", [])
    if not isinstance(captures, list):
        raise _ShapeError("payment_captures is not a list")
    return PaymentTransaction(
        payment_transaction_id=_str(data, "payment_transaction_id"),
        payment_transaction_reference=_str(data, "payment_transaction_reference"),
        amount=_int(data, "amount"),
        currency=_str(data, "currency"),
        payment_funding=_object(data.get("payment_funding", {}), "payment_funding"),
        payment_pricing=_object(data.get("payment_pricing", {}), "payment_pricing"),
        expires_at=_instant(data.get("expires_at"), "expires_at"),
        state=_optional_str(data, "state"),
        payment_captures=tuple(_capture(c) for c in captures),
        raw=data,
    )


def _capture(value: object) -> PaymentCapture:
    data = _object(value, "payment_captures[]")
    return PaymentCapture(
        payment_capture_id=_str(data, "payment_capture_id"),
        amount=_int(data, "amount"),
        captured_at=_instant(data.get("captured_at"), "captured_at"),
        raw=data,
    )


def _customer_token(value: object) -> CustomerToken:
    data = _object(value, "customer_token")
    # Documented as customer_token; one integration reads customer_token_id.
    name = "customer_token" if "customer_token" in data else "customer_token_id"
    scopes = data.get("scopes", [])
    if not isinstance(scopes, list) or not all(isinstance(x, str) for x in scopes):
        raise _ShapeError("customer_token.scopes is not a list of strings")
    return CustomerToken(
        customer_token=_str(data, name),
        customer_token_reference=_optional_str(data, "customer_token_reference"),
        scopes=tuple(scopes),
    )


def payment_request(value: object) -> PaymentRequest:
    """A payment request object, in any of the places Klarna's pages put its parts.

    Raises:
        _ShapeError: no request id anywhere, or a field of the wrong type.
    """
    data = _object(value, "payment_request")
    context = _optional_object(data.get("state_context"), "state_context") or {}
    interaction = (
        _optional_object(context.get("customer_interaction"), "customer_interaction") or {}
    )
    inner_id = _optional_str(interaction, "payment_request_id")
    top_id = _optional_str(data, "payment_request_id")
    request_id = top_id or inner_id
    if not request_id:
        raise _ShapeError("payment_request_id is missing or not a string")
    return PaymentRequest(
        payment_request_id=request_id,
        payment_request_url=_optional_str(interaction, "payment_request_url")
        or _optional_str(data, "payment_request_url"),
        raw=data,
        state=_optional_str(data, "state"),
        method=_optional_str(interaction, "method"),
        expires_at=_instant(data.get("expires_at"), "expires_at"),
        created_at=_instant(data.get("created_at"), "created_at"),
        interaction_payment_request_id=inner_id,
    )


def parse_payment_request(
    status_code: int, correlation_id: str | None, content: bytes
) -> PaymentRequest:
    """Parse a successful answer holding a payment request (e.g. a cancel).

    Raises:
        KlarnaUnexpectedResponse: not a payment request.
    """
    return _parsed(payment_request, "payment request", status_code, correlation_id, content)


def parse_transaction(
    status_code: int, correlation_id: str | None, content: bytes
) -> PaymentTransaction:
    """Parse a successful transaction read.

    Raises:
        KlarnaUnexpectedResponse: not a payment transaction.
    """

    def read(raw: dict[str, Any]) -> PaymentTransaction:
        found = raw.get("payment_transaction", raw)
        return _transaction(_object(found, "payment_transaction"))

    return _parsed(read, "transaction", status_code, correlation_id, content)


def _parsed(
    read: Callable[[dict[str, Any]], T],
    what: str,
    status_code: int,
    correlation_id: str | None,
    content: bytes,
) -> T:
    try:
        raw = decode_object(content)
        if raw is None:
            raise _ShapeError("the body is not a JSON object")
        return read(raw)
    except _ShapeError as exc:
        raise KlarnaUnexpectedResponse(
            f"unexpected {what} answer ({status_code}): {exc}",
            status_code=status_code,
            correlation_id=correlation_id,
        ) from exc


def _optional_object(value: object, name: str) -> dict[str, Any] | None:
    return None if value is None else _object(value, name)


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


def instant(value: object, name: str) -> datetime | None:
    """:func:`_instant` for other modules: raises ``ValueError`` on a bad time."""
    return _instant(value, name)


def _instant(value: object, name: str) -> datetime | None:
    """An RFC 3339 time with an offset, at any fractional precision, in UTC.

    Digits past microseconds are cut, never rounded: ``.999999999`` stays in
    its second. ``t`` and ``z`` may be lower case, as RFC 3339 allows.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise _ShapeError(f"{name} is not a string")
    try:
        instant = datetime.fromisoformat(_SUB_MICROSECOND.sub("", value.upper()))
    except ValueError:
        raise _ShapeError(f"{name} is not an ISO 8601 time") from None
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise _ShapeError(f"{name} has no UTC offset")
    try:
        return instant.astimezone(UTC)
    except OverflowError:
        raise _ShapeError(f"{name} is out of range") from None
