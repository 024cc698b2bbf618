"""The client contract: one suite, run on sync/async x in-process/loopback.

Everything is observed on FakeKlarna's state (its requests and transactions),
never on mocks.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from klarna_flow import (
    KlarnaAPIError,
    KlarnaAuthenticationError,
    KlarnaBlocked,
    KlarnaConflict,
    KlarnaNotFound,
    KlarnaRateLimited,
    KlarnaServerError,
    KlarnaTransportError,
    KlarnaUnexpectedResponse,
    KlarnaValidationError,
)
from klarna_flow.klarna import AuthorizationResult, RetryPolicy
from klarna_flow.testing import FakeKlarna, ManualClock

from .klarna_support import REFERENCE, Caller


def keys_sent(fake: FakeKlarna) -> list[str | None]:
    return [r.headers.get("Klarna-Idempotency-Key") for r in fake.requests]


# -- the three results ------------------------------------------------------------


def test_approved_answer_carries_the_transaction(caller: Caller, token: str) -> None:
    answer = caller.authorize(token)

    assert answer.result is AuthorizationResult.APPROVED
    assert answer.status_code == 200
    assert answer.correlation_id
    transaction = answer.transaction
    assert transaction is not None
    assert transaction.payment_transaction_id.startswith("krn:payment:eu1:transaction:")
    assert (transaction.amount, transaction.currency) == (11800, "USD")
    assert transaction.payment_transaction_reference == REFERENCE
    assert transaction.payment_funding == {"type": "GUARANTEED", "state": "PENDING"}
    assert transaction.expires_at is not None
    assert transaction.expires_at.utcoffset() == timedelta(0)
    assert answer.step_up is None
    [recorded] = caller.fake.transactions_for(REFERENCE)
    assert recorded.payment_transaction_id == transaction.payment_transaction_id


def test_declined_answer_has_no_transaction(caller: Caller, token: str) -> None:
    caller.fake.decline_next(reason="RISK")

    answer = caller.authorize(token)

    assert answer.result is AuthorizationResult.DECLINED
    assert answer.result_reason == "RISK"
    assert answer.transaction is None
    assert caller.fake.transactions == []


def approved_body(expires_at: str) -> bytes:
    transaction = {
        "payment_transaction_id": "krn:payment:eu1:transaction:t-1",
        "payment_transaction_reference": REFERENCE,
        "amount": 11800,
        "currency": "USD",
        "expires_at": expires_at,
    }
    answer = {"result": "APPROVED", "payment_transaction": transaction}
    return json.dumps({"payment_transaction_response": answer}).encode()


@pytest.mark.parametrize(
    ("expires_at", "expected"),
    [
        ("2025-02-26T17:25:34.534721775Z", datetime(2025, 2, 26, 17, 25, 34, 534721, UTC)),
        # Cut, never rounded into the next second.
        ("2025-02-26T17:25:34.999999999Z", datetime(2025, 2, 26, 17, 25, 34, 999999, UTC)),
        ("2025-02-26T17:25:34Z", datetime(2025, 2, 26, 17, 25, 34, tzinfo=UTC)),
        ("2025-02-26T17:25:34+00:00", datetime(2025, 2, 26, 17, 25, 34, tzinfo=UTC)),
        ("2025-02-26T18:25:34.5+01:00", datetime(2025, 2, 26, 17, 25, 34, 500000, UTC)),
        ("2025-02-26t17:25:34.534721775z", datetime(2025, 2, 26, 17, 25, 34, 534721, UTC)),
    ],
)
def test_expires_at_is_read_at_any_fractional_precision(
    caller: Caller, token: str, expires_at: str, expected: datetime
) -> None:
    caller.fake.respond_next(200, approved_body(expires_at))

    answer = caller.authorize(token)

    assert answer.transaction is not None
    assert answer.transaction.expires_at == expected


def test_step_up_answer_names_a_new_payment_request(caller: Caller, token: str) -> None:
    caller.fake.step_up_next()

    answer = caller.authorize(token)

    assert answer.result is AuthorizationResult.STEP_UP_REQUIRED
    assert answer.step_up is not None
    new_request = answer.step_up.payment_request_id
    assert new_request.startswith("krn:payment:eu1:request:")
    assert answer.step_up.payment_request_url
    assert caller.fake.state_of(new_request) == "SUBMITTED"
    assert caller.fake.transactions == []


# -- each error family ----------------------------------------------------------------


def test_400_bad_terms_is_a_validation_error(caller: Caller, token: str) -> None:
    with pytest.raises(KlarnaValidationError) as caught:
        caller.authorize(token, amount=11801)

    assert caught.value.status_code == 400
    assert caught.value.error_code == "VALIDATION_ERROR"
    assert caught.value.validation_errors[0]["parameter"] == "request_payment_transaction.amount"
    assert caught.value.correlation_id
    assert len(caller.fake.requests) == 1, "a 400 is never retried"


def test_401_wrong_api_key(caller: Caller, token: str) -> None:
    authorize = caller.client(api_key="not-the-key")

    with pytest.raises(KlarnaAuthenticationError) as caught:
        authorize(**caller.args(token))

    assert (caught.value.status_code, caught.value.error_code) == (401, "UNAUTHORIZED")
    assert caught.value.correlation_id
    assert len(caller.fake.requests) == 1


def test_403_token_of_another_account(caller: Caller) -> None:
    other = "krn:partner:global:account:other-partner"
    token = caller.fake.issue_session_token(amount=11800, currency="USD", partner_account_id=other)

    with pytest.raises(KlarnaAuthenticationError) as caught:
        caller.authorize(token)

    assert (caught.value.status_code, caught.value.error_code) == (403, "OPERATION_FORBIDDEN")


@pytest.mark.parametrize("body", [b"", b"<html>Forbidden</html>", b"{}"])
def test_403_without_an_error_object_is_blocked_not_unauthenticated(
    caller: Caller, token: str, body: bytes
) -> None:
    """Klarna's DDoS protection answers 403 without its error object."""
    caller.fake.respond_next(403, body)

    with pytest.raises(KlarnaBlocked) as caught:
        caller.authorize(token)

    assert not isinstance(caught.value, KlarnaAuthenticationError | PermissionError)
    assert caught.value.status_code == 403
    assert caught.value.error_code is None
    assert len(caller.fake.requests) == 1, "never retried"


