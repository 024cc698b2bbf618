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

import httpx

from klarna_flow.testing._fake_schema import (
    AuthorizeRequest,
    problem,
    read_body,
    step_up_request,
)

__all__ = [
    "CUSTOMER_TOKEN_HEADER",
    "MAX_BODY",
    "SESSION_TOKEN_HEADERS",
    "error_body",
    "error_response",
    "gateway_refusal",
    "invalid",
    "json_response",
    "parse_authorize",
]

MAX_BODY = 1024 * 1024
# Klarna: Partner-Correlation-Id is "<= 255 characters ^[A-Za-z0-9]+$".
_CORRELATION_ID = re.compile(r"[A-Za-z0-9]{1,255}")
# The current name first, then the older ones Klarna's pages still show.
SESSION_TOKEN_HEADERS = (
    "Klarna-Network-Session-Token",
    "Klarna-Payment-Token",
    "Klarna-Interoperability-Token",
)
CUSTOMER_TOKEN_HEADER = "Klarna-Customer-Token"  # noqa: S105 (a header name)

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
    problems = [dict(p) for p in validation_errors]
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


def invalid(parameter: str, reason: str, message: str = "The request is invalid") -> httpx.Response:
    """400 ``VALIDATION_ERROR`` naming one parameter."""
    return error_response(400, "VALIDATION_ERROR", message, [problem(parameter, reason)])


def gateway_refusal(request: httpx.Request, api_key: str) -> httpx.Response | None:
    """What every endpoint checks first: credentials and ``Partner-Correlation-Id``."""
    if request.headers.get("Authorization") != f"Basic {api_key}":
        return error_response(401, "UNAUTHORIZED", "Missing or invalid credentials")
    correlation_id = request.headers.get("Partner-Correlation-Id")
    if correlation_id is not None and not _CORRELATION_ID.fullmatch(correlation_id):
        return invalid("Partner-Correlation-Id", "must be 1..255 letters and digits")
    return None


def parse_authorize(
    request: httpx.Request, partner_account_id: str, api_key: str
) -> AuthorizeRequest | httpx.Response:
    """The checked authorize call, or the error answer Klarna would give."""
    refusal = gateway_refusal(request, api_key)
    if refusal is not None:
        return refusal
    body = request.content
    if len(body) > MAX_BODY:
        return error_response(413, None, "The request body exceeds 1 MB")
    media_type = request.headers.get("Content-Type", "").split(";")[0].strip()
    if media_type.lower() != "application/json":
        return error_response(400, "INVALID_CONTENT_TYPE", "Content-Type must be application/json")
    refusal = _header_refusal(request)
    if refusal is not None:
        return refusal
    return _parse_body(request, partner_account_id)


def _header_refusal(request: httpx.Request) -> httpx.Response | None:
    """The answer to the first header Klarna would refuse, else None."""
    key = request.headers.get("Klarna-Idempotency-Key", "")
    if not 1 <= len(key) <= 255:
        return invalid("Klarna-Idempotency-Key", "is required (1..255 characters)")
    for name in (*SESSION_TOKEN_HEADERS, CUSTOMER_TOKEN_HEADER):
        if name in request.headers and not request.headers[name].strip():
            return invalid(name, "must not be empty")
    return None


def _parse_body(
    request: httpx.Request, partner_account_id: str
) -> AuthorizeRequest | httpx.Response:
    try:
        data = json.loads(request.content)
    except (ValueError, RecursionError):
        return invalid("body", "must be a JSON object")
    body, problems = read_body(data)
    if problems:
        return error_response(400, "VALIDATION_ERROR", "The request is invalid", problems)
    payment = body.get("request_payment_transaction") or {}
    token = body.get("request_customer_token")
    headers = request.headers
    return AuthorizeRequest(
        partner_account_id=partner_account_id,
        session_token=next((headers[h] for h in SESSION_TOKEN_HEADERS if h in headers), None),
        customer_token=headers.get(CUSTOMER_TOKEN_HEADER),
        idempotency_key=headers["Klarna-Idempotency-Key"],
        currency=body["currency"],
        amount=payment.get("amount"),
        reference=payment.get("payment_transaction_reference"),
        capture=payment.get("capture"),
        scopes=None if token is None else tuple(dict.fromkeys(token["scopes"])),
        customer_token_reference=None if token is None else token.get("customer_token_reference"),
        step_up=step_up_request(body),
        payment_request_id=body.get("payment_request_id"),
        body=body,
        canonical_body=json.dumps(body, sort_keys=True).encode(),
    )
