"""The request on the wire is exactly the one Klarna documents."""

from __future__ import annotations

import json

import httpx

from klarna_flow.klarna import KlarnaClient
from klarna_flow.testing import FakeKlarna

from .klarna_support import API_KEY, REFERENCE, Caller

EXPECTED_BODY = {
    "currency": "USD",
    "request_payment_transaction": {
        "amount": 11800,
        "payment_transaction_reference": REFERENCE,
    },
}


def test_the_spec_example_is_sent_exactly(in_process: Caller, fake: FakeKlarna, token: str) -> None:
    authorize = in_process.client()

    authorize(**in_process.args(token, idempotency_key="key-1", correlation_id="corr1"))

    [sent] = fake.requests
    assert sent.method == "POST"
    assert str(sent.url) == (
        "https://api-global.test.klarna.com/v2/accounts/"
        "krn:partner:global:account:test-partner/payment/authorize"
    )
    assert dict(sent.headers) == {
        "host": "api-global.test.klarna.com",
        "accept": "application/json",
        "accept-encoding": "gzip, deflate",
        "connection": "keep-alive",
        "content-length": str(len(sent.content)),
        "authorization": f"Basic {API_KEY}",
        "content-type": "application/json",
        "klarna-network-session-token": token,
        "klarna-idempotency-key": "key-1",
        "partner-correlation-id": "corr1",
        "user-agent": f"klarna-flow/{_version()}",
    }
    assert json.loads(sent.content) == EXPECTED_BODY


def test_partner_correlation_id_is_optional(fake: FakeKlarna, token: str) -> None:
    with KlarnaClient(API_KEY, transport=httpx.MockTransport(fake)) as client:
        client.authorize(
            partner_account_id=fake.partner_account_id,
            session_token=token,
            currency="USD",
            amount=11800,
            reference=REFERENCE,
            idempotency_key="key-2",
        )

    assert "Partner-Correlation-Id" not in fake.requests[0].headers


def test_account_krn_is_kept_readable_in_the_path(fake: FakeKlarna) -> None:
    account = "krn:partner:global:account:with/slash?and#hash"
    token = fake.issue_session_token(amount=100, currency="EUR", partner_account_id=account)
    with KlarnaClient(API_KEY, transport=httpx.MockTransport(fake)) as client:
        answer = client.authorize(
            partner_account_id=account,
            session_token=token,
            currency="EUR",
            amount=100,
            reference="r",
            idempotency_key="key-3",
        )

    assert answer.transaction is not None
    assert fake.requests[0].url.raw_path.startswith(
        b"/v2/accounts/krn:partner:global:account:with%2Fslash%3Fand%23hash/"
    )


def _version() -> str:
    from importlib.metadata import version

    return version("klarna-flow")