def test_404_unknown_token(caller: Caller) -> None:
    unknown = f"krn:payment:eu1:klarna-network-session-token:{uuid.uuid4()}"

    with pytest.raises(KlarnaNotFound) as caught:
        caller.authorize(unknown)

    assert (caught.value.status_code, caught.value.error_code) == (404, "RESOURCE_NOT_FOUND")


def test_the_same_token_sent_again_replays_the_original_result(caller: Caller, token: str) -> None:
    first = caller.authorize(token)

    again = caller.authorize(token)  # a new idempotency key, the same request

    assert first.transaction is not None
    assert again.transaction is not None
    assert again.transaction.payment_transaction_id == first.transaction.payment_transaction_id
    assert len(caller.fake.transactions) == 1


def test_409_a_used_token_for_another_request_is_refused(caller: Caller, token: str) -> None:
    first = caller.authorize(token)

    with pytest.raises(KlarnaConflict) as caught:
        caller.authorize(token, reference="another-reference")

    assert (caught.value.status_code, caught.value.error_code) == (409, "RESOURCE_CONFLICT")
    assert caught.value.correlation_id
    assert first.transaction is not None
    assert len(caller.fake.transactions) == 1


def test_413_is_a_validation_error(caller: Caller, token: str) -> None:
    caller.fake.fail_next(413)

    with pytest.raises(KlarnaValidationError) as caught:
        caller.authorize(token)

    assert caught.value.status_code == 413


def test_429_exhausted_keeps_retry_after(caller: Caller, token: str) -> None:
    caller.fake.fail_next(429, retry_after=2, times=3)

    with pytest.raises(KlarnaRateLimited) as caught:
        caller.authorize(token)

    assert caught.value.retry_after == 2.0
    assert caught.value.error_code == "RATE_LIMITED"
    assert len(caller.fake.requests) == 3


def test_429_exhausted_keeps_x_ratelimit_reset(caller: Caller, token: str) -> None:
    caller.fake.fail_next(429, ratelimit_reset=2, times=3)

    with pytest.raises(KlarnaRateLimited) as caught:
        caller.authorize(token)

    assert caught.value.retry_after == 2.0
    assert len(caller.fake.requests) == 3


