"""The client contract: one suite, run on sync/async x in-process/loopback.

Everything is observed on FakeKlarna's state (its requests and transactions),
never on mocks.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest

from klarna_flow import (
    KlarnaAPIError,
    KlarnaAuthenticationError,
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
    assert transaction.payment_funding == {"type": "GUARANTEED"}
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


def test_step_up_answer_names_a_new_payment_request(caller: Caller, token: str) -> None:
    caller.fake.step_up_next()

    answer = caller.authorize(token)

    assert answer.result is AuthorizationResult.STEP_UP_REQUIRED
    assert answer.step_up is not None
    new_request = answer.step_up.payment_request_id
    assert new_request.startswith("krn:payment:eu1:payment-request:")
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
    assert caught.value.correlation_id  # the header's id wins over the body's


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
