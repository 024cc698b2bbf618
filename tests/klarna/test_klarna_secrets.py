"""Secrets (API key, session token) never reach a log line, a repr or an error."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from klarna_flow import KlarnaError, KlarnaTransportError, KlarnaValidationError
from klarna_flow.klarna import KlarnaClient
from klarna_flow.testing import FakeKlarna, ManualClock

from .klarna_support import FAST, call_args

SECRET_KEY = "sk-live-do-not-leak-0123456789"


@pytest.fixture
def fake(clock: ManualClock) -> FakeKlarna:
    return FakeKlarna(clock=clock, api_key=SECRET_KEY)


@pytest.fixture
def client(fake: FakeKlarna) -> KlarnaClient:
    return KlarnaClient(SECRET_KEY, transport=httpx.MockTransport(fake), retry=FAST)


def secrets_of(token: str) -> list[str]:
    # The token's random tail is its secret part; the KRN prefix is not.
    return [SECRET_KEY, token, token.rsplit(":", 1)[1]]


def test_logs_hold_no_secret(
    caplog: pytest.LogCaptureFixture, fake: FakeKlarna, client: KlarnaClient, token: str
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx's included
    fake.fail_next(503)
    fake.fail_next(429, retry_after=0)
    with client:
        client.authorize(**call_args(fake, token))
        with pytest.raises(KlarnaError):
            client.authorize(**call_args(fake, token, reference="other"))  # reuse: 409
        fake.drop_next()
        fake.drop_next()
        fake.drop_next()
        with pytest.raises(KlarnaTransportError):
            client.authorize(**call_args(fake, token))

    assert any(r.name == "klarna_flow.klarna" for r in caplog.records)
    logged = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    for secret in secrets_of(token):
        assert secret not in logged
    assert "krn:payment:eu1:klarna-network-session-token:****" in caplog.text


def test_every_attempt_is_logged(
    caplog: pytest.LogCaptureFixture, fake: FakeKlarna, client: KlarnaClient, token: str
) -> None:
    caplog.set_level(logging.INFO, logger="klarna_flow.klarna")
    fake.fail_next(500, times=2)
    with client:
        client.authorize(**call_args(fake, token))

    attempts = [r for r in caplog.records if r.name == "klarna_flow.klarna"]
    assert [r.__dict__["klarna_attempt"] for r in attempts] == [1, 2, 3]
    assert "500 INTERNAL_ERROR, retrying" in attempts[0].getMessage()
    assert "200 APPROVED" in attempts[2].getMessage()
    assert all(r.__dict__["klarna_correlation_id"] for r in attempts)


def test_echoed_secrets_are_masked_in_errors(
    fake: FakeKlarna, client: KlarnaClient, token: str
) -> None:
    echo = {
        "error_code": "VALIDATION_ERROR",
        "error_message": f"bad token {token} for key {SECRET_KEY}",
        "validation_errors": [{"parameter": "token", "reason": f"{token} is odd"}],
        "echo": {"Authorization": f"Basic {SECRET_KEY}"},
    }
    fake.respond_next(400, json.dumps(echo).encode())

    with client, pytest.raises(KlarnaValidationError) as caught:
        client.authorize(**call_args(fake, token))

    error = caught.value
    shown = [str(error), repr(error), repr(vars(error))]
    for secret in secrets_of(token):
        assert all(secret not in text for text in shown)
    assert error.error_message == "bad token **** for key ****"


def test_reprs_hold_no_secret(fake: FakeKlarna, client: KlarnaClient) -> None:
    completed = fake.complete_payment_request(
        fake.create_payment_request(
            amount=100, currency="EUR", flow="AUTHORIZATION_AND_TOKENIZATION"
        )
    )
    with client:
        client.authorize(
            **call_args(fake, completed.session_token or "", amount=100, currency="EUR")
        )
    shown = repr(client) + repr(completed) + repr(fake.transactions) + repr(fake)

    assert SECRET_KEY not in shown
    assert completed.session_token
    assert completed.session_token not in shown
    assert completed.customer_token
    assert completed.customer_token not in shown