def test_x_ratelimit_reset_is_waited_before_the_retry(caller: Caller, token: str) -> None:
    caller.fake.fail_next(429, ratelimit_reset="0.2")
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.001, max_backoff=0.5, jitter=False)
    authorize = caller.client(retry=policy)

    started = time.monotonic()
    answer = authorize(**caller.args(token))

    assert time.monotonic() - started >= 0.2
    assert answer.result is AuthorizationResult.APPROVED


@pytest.mark.parametrize(("offset", "low", "high"), [(3600, 3500, 3601), (-3600, 0, 0)])
def test_x_ratelimit_reset_as_a_unix_time(
    caller: Caller, token: str, offset: int, low: float, high: float
) -> None:
    """Its unit is not documented: a Unix time is read too, and capped by the policy."""
    caller.fake.fail_next(429, ratelimit_reset=int(time.time()) + offset, times=3)

    started = time.monotonic()
    with pytest.raises(KlarnaRateLimited) as caught:
        caller.authorize(token)

    assert caught.value.retry_after is not None
    assert low <= caught.value.retry_after <= high
    assert time.monotonic() - started < 2, "never waits longer than max_backoff"
    assert len(caller.fake.requests) == 3


def test_429_with_retry_after_then_success(caller: Caller, token: str) -> None:
    caller.fake.fail_next(429, retry_after=0)

    answer = caller.authorize(token)

    assert answer.result is AuthorizationResult.APPROVED
    assert len(caller.fake.requests) == 2


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_exhausted_is_a_server_error(caller: Caller, token: str, status: int) -> None:
    caller.fake.fail_next(status, times=3)

    with pytest.raises(KlarnaServerError) as caught:
        caller.authorize(token)

    assert caught.value.status_code == status
    assert caught.value.correlation_id
    assert len(caller.fake.requests) == 3
    assert caller.fake.transactions == []


def test_unlisted_4xx_is_an_api_error_not_retried(caller: Caller, token: str) -> None:
    caller.fake.fail_next(422, "UNPROCESSABLE")

    with pytest.raises(KlarnaAPIError) as caught:
        caller.authorize(token)

    assert (caught.value.status_code, caught.value.error_code) == (422, "UNPROCESSABLE")
    assert len(caller.fake.requests) == 1


def test_dropped_connections_exhausted(caller: Caller, token: str) -> None:
    for _ in range(3):
        caller.fake.drop_next()

    with pytest.raises(KlarnaTransportError) as caught:
        caller.authorize(token)

    assert caught.value.correlation_id is None  # no answer, no Klarna id
    assert len(caller.fake.requests) == 3
    assert caller.fake.transactions == []


@pytest.mark.parametrize(
    "body",
    [
        b"<html>502 Bad Gateway</html>",
        b'{"payment_transaction_response": {"result": "MAYBE"}}',
        b'{"payment_transaction_response": {"result": "APPROVED"}}',
        b"[]",
    ],
    ids=["not-json", "unknown-result", "approved-without-transaction", "not-an-object"],
)
def test_unreadable_success_is_unexpected(caller: Caller, token: str, body: bytes) -> None:
    caller.fake.respond_next(200, body)

    with pytest.raises(KlarnaUnexpectedResponse) as caught:
        caller.authorize(token)

    assert caught.value.status_code == 200
    assert caught.value.correlation_id
    assert len(caller.fake.requests) == 1, "Klarna may have acted: never retried blindly"


def test_older_error_envelope_is_understood(caller: Caller, token: str) -> None:
    older = {"correlation_id": "old-id", "error_messages": ["amount is wrong", "and more"]}
    caller.fake.respond_next(400, json.dumps(older).encode())

    with pytest.raises(KlarnaValidationError) as caught:
        caller.authorize(token)

    assert caught.value.error_message == "amount is wrong; and more"
    assert caught.value.validation_errors == ({"reason": "amount is wrong"}, {"reason": "and more"})
    assert caught.value.correlation_id  # the header's id wins over the body's


def test_errors_array_is_read_into_validation_errors(caller: Caller, token: str) -> None:
    """The Klarna Network error page's shape: errors[] of {parameter, error_message, doc_url}."""
    problem = {
        "parameter": "request_payment_transaction.amount",
        "error_message": "must be positive",
        "doc_url": "https://docs.klarna.com/api/errors/",
    }
    body = {"error_code": "VALIDATION_ERROR", "errors": [problem]}
    caller.fake.respond_next(400, json.dumps(body).encode())

    with pytest.raises(KlarnaValidationError) as caught:
        caller.authorize(token)

    assert caught.value.validation_errors == ({**problem, "reason": "must be positive"},)
    assert caught.value.error_message == "must be positive"


