"""The shapes FakeKlarna answers with: payment requests, transactions, verdicts.

Pure functions of the fake's records; no state, no locking.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from klarna_flow.testing._fake_records import (
    CustomerTokenRecord,
    PaymentRequestRecord,
    RecordedCapture,
    RecordedTransaction,
)

__all__ = [
    "PAY_URL",
    "capture_wire",
    "customer_token_answer",
    "encode",
    "iso_millis",
    "krn",
    "payment_request",
    "request_tokens",
    "rfc3339_nanos",
    "step_up_answer",
    "transaction_answer",
    "transaction_payload",
    "transaction_resource",
    "verdicts",
]

PAY_URL = "https://pay.test.klarna.com/l/"


def krn(kind: str) -> str:
    """A new payment KRN of ``kind`` (``request``, ``transaction``, ``capture``...)."""
    return f"krn:payment:eu1:{kind}:{uuid.uuid4()}"


def encode(body: dict[str, Any]) -> bytes:
    """Compact JSON, as the fake sends it."""
    return json.dumps(body, separators=(",", ":")).encode()


def rfc3339_nanos(instant: datetime) -> str:
    """RFC 3339 in UTC with nine fraction digits and ``Z`` (``...:34.534721000Z``).

    Klarna's payment request samples carry nanoseconds; a datetime holds
    microseconds, so the last three digits are always zero.
    """
    utc = instant.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond:06d}000Z"


def iso_millis(instant: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and ``Z``, as the fake writes transaction times."""
    text = instant.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def payment_request(record: PaymentRequestRecord, *, tokens: bool = False) -> dict[str, Any]:
    """The payment request object in Klarna's documented shape.

    Args:
        tokens: put a completed request's tokens in ``state_context``
            (``klarna_network_session_token``, ``klarna_customer.customer_token``).
    """
    wire: dict[str, Any] = {
        "payment_request_id": record.payment_request_id,
        "state": record.state,
        "expires_at": rfc3339_nanos(record.expires_at),
        "created_at": rfc3339_nanos(record.created_at),
    }
    if record.reference is not None:
        wire["payment_request_reference"] = record.reference
    context: dict[str, Any] = {
        "customer_interaction": {
            "method": record.method,
            "payment_request_id": record.payment_request_id,
            "payment_request_url": PAY_URL + record.payment_request_id,
        }
    }
    if tokens and record.state == "COMPLETED":
        context |= request_tokens(record)
    wire["state_context"] = context
    return wire


def request_tokens(record: PaymentRequestRecord) -> dict[str, Any]:
    """A completed request's tokens, named and nested as Klarna's notifications carry them."""
    found: dict[str, Any] = {}
    if record.session_token:
        found["klarna_network_session_token"] = record.session_token
    if record.customer_token:
        found["klarna_customer"] = {"customer_token": record.customer_token}
    return found


def capture_wire(capture: RecordedCapture) -> dict[str, Any]:
    """One entry of ``payment_captures``."""
    return {
        "payment_capture_id": capture.payment_capture_id,
        "amount": capture.amount,
        "captured_at": iso_millis(capture.captured_at),
    }


def _captures(transaction: RecordedTransaction) -> list[dict[str, Any]]:
    return [capture_wire(c) for c in transaction.captures]


def transaction_answer(transaction: RecordedTransaction) -> dict[str, Any]:
    """``payment_transaction`` as an approval carries it."""
    wire: dict[str, Any] = {
        "payment_transaction_id": transaction.payment_transaction_id,
        "payment_transaction_reference": transaction.reference,
        "amount": transaction.amount,
        "currency": transaction.currency,
        "state": transaction.state,
        "payment_funding": {"type": "GUARANTEED", "state": "PENDING"},
        "payment_pricing": {"fee_amount": 0, "currency": transaction.currency},
        "expires_at": iso_millis(transaction.expires_at),
    }
    if transaction.captures:
        wire["payment_captures"] = _captures(transaction)
    return wire


def transaction_resource(transaction: RecordedTransaction) -> dict[str, Any]:
    """The transaction as ``GET .../payment/transactions/{id}`` answers it."""
    wire: dict[str, Any] = {
        "payment_transaction_id": transaction.payment_transaction_id,
        "payment_transaction_reference": transaction.reference,
        "amount": transaction.amount,
        "currency": transaction.currency,
        "state": transaction.state,
        "payment_funding": {"type": "GUARANTEED", "state": "PENDING"},
        "payment_captures": _captures(transaction),
        "captured_amount": transaction.captured_amount,
        "expires_at": iso_millis(transaction.expires_at),
    }
    if transaction.payment_request_id is not None:
        wire["payment_request_id"] = transaction.payment_request_id
    return wire


def transaction_payload(transaction: RecordedTransaction) -> dict[str, Any]:
    """The payload of a ``payment.transaction.*`` notification (the fake's choice)."""
    payload: dict[str, Any] = {
        "payment_transaction_id": transaction.payment_transaction_id,
        "payment_transaction_reference": transaction.reference,
    }
    if transaction.payment_request_id is not None:
        payload["payment_request_id"] = transaction.payment_request_id
    return payload | {
        "state": transaction.state,
        "previous_state": transaction.previous_state,
        "amount": transaction.amount,
        "currency": transaction.currency,
        "captured_amount": transaction.captured_amount,
        "expires_at": iso_millis(transaction.expires_at),
    }


def customer_token_answer(token: CustomerTokenRecord) -> dict[str, Any]:
    """``customer_token_response`` of an approval that issued ``token``."""
    issued: dict[str, Any] = {"customer_token": token.customer_token}
    if token.customer_token_reference is not None:
        issued["customer_token_reference"] = token.customer_token_reference
    issued["scopes"] = list(token.scopes)
    return {"result": "APPROVED", "customer_token": issued}


def verdicts(
    result: str, *, payment: bool, customer_token: bool, reason: str | None = None
) -> dict[str, Any]:
    """The ``*_response`` objects carrying ``result`` for what the call asked for."""
    answer: dict[str, Any] = {"result": result}
    if reason is not None:
        answer["result_reason"] = reason
    body: dict[str, Any] = {}
    if payment:
        body["payment_transaction_response"] = answer
    if customer_token:
        body["customer_token_response"] = dict(answer)
    return body


def step_up_answer(
    record: PaymentRequestRecord, *, payment: bool, customer_token: bool
) -> dict[str, Any]:
    """A ``STEP_UP_REQUIRED`` answer naming the new payment request ``record``."""
    body = verdicts("STEP_UP_REQUIRED", payment=payment, customer_token=customer_token)
    return body | {"payment_request": payment_request(record)}
