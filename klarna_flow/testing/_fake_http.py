"""FakeKlarna's HTTP surface: request checks and answers in Klarna's envelope.

The checks run in the order a gateway would: authentication, size, content
type, required headers, then the body's schema. Each failure is answered the
way Klarna documents it (current error envelope, ``Klarna-Correlation-Id``).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import httpx

from klarna_flow._shared.secrets import mask
from klarna_flow._shared.validation import ISO_4217

__all__ = [
    "MAX_BODY",
    "AuthorizeRequest",
    "error_response",
    "json_response",
    "parse_authorize",
]

MAX_BODY = 1024 * 1024
# Klarna: Partner-Correlation-Id is "<= 255 characters ^[A-Za-z0-9]+$".
_CORRELATION_ID = re.compile(r"[A-Za-z0-9]{1,255}")
TOKEN_HEADERS = ("Klarna-Network-Session-Token", "Klarna-Payment-Token")

DEFAULT_CODES = {
    400: "VALIDATION_ERROR",
    401: "UNAUTHORIZED",
    403: "OPERATION_FORBIDDEN",
    404: "RESOURCE_NOT_FOUND",
    409: "RESOURCE_CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
}
_ERROR_TYPES = {400: "INPUT_ERROR", 413: "INPUT_ERROR", 401: "ACCESS_ERROR"}
_ERROR_TYPES |= {403: "ACCESS_ERROR", 404: "RESOURCE_ERROR", 409: "RESOURCE_ERROR"}


def _masked(value: str) -> str:
    return repr(mask(value))


@attrs.frozen
class AuthorizeRequest:
    """An authorize call that passed the gateway checks."""

    partner_account_id: str
    session_token: str = attrs.field(repr=_masked)
    idempotency_key: str
    currency: str
    amount: int
    reference: str
    canonical_body: bytes = attrs.field(repr=False)

    @property
    def fingerprint(self) -> tuple[str, str, bytes]:
        """What must match for an idempotent replay: account, token, body."""
        return (self.partner_account_id, self.session_token, self.canonical_body)


def json_response(
    status_code: int, body: bytes, headers: Iterable[tuple[str, str]] = ()
) -> httpx.Response:
    """An answer with a JSON body and a fresh ``Klarna-Correlation-Id``."""
    return httpx.Response(
        status_code,
        headers=[
            ("Content-Type", "application/json"),
            ("Klarna-Correlation-Id", str(uuid.uuid4())),
            *headers,
        ],
        content=body,
    )


def error_body(
    status_code: int,
    error_code: str | None = None,
    message: str | None = None,
    validation_errors: Iterable[Mapping[str, str]] = (),
) -> bytes:
    """Klarna's current error envelope."""
    code = (
        error_code
        or DEFAULT_CODES.get(status_code)
        or ("TECHNICAL_ERROR" if status_code >= 500 else "BAD_REQUEST")
    )
    body: dict[str, Any] = {
        "error_id": str(uuid.uuid4()),
        "error_type": _ERROR_TYPES.get(status_code, "TECHNICAL_ERROR"),
        "error_code": code,
        "error_message": message or code.replace("_", " ").capitalize(),
        "doc_url": "https://docs.klarna.com/api/errors/",
    }
    problems = [dict(problem) for problem in validation_errors]
    if problems:
        body["validation_errors"] = problems
    return json.dumps(body, separators=(",", ":")).encode()


def error_response(
    status_code: int,
    error_code: str | None = None,
    message: str | None = None,
    validation_errors: Iterable[Mapping[str, str]] = (),
) -> httpx.Response:
    """An error answer in the current envelope."""
    return json_response(
        status_code, error_body(status_code, error_code, message, validation_errors)
    )


def _invalid(parameter: str, reason: str) -> httpx.Response:
    return error_response(
        400, "VALIDATION_ERROR", "The request is invalid", [_problem(parameter, reason)]
    )


def _problem(parameter: str, reason: str) -> dict[str, str]:
    return {"parameter": parameter, "reason": reason}


def parse_authorize(
    request: httpx.Request, partner_account_id: str, api_key: str
) -> AuthorizeRequest | httpx.Response:
    """The checked authorize call, or the error answer Klarna would give."""
    if request.headers.get("Authorization") != f"Basic {api_key}":
        return error_response(401, "UNAUTHORIZED", "Missing or invalid credentials")
    body = request.content
    if len(body) > MAX_BODY:
        return error_response(413, None, "The request body exceeds 1 MB")
    media_type = request.headers.get("Content-Type", "").split(";")[0].strip()
    if media_type.lower() != "application/json":
        return error_response(400, "INVALID_CONTENT_TYPE", "Content-Type must be application/json")
    token = next((request.headers[h] for h in TOKEN_HEADERS if h in request.headers), "")
    key = request.headers.get("Klarna-Idempotency-Key", "")
    problem = _header_problem(request, token, key)
    if problem is not None:
        return _invalid(*problem)
    return _parse_body(body, partner_account_id, token, key)


def _header_problem(request: httpx.Request, token: str, key: str) -> tuple[str, str] | None:
    """The (parameter, reason) of the first header Klarna would refuse, else None."""
    if not token:
        return TOKEN_HEADERS[0], "is required"
    if not 1 <= len(key) <= 255:
        return "Klarna-Idempotency-Key", "is required (1..255 characters)"
    correlation_id = request.headers.get("Partner-Correlation-Id")
    if correlation_id is not None and not _CORRELATION_ID.fullmatch(correlation_id):
        return "Partner-Correlation-Id", "must be 1..255 letters and digits"
    return None


def _parse_body(
    body: bytes, partner_account_id: str, token: str, key: str
) -> AuthorizeRequest | httpx.Response:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return _invalid("body", "must be a JSON object")
    problems = _schema_problems(data)
    if problems:
        return error_response(400, "VALIDATION_ERROR", "The request is invalid", problems)
    payment = data["request_payment_transaction"]
    return AuthorizeRequest(
        partner_account_id=partner_account_id,
        session_token=token,
        idempotency_key=key,
        currency=data["currency"],
        amount=payment["amount"],
        reference=payment["payment_transaction_reference"],
        canonical_body=json.dumps(data, sort_keys=True).encode(),
    )


def _schema_problems(data: object) -> list[dict[str, str]]:
    if not isinstance(data, dict):
        return [_problem("body", "must be a JSON object")]
    problems = []
    currency = data.get("currency")
    if not isinstance(currency, str) or currency not in ISO_4217:
        problems.append(_problem("currency", "must be an ISO 4217 currency code"))
    payment = data.get("request_payment_transaction")
    if not isinstance(payment, dict):
        return [*problems, _problem("request_payment_transaction", "is required")]
    amount = payment.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        problems.append(
            _problem("request_payment_transaction.amount", "must be a positive integer")
        )
    reference = payment.get("payment_transaction_reference")
    if not isinstance(reference, str) or not 1 <= len(reference) <= 255:
        problems.append(
            _problem(
                "request_payment_transaction.payment_transaction_reference",
                "must be a string of 1..255 characters",
            )
        )
    return problems
