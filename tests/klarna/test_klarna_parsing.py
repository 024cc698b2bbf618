"""Answers and failures are turned into typed results or typed errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from klarna_flow import (
    KlarnaAPIError,
    KlarnaAuthenticationError,
    KlarnaBlocked,
    KlarnaConflict,
    KlarnaNotFound,
    KlarnaRateLimited,
    KlarnaServerError,
    KlarnaTimeout,
    KlarnaTransportError,
    KlarnaUnexpectedResponse,
    KlarnaValidationError,
)
from klarna_flow.klarna import AuthorizationResult
from klarna_flow.klarna._failures import (
    api_error,
    parse_ratelimit_reset,
    parse_retry_after,
    transport_error,
)
from klarna_flow.klarna._wire import parse_authorization

APPROVED: dict[str, Any] = {
    "payment_transaction_response": {
        "result": "APPROVED",
        "payment_transaction": {
            "payment_transaction_id": "krn:payment:eu1:transaction:1",
            "payment_transaction_reference": "ref",
            "amount": 11800,
            "currency": "USD",
            "payment_funding": {"type": "NON_GUARANTEED"},
            "payment_pricing": {"rate": 1},
            "expires_at": "2025-02-01T10:00:00.123+02:00",
            "future_field": [1, 2],
        },
        "future_flag": True,
    },
    "top_level_extra": "kept",
}


def encode(value: object) -> bytes:
    return json.dumps(value).encode()


def test_approval_keeps_unknown_fields_and_converts_to_utc() -> None:
    answer = parse_authorization(200, "cid", encode(APPROVED))

    assert answer.result is AuthorizationResult.APPROVED
    assert answer.raw == APPROVED
    assert answer.transaction is not None
    assert answer.transaction.expires_at == datetime(2025, 2, 1, 8, 0, 0, 123000, tzinfo=UTC)
    assert answer.transaction.payment_funding == {"type": "NON_GUARANTEED"}
    assert answer.correlation_id == "cid"


def test_step_up_inside_the_transaction_response_is_found() -> None:
    body = {
        "payment_transaction_response": {
            "result": "STEP_UP_REQUIRED",
            "payment_request": {"payment_request_id": "krn:payment:eu1:payment-request:2"},
        }
    }

    answer = parse_authorization(200, None, encode(body))

    assert answer.step_up is not None
    assert answer.step_up.payment_request_id == "krn:payment:eu1:payment-request:2"
    assert answer.step_up.payment_request_url is None


def test_step_up_without_a_payment_request_is_tolerated() -> None:
    body = {"payment_transaction_response": {"result": "STEP_UP_REQUIRED"}}

    assert parse_authorization(200, None, encode(body)).step_up is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", "11800"),
        ("amount", True),
        ("currency", None),
        ("payment_funding", []),
        ("expires_at", "tomorrow"),
        ("expires_at", "2025-02-01T10:00:00"),
        ("expires_at", 1738400000),
    ],
)
def test_malformed_transaction_is_unexpected(field: str, value: object) -> None:
    body = json.loads(json.dumps(APPROVED))
    body["payment_transaction_response"]["payment_transaction"][field] = value

    with pytest.raises(KlarnaUnexpectedResponse) as caught:
        parse_authorization(200, "cid", encode(body))

    assert field in str(caught.value)
    assert caught.value.correlation_id == "cid"


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, KlarnaValidationError),
        (413, KlarnaValidationError),
        (401, KlarnaAuthenticationError),
        (403, KlarnaAuthenticationError),
        (404, KlarnaNotFound),
        (409, KlarnaConflict),
        (429, KlarnaRateLimited),
        (500, KlarnaServerError),
        (503, KlarnaServerError),
        (599, KlarnaServerError),
        (418, KlarnaAPIError),
    ],
)
def test_status_maps_to_its_error_class(status: int, error_class: type[Exception]) -> None:
    body = {
        "error_id": "e-1",
        "error_type": "INPUT_ERROR",
        "error_code": "SOME_CODE",
        "error_message": "explained",
        "doc_url": "https://docs.klarna.com/",
        "validation_errors": [{"parameter": "amount", "reason": "bad"}, "junk"],
    }

    error = api_error(status, {"Klarna-Correlation-Id": "cid"}, encode(body))

    assert type(error) is error_class
    assert isinstance(error, KlarnaAPIError)
    assert (error.status_code, error.error_code, error.error_id) == (status, "SOME_CODE", "e-1")
    assert error.validation_errors == ({"parameter": "amount", "reason": "bad"},)
    assert error.correlation_id == "cid"


def test_all_three_problem_shapes_are_read_together() -> None:
    body = {
        "validation_errors": [{"parameter": "currency", "reason": "unknown"}],
        "errors": [
            {"parameter": "amount", "error_message": "too big", "doc_url": "https://d/"},
            {"parameter": "x", "reason": "kept", "error_message": "not copied"},
            "junk",
        ],
        "error_messages": ["older text", 7],
    }

    error = api_error(400, {}, encode(body))

    assert isinstance(error, KlarnaAPIError)
    assert error.validation_errors == (
        {"parameter": "currency", "reason": "unknown"},
        {
            "parameter": "amount",
            "error_message": "too big",
            "doc_url": "https://d/",
            "reason": "too big",
        },
        {"parameter": "x", "reason": "kept", "error_message": "not copied"},
        {"reason": "older text"},
    )
    assert error.error_message == "older text"


@pytest.mark.parametrize(
    ("body", "error_class"),
    [
        (b"", KlarnaBlocked),
        (b"Forbidden", KlarnaBlocked),
        (b'{"message": "blocked"}', KlarnaBlocked),
        (b'{"error_code": "OPERATION_FORBIDDEN"}', KlarnaAuthenticationError),
        (b'{"error_messages": ["forbidden"]}', KlarnaAuthenticationError),
        (b'{"errors": []}', KlarnaAuthenticationError),
    ],
)
def test_403_is_blocked_unless_it_carries_an_error_object(
    body: bytes, error_class: type[Exception]
) -> None:
    error = api_error(403, {}, body)

    assert type(error) is error_class
    assert error.may_have_acted is False


@pytest.mark.parametrize("status", [100, 204, 302, 600])
def test_status_outside_errors_is_unexpected(status: int) -> None:
    error = api_error(status, {}, b"")

    assert isinstance(error, KlarnaUnexpectedResponse)
    assert error.status_code == status


def test_older_envelope_gives_message_and_correlation_id() -> None:
    body = {"correlation_id": "old-cid", "error_messages": ["one", 2, "two"]}

    error = api_error(400, {}, encode(body))

    assert isinstance(error, KlarnaAPIError)
    assert (error.error_message, error.correlation_id) == ("one; two", "old-cid")


def test_non_json_error_body_keeps_the_status_family() -> None:
    error = api_error(502, {"Klarna-Correlation-Id": "cid"}, b"<html>bad gateway</html>")

    assert isinstance(error, KlarnaServerError)
    assert error.body is None


NOW = datetime(2025, 1, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("3", 3.0),
        (" 1.5 ", 1.5),
        ("-4", 0.0),
        ("Wed, 01 Jan 2025 12:00:30 GMT", 30.0),
        ("Wed, 01 Jan 2025 11:00:00 GMT", 0.0),
        ("soon", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_retry_after_reads_seconds_and_http_dates(
    header: str | None, seconds: float | None
) -> None:
    assert parse_retry_after(header, NOW) == seconds


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("3", 3.0),
        (" 0.25 ", 0.25),
        ("-4", 0.0),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        (str(NOW.timestamp() + 30), 30.0),  # a Unix time
        (str(int(NOW.timestamp()) - 30), 0.0),  # a Unix time gone by
        ("999999999", 999999999.0),  # just under the Unix-time reading: seconds
    ],
)
def test_ratelimit_reset_reads_seconds_and_unix_times(
    header: str | None, seconds: float | None
) -> None:
    assert parse_ratelimit_reset(header, NOW) == seconds


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"X-Ratelimit-Reset": "4"}, 4.0),
        ({"Retry-After": "2", "X-Ratelimit-Reset": "4"}, 4.0),
        ({"Retry-After": "5", "X-Ratelimit-Reset": "4"}, 5.0),
        ({"Retry-After": "soon", "X-Ratelimit-Reset": "later"}, None),
    ],
)
def test_429_honours_either_header_and_the_longer_wait(
    headers: dict[str, str], seconds: float | None
) -> None:
    error = api_error(429, headers, b"", now=NOW)

    assert isinstance(error, KlarnaRateLimited)
    assert error.retry_after == seconds


def test_429_carries_retry_after() -> None:
    error = api_error(429, {"Retry-After": "7"}, b"")

    assert isinstance(error, KlarnaRateLimited)
    assert error.retry_after == 7.0


@pytest.mark.parametrize(
    ("failure", "error_class"),
    [
        (httpx.ConnectError("refused"), KlarnaTransportError),
        (httpx.RemoteProtocolError("closed"), KlarnaTransportError),
        (httpx.ReadTimeout("slow"), KlarnaTimeout),
        (httpx.ConnectTimeout("slow"), KlarnaTimeout),
        (httpx.DecodingError("gzip"), KlarnaUnexpectedResponse),
    ],
)
def test_httpx_failures_are_translated(
    failure: httpx.HTTPError, error_class: type[Exception]
) -> None:
    error = transport_error(failure)

    assert type(error) is error_class
    assert isinstance(error, TimeoutError) == (error_class is KlarnaTimeout)
