"""FakeKlarna's payment requests after the initial call: cancel over HTTP, expiry by the clock."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest

from klarna_flow import InvalidInput
from klarna_flow.testing import FakeKlarna, ManualClock

from .klarna_support import API_KEY
from .test_klarna_fake_journey import (
    ACCOUNT,
    BASE,
    PAYMENT,
    failure,
    send,
    step_up,
    with_expiry,
)


@pytest.fixture
def http(fake: FakeKlarna) -> Iterator[httpx.Client]:
    with httpx.Client(transport=httpx.MockTransport(fake), base_url="https://fake") as client:
        yield client


def cancel(http: httpx.Client, request_id: str, account: str = ACCOUNT) -> httpx.Response:
    url = f"/v2/accounts/{account}/payment/requests/{request_id}"
    return http.delete(url, headers={"Authorization": f"Basic {API_KEY}"})


# -- cancel and expiry -----------------------------------------------------------------------


@pytest.mark.parametrize("started", [False, True])
def test_cancel_an_open_request(http: httpx.Client, fake: FakeKlarna, started: bool) -> None:
    request_id = step_up(http)
    if started:
        fake.start_payment_request(request_id)

    response = cancel(http, request_id)
    again = cancel(http, request_id)

    assert response.status_code == 200
    assert response.json() == fake.payment_request(request_id)
    assert response.json()["state"] == "CANCELED"
    assert failure(again)[:2] == (409, "RESOURCE_CONFLICT")
    assert [r.method for r in fake.requests] == ["POST", "DELETE", "DELETE"]
    note = fake.request_notification(request_id).json()
    assert note["metadata"]["event_type"] == "payment.request.state-change.canceled"
    assert note["payload"]["previous_state"] == ("IN_PROGRESS" if started else "SUBMITTED")


def test_cancel_a_completed_request_is_a_conflict(http: httpx.Client, fake: FakeKlarna) -> None:
    request_id = step_up(http)
    fake.complete_payment_request(request_id)

    assert failure(cancel(http, request_id))[:2] == (409, "RESOURCE_CONFLICT")
    assert fake.state_of(request_id) == "COMPLETED"


def test_cancel_unknown_or_foreign_requests_is_404(http: httpx.Client, fake: FakeKlarna) -> None:
    foreign = fake.create_payment_request(
        amount=1, currency="USD", partner_account_id="krn:partner:global:account:other"
    )
    unknown = f"krn:payment:eu1:request:{uuid.uuid4()}"

    assert failure(cancel(http, unknown))[:2] == (404, "RESOURCE_NOT_FOUND")
    assert failure(cancel(http, foreign))[:2] == (404, "RESOURCE_NOT_FOUND")
    assert fake.state_of(foreign) == "SUBMITTED"


def test_cancel_needs_credentials(http: httpx.Client, fake: FakeKlarna) -> None:
    request_id = step_up(http)

    response = http.delete(f"{BASE}/requests/{request_id}", headers={"Authorization": "Basic x"})

    assert failure(response)[:2] == (401, "UNAUTHORIZED")
    assert fake.state_of(request_id) == "SUBMITTED"


def test_a_request_expires_on_the_fakes_clock(
    http: httpx.Client, fake: FakeKlarna, clock: ManualClock
) -> None:
    request_id = step_up(http, with_expiry({"duration": "PT15M"}))
    clock.advance(timedelta(minutes=14, seconds=59))
    assert fake.state_of(request_id) == "SUBMITTED"
    clock.advance(timedelta(seconds=1))

    refused = cancel(http, request_id)

    assert fake.state_of(request_id) == "EXPIRED"
    assert failure(refused)[:2] == (409, "RESOURCE_CONFLICT")
    with pytest.raises(InvalidInput):
        fake.complete_payment_request(request_id)
    note = fake.expire_payment_request(request_id).json()
    assert (note["payload"]["state"], note["payload"]["previous_state"]) == ("EXPIRED", "SUBMITTED")
    with pytest.raises(InvalidInput):
        fake.expire_payment_request(request_id)  # notified once


def test_a_completed_request_past_its_expiry_refuses_its_token(
    http: httpx.Client, fake: FakeKlarna, clock: ManualClock
) -> None:
    request_id = step_up(http, with_expiry({"duration": "PT15M"}))
    clock.advance(timedelta(minutes=10))
    token = fake.complete_payment_request(request_id).session_token
    clock.advance(timedelta(minutes=5))  # 5 minutes into the token's 60

    response = send(
        http, {"currency": "USD", "request_payment_transaction": PAYMENT}, session=token
    )

    assert failure(response) == (400, "VALIDATION_ERROR", ["Klarna-Network-Session-Token"])
    assert response.json()["validation_errors"][0]["reason"] == "expired"
    assert fake.state_of(request_id) == "EXPIRED"