# -- Partner-Correlation-Id --------------------------------------------------------------

PAYMENT_ID = uuid.UUID("0f8e2a4c-1b3d-4e5f-8a9b-0c1d2e3f4a5b")


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("Payment42", "Payment42"),
        (str(PAYMENT_ID), PAYMENT_ID.hex),
        (str(PAYMENT_ID).upper(), PAYMENT_ID.hex),
    ],
)
def test_partner_correlation_id_is_sent_alphanumeric(
    caller: Caller, token: str, given: str, sent: str
) -> None:
    """Klarna: "<= 255 characters ^[A-Za-z0-9]+$"; a UUID goes as its hex."""
    answer = caller.authorize(token, correlation_id=given)

    assert answer.result is AuthorizationResult.APPROVED
    [request] = caller.fake.requests
    assert request.headers["Partner-Correlation-Id"] == sent


# -- retries and idempotency --------------------------------------------------------


def test_retry_then_success_reuses_key_and_body(caller: Caller, token: str) -> None:
    caller.fake.fail_next(503, times=2)
    args = caller.args(token)

    answer = caller.client()(**args)

    assert answer.result is AuthorizationResult.APPROVED
    requests = caller.fake.requests
    assert keys_sent(caller.fake) == [args["idempotency_key"]] * 3
    assert len({r.content for r in requests}) == 1
    assert len(caller.fake.transactions) == 1


def test_lost_answer_after_klarna_acted_is_replayed(caller: Caller, token: str) -> None:
    caller.fake.drop_next(after_processing=True)

    answer = caller.authorize(token)

    assert answer.result is AuthorizationResult.APPROVED
    [transaction] = caller.fake.transactions
    assert answer.transaction is not None
    assert answer.transaction.payment_transaction_id == transaction.payment_transaction_id
    assert len(caller.fake.requests) == 2


def test_timeout_after_klarna_acted_is_replayed(caller: Caller, token: str) -> None:
    caller.fake.timeout_next()

    answer = caller.authorize(token)

    assert answer.result is AuthorizationResult.APPROVED
    assert len(caller.fake.transactions) == 1
    assert len(set(keys_sent(caller.fake))) == 1


def test_same_key_replays_the_original_answer(caller: Caller, token: str) -> None:
    authorize = caller.client()
    args = caller.args(token)

    first = authorize(**args)
    again = authorize(**args)

    assert again.raw == first.raw
    assert again.transaction == first.transaction
    assert again.correlation_id != first.correlation_id
    assert len(caller.fake.transactions) == 1


def test_same_key_with_a_different_body_is_a_conflict(caller: Caller, token: str) -> None:
    authorize = caller.client()
    args = caller.args(token)
    authorize(**args)

    with pytest.raises(KlarnaConflict):
        authorize(**(args | {"reference": "another-reference"}))

    assert len(caller.fake.transactions) == 1


def test_retry_policy_of_one_attempt_never_retries(caller: Caller, token: str) -> None:
    caller.fake.fail_next(503)
    authorize = caller.client(retry=RetryPolicy(max_attempts=1))

    with pytest.raises(KlarnaServerError):
        authorize(**caller.args(token))

    assert len(caller.fake.requests) == 1


# -- token life ------------------------------------------------------------------------


def test_token_works_until_its_60th_minute(caller: Caller, token: str, clock: ManualClock) -> None:
    clock.advance(timedelta(minutes=59, seconds=59))

    assert caller.authorize(token).result is AuthorizationResult.APPROVED


def test_token_expires_60_minutes_after_completion(
    caller: Caller, token: str, clock: ManualClock
) -> None:
    clock.advance(timedelta(minutes=60))

    with pytest.raises(KlarnaValidationError) as caught:
        caller.authorize(token)

    assert caught.value.error_code == "VALIDATION_ERROR"
    [problem] = caught.value.validation_errors
    assert problem == {"parameter": "Klarna-Network-Session-Token", "reason": "expired"}
    assert caller.fake.transactions == []
