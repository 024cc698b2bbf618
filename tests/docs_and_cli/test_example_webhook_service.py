"""``examples/webhook_service.py`` driven through ``httpx.ASGITransport``.

Klarna's side is FakeKlarna: it signs the notifications posted to the webhook
and answers the authorize calls the service makes (``httpx.MockTransport``).
The service runs on an SQLite file, the embedded default of the examples.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import httpx
import pytest

from examples.webhook_service import create_app
from klarna_flow import Flow, PaymentState
from klarna_flow.klarna import AsyncKlarnaClient
from klarna_flow.testing import ManualClock, SignedNotification
from tests._flow_helpers import API_KEY, RETRY, Kit, MakePayments, open_kit

pytestmark = pytest.mark.parametrize("store", ["sqlite"])

T = TypeVar("T")
S = PaymentState


@pytest.fixture
def kit(make_payments: MakePayments, clock: ManualClock) -> Iterator[Kit]:
    with open_kit(make_payments, clock) as kit:
        yield kit


def call(kit: Kit, scenario: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    """Run ``scenario`` against the service built on the kit's payments."""

    async def main() -> T:
        transport = httpx.MockTransport(kit.fake)
        async with AsyncKlarnaClient(API_KEY, transport=transport, retry=RETRY) as klarna:
            kit.payments.async_klarna = klarna
            app = create_app(kit.payments)
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://service.test"
            ) as http:
                return await scenario(http)

    return asyncio.run(main())


def post_notification(
    kit: Kit, notification: SignedNotification, headers: dict[str, str] | None = None
) -> httpx.Response:
    async def scenario(http: httpx.AsyncClient) -> httpx.Response:
        return await http.post(
            "/webhooks/klarna/",
            content=notification.body,
            headers=notification.headers if headers is None else headers,
        )

    return call(kit, scenario)


def post_authorize(kit: Kit, payment_id: uuid.UUID | str) -> httpx.Response:
    async def scenario(http: httpx.AsyncClient) -> httpx.Response:
        return await http.post(f"/payments/{payment_id}/authorize")

    return call(kit, scenario)


def body(response: httpx.Response) -> dict[str, Any]:
    decoded: dict[str, Any] = response.json()
    return decoded


# -- the webhook ---------------------------------------------------------------------


def test_a_signed_completion_is_acknowledged_and_applied(kit: Kit) -> None:
    created = kit.create()
    done = kit.fake.complete_payment_request(created.payment_request_id)

    response = post_notification(kit, done.notification)

    assert response.status_code == 200
    assert body(response) == {"outcome": "applied", "event_id": done.notification.event_id}
    assert kit.payments.get(created.payment_id).state is S.COMPLETED
    again = post_notification(kit, done.notification)
    assert (again.status_code, body(again)["outcome"]) == (200, "duplicate")


def test_a_bad_signature_is_answered_400(kit: Kit) -> None:
    created = kit.create()
    done = kit.fake.complete_payment_request(created.payment_request_id)
    forged = {**done.notification.headers, "Klarna-Signature": "0" * 64}

    response = post_notification(kit, done.notification, forged)

    assert response.status_code == 400
    assert body(response)["outcome"] == "rejected"
    assert kit.payments.get(created.payment_id).state is S.CREATED


def test_an_unknown_payment_request_is_answered_404_for_klarna_to_retry(kit: Kit) -> None:
    request_id = kit.fake.create_payment_request(amount=100, currency="EUR")
    done = kit.fake.complete_payment_request(request_id)

    response = post_notification(kit, done.notification)

    assert (response.status_code, body(response)["outcome"]) == (404, "unknown_payment")


def test_the_webhook_takes_only_post(kit: Kit) -> None:
    async def scenario(http: httpx.AsyncClient) -> httpx.Response:
        return await http.get("/webhooks/klarna/")

    response = call(kit, scenario)

    assert (response.status_code, response.headers["allow"]) == (405, "POST")


def test_the_webhook_has_a_health_check(kit: Kit) -> None:
    async def scenario(http: httpx.AsyncClient) -> httpx.Response:
        return await http.get("/webhooks/klarna/health")

    response = call(kit, scenario)

    assert (response.status_code, body(response)) == (200, {"status": "ok"})


# -- authorize --------------------------------------------------------------------------


def test_authorize_answers_the_outcome(kit: Kit) -> None:
    created = kit.completed()

    response = post_authorize(kit, created.payment_id)

    assert response.status_code == 200
    [transaction] = kit.fake.transactions
    outcome = body(response)
    assert outcome["payment_id"] == str(created.payment_id)
    assert outcome["result"] == "APPROVED"
    assert outcome["state"] == "AUTHORIZED"
    assert outcome["payment_transaction_id"] == transaction.payment_transaction_id
    assert outcome["error"] is None


def test_authorize_twice_is_a_conflict(kit: Kit) -> None:
    created = kit.completed()
    assert post_authorize(kit, created.payment_id).status_code == 200

    response = post_authorize(kit, created.payment_id)

    assert response.status_code == 409
    assert body(response)["error"] == "InvalidTransition"
    assert body(response)["state"] == "AUTHORIZED"
    assert len(kit.fake.requests) == 1


def test_a_pure_tokenization_payment_is_unprocessable(kit: Kit) -> None:
    created = kit.completed(Flow.TOKENIZATION)

    response = post_authorize(kit, created.payment_id)

    assert response.status_code == 422
    assert body(response)["error"] == "WrongFlow"
    assert kit.fake.requests == []


def test_after_the_window_authorize_is_a_conflict_and_the_payment_expired(kit: Kit) -> None:
    created = kit.completed()
    kit.clock.advance(timedelta(minutes=60))

    response = post_authorize(kit, created.payment_id)

    assert response.status_code == 409
    assert (body(response)["error"], body(response)["state"]) == (
        "AuthorizationWindowElapsed",
        "EXPIRED",
    )
    assert kit.payments.get(created.payment_id).state is S.EXPIRED
    assert kit.fake.requests == []


def test_an_unknown_payment_is_not_found(kit: Kit) -> None:
    assert post_authorize(kit, uuid.uuid4()).status_code == 404
    assert post_authorize(kit, "not-a-uuid").status_code == 404
    assert kit.fake.requests == []


def test_a_pending_outcome_is_accepted(kit: Kit) -> None:
    created = kit.completed()
    for _ in range(RETRY.max_attempts):
        kit.fake.drop_next(after_processing=True)

    response = post_authorize(kit, created.payment_id)

    assert response.status_code == 202
    assert (body(response)["result"], body(response)["error"]) == (
        "PENDING",
        "KlarnaTransportError",
    )


def test_decline_and_step_up_are_outcomes(kit: Kit) -> None:
    declined = kit.completed()
    stepped = kit.completed()
    kit.fake.decline_next()
    decline = post_authorize(kit, declined.payment_id)
    kit.fake.step_up_next()
    step_up = post_authorize(kit, stepped.payment_id)

    assert (decline.status_code, body(decline)["result"]) == (200, "DECLINED")
    assert (step_up.status_code, body(step_up)["result"]) == (200, "STEP_UP_REQUIRED")
    assert body(step_up)["payment_request_url"].startswith("https://")
    assert body(step_up)["payment_request_id"] != stepped.payment_request_id
