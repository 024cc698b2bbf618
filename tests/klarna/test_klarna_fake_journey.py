"""FakeKlarna plays the whole journey over plain HTTP, in Klarna's documented shapes.

Initial call (step-up, scripted verdicts, interaction expiry), the customer's
side, the final call, payment-request cancel and expiry by the clock.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from klarna_flow.testing import FakeKlarna, ManualClock

from .klarna_support import API_KEY

ACCOUNT = "krn:partner:global:account:test-partner"
BASE = f"/v2/accounts/{ACCOUNT}/payment"  # relative: in process and on loopback
PAYMENT = {"amount": 11800, "payment_transaction_reference": "order-1"}
INTERACTION = {"method": "HANDOVER", "return_url": "https://shop.example/return"}
STEP_UP = {"payment_request_reference": "session-1", "customer_interaction_config": INTERACTION}
EXPIRY = "step_up_config.customer_interaction_config.interaction_expiry"
BOTH_SCOPES = ["payment:customer_present", "payment:customer_not_present"]


@pytest.fixture
def http(fake: FakeKlarna) -> Iterator[httpx.Client]:
    with httpx.Client(transport=httpx.MockTransport(fake), base_url="https://fake") as client:
        yield client


def initial() -> dict[str, Any]:
    """An initial call's body: USD 11800 with a HANDOVER step-up."""
    return {"currency": "USD", "request_payment_transaction": PAYMENT, "step_up_config": STEP_UP}


def with_expiry(expiry: dict[str, str]) -> dict[str, Any]:
    interaction = {**INTERACTION, "interaction_expiry": expiry}
    return {**initial(), "step_up_config": {"customer_interaction_config": interaction}}


def send(
    http: httpx.Client,
    body: Any,
    *,
    key: str | None = None,
    session: str | None = None,
    customer: str | None = None,
) -> httpx.Response:
    """POST an authorize call with raw JSON ``body`` (a fresh idempotency key by default)."""
    headers = {
        "Authorization": f"Basic {API_KEY}",
        "Content-Type": "application/json",
        "Klarna-Idempotency-Key": key or str(uuid.uuid4()),
    }
    if session is not None:
        headers["Klarna-Network-Session-Token"] = session
    if customer is not None:
        headers["Klarna-Customer-Token"] = customer
    return http.post(f"{BASE}/authorize", headers=headers, content=json.dumps(body))


def failure(response: httpx.Response) -> tuple[int, str, list[str]]:
    """Status, error code and the parameters named in ``validation_errors``."""
    body = response.json()
    named = [p["parameter"] for p in body.get("validation_errors", [])]
    return response.status_code, body["error_code"], named


def step_up(http: httpx.Client, body: Any = None) -> str:
    """Send an initial call that steps up; return the new payment request's id."""
    response = send(http, initial() if body is None else body)
    assert response.json()["payment_transaction_response"] == {"result": "STEP_UP_REQUIRED"}
    return str(response.json()["payment_request"]["payment_request_id"])


# -- the initial call ---------------------------------------------------------------------


def test_initial_call_steps_up_in_klarnas_shape() -> None:
    clock = ManualClock(datetime(2025, 2, 26, 14, 25, 34, 534721, tzinfo=UTC))
    fake = FakeKlarna(clock=clock)
    with httpx.Client(transport=httpx.MockTransport(fake), base_url="https://fake") as http:
        response = send(http, initial())

    assert response.status_code == 200
    answer = response.json()
    request_id = answer["payment_request"]["payment_request_id"]
    assert request_id.startswith("krn:payment:eu1:request:")
    assert answer == {
        "payment_transaction_response": {"result": "STEP_UP_REQUIRED"},
        "payment_request": {
            "payment_request_id": request_id,
            "state": "SUBMITTED",
            "expires_at": "2025-02-26T17:25:34.534721000Z",  # 3 hours, nanosecond fraction
            "created_at": "2025-02-26T14:25:34.534721000Z",
            "payment_request_reference": "session-1",
            "state_context": {
                "customer_interaction": {
                    "method": "HANDOVER",
                    "payment_request_id": request_id,
                    "payment_request_url": f"https://pay.test.klarna.com/l/{request_id}",
                }
            },
        },
    }
    assert fake.payment_request(request_id) == answer["payment_request"]
    assert fake.transactions == []


@pytest.mark.parametrize(
    ("expiry", "expires_at"),
    [
        ({"duration": "PT15M"}, "2025-01-01T12:15:00.000000000Z"),
        ({"duration": "PT48H"}, "2025-01-03T12:00:00.000000000Z"),
        ({"duration": "PT1H30M"}, "2025-01-01T13:30:00.000000000Z"),
        ({"timestamp": "2025-01-02T08:00:00Z"}, "2025-01-02T08:00:00.000000000Z"),
        ({"timestamp": "2025-01-01T15:00:00.123456789+02:00"}, "2025-01-01T13:00:00.123456000Z"),
    ],
)
def test_interaction_expiry_sets_expires_at(
    http: httpx.Client, fake: FakeKlarna, expiry: dict[str, str], expires_at: str
) -> None:
    request_id = step_up(http, with_expiry(expiry))

    assert fake.payment_request(request_id)["expires_at"] == expires_at


@pytest.mark.parametrize(
    "expiry",
    [
        {"duration": "PT14M59S"},
        {"duration": "PT48H1S"},
        {"duration": "P3D"},
        {"duration": "15 minutes"},
        {"timestamp": "2025-01-01T12:10:00Z"},  # 10 minutes ahead
        {"timestamp": "2025-01-03T12:00:01Z"},
        {"timestamp": "2025-01-01T13:00:00"},  # no offset
        {"duration": "PT1H", "timestamp": "2025-01-01T13:00:00Z"},
    ],
)
def test_interaction_expiry_out_of_range_is_400(
    http: httpx.Client, fake: FakeKlarna, expiry: dict[str, str]
) -> None:
    response = send(http, with_expiry(expiry))

    assert failure(response) == (400, "VALIDATION_ERROR", [EXPIRY])


def test_initial_call_without_step_up_config_is_400(http: httpx.Client, fake: FakeKlarna) -> None:
    fake.step_up_next()  # a step-up needs the config: the script waits
    body = {"currency": "USD", "request_payment_transaction": PAYMENT}

    refused = send(http, body)
    stepped_up = send(http, initial())

    assert failure(refused) == (400, "VALIDATION_ERROR", ["step_up_config"])
    assert "required on the initial call" in refused.json()["validation_errors"][0]["reason"]
    assert stepped_up.json()["payment_transaction_response"]["result"] == "STEP_UP_REQUIRED"


def test_neither_a_payment_nor_a_token_requested_is_400(http: httpx.Client) -> None:
    response = send(http, {"currency": "USD", "step_up_config": STEP_UP})

    assert failure(response) == (400, "VALIDATION_ERROR", ["request_payment_transaction"])


@pytest.mark.parametrize(
    ("body", "parameter"),
    [
        ({**initial(), "supplementary_purchase_data": []}, "supplementary_purchase_data"),
        ({**initial(), "request_customer_token": {"scopes": []}}, "request_customer_token.scopes"),
        ({**initial(), "step_up_config": {}}, "step_up_config.customer_interaction_config"),
        (
            {**initial(), "request_payment_transaction": {**PAYMENT, "capture": "LATER_ON"}},
            "request_payment_transaction.capture",
        ),
    ],
)
def test_initial_call_schema_errors(http: httpx.Client, body: Any, parameter: str) -> None:
    assert failure(send(http, body)) == (400, "VALIDATION_ERROR", [parameter])


def test_scripted_approval_of_an_initial_call_with_capture_now(
    http: httpx.Client, fake: FakeKlarna
) -> None:
    fake.approve_next()
    payment = {**PAYMENT, "capture": "NOW", "payment_option_id": "pay-later"}
    body = {"currency": "USD", "request_payment_transaction": payment, "unknown_field": 1}

    answer = send(http, body).json()

    [transaction] = fake.transactions
    [capture] = transaction.captures
    assert capture.payment_capture_id.startswith("krn:payment:eu1:capture:")
    assert answer == {
        "payment_transaction_response": {
            "result": "APPROVED",
            "payment_transaction": {
                "payment_transaction_id": transaction.payment_transaction_id,
                "payment_transaction_reference": "order-1",
                "amount": 11800,
                "currency": "USD",
                "state": "COMPLETED",
                "payment_funding": {"type": "GUARANTEED", "state": "PENDING"},
                "payment_pricing": {"fee_amount": 0, "currency": "USD"},
                "expires_at": "2025-01-29T12:00:00.000Z",
                "payment_captures": [
                    {
                        "payment_capture_id": capture.payment_capture_id,
                        "amount": 11800,
                        "captured_at": "2025-01-01T12:00:00.000Z",
                    }
                ],
            },
        }
    }
    assert (transaction.state, transaction.captured_amount) == ("COMPLETED", 11800)
    assert (transaction.session_token, transaction.payment_request_id) == (None, None)


def test_scripted_decline_of_an_initial_call(http: httpx.Client, fake: FakeKlarna) -> None:
    fake.decline_next("RISK")

    answer = send(http, initial()).json()

    assert answer == {
        "payment_transaction_response": {"result": "DECLINED", "result_reason": "RISK"}
    }
    assert fake.transactions == []
    assert fake.customer_tokens == []


def test_tokenization_approval_issues_a_customer_token(
    http: httpx.Client, fake: FakeKlarna
) -> None:
    fake.approve_next()
    wanted = {"scopes": BOTH_SCOPES, "customer_token_reference": "customer-7"}

    answer = send(http, {"currency": "EUR", "request_customer_token": wanted}).json()

    [stored] = fake.customer_tokens
    assert stored.customer_token.startswith("krn:customer-token:")
    assert answer == {
        "customer_token_response": {
            "result": "APPROVED",
            "customer_token": {
                "customer_token": stored.customer_token,
                "customer_token_reference": "customer-7",
                "scopes": BOTH_SCOPES,
            },
        }
    }
    assert (stored.scopes, stored.revoked) == (tuple(BOTH_SCOPES), False)
    assert stored.customer_token not in repr(fake.customer_tokens)
    assert fake.transactions == []


def test_pay_and_tokenize_steps_up_and_completes_with_both_tokens(
    http: httpx.Client, fake: FakeKlarna
) -> None:
    body = {**initial(), "request_customer_token": {"scopes": ["payment:customer_present"]}}

    answer = send(http, body).json()
    request_id = answer["payment_request"]["payment_request_id"]
    completed = fake.complete_payment_request(request_id)

    assert answer["payment_transaction_response"] == {"result": "STEP_UP_REQUIRED"}
    assert answer["customer_token_response"] == {"result": "STEP_UP_REQUIRED"}
    assert completed.session_token is not None
    [stored] = fake.customer_tokens
    assert (stored.customer_token, stored.scopes) == (
        completed.customer_token,
        ("payment:customer_present",),
    )


def test_initial_call_replays_by_idempotency_key(http: httpx.Client) -> None:
    first = send(http, initial(), key="initial-1")
    again = send(http, initial(), key="initial-1")
    other = send(http, {**initial(), "currency": "EUR"}, key="initial-1")

    assert again.json() == first.json()  # the same payment request, not a second one
    assert failure(other)[:2] == (409, "RESOURCE_CONFLICT")


# -- the customer's side and the final call -------------------------------------------------


def test_the_whole_journey(http: httpx.Client, fake: FakeKlarna, clock: ManualClock) -> None:
    request_id = step_up(http)
    clock.advance(timedelta(minutes=5))
    started = fake.start_payment_request(request_id)
    completed = fake.complete_payment_request(request_id)
    assert completed.session_token is not None
    final_body = {
        "currency": "USD",
        "request_payment_transaction": PAYMENT,
        "payment_request_id": request_id,
    }

    answer = send(http, final_body, session=completed.session_token).json()

    assert started.json()["metadata"]["event_type"] == "payment.request.state-change.in-progress"
    assert started.json()["payload"]["previous_state"] == "SUBMITTED"
    result = answer["payment_transaction_response"]
    assert (result["result"], result["payment_transaction"]["state"]) == ("APPROVED", "AUTHORIZED")
    [transaction] = fake.transactions
    assert transaction.payment_request_id == request_id
    assert transaction.session_token == "krn:payment:eu1:klarna-network-session-token:****"
    assert fake.payment_request(request_id)["state"] == "COMPLETED"


def test_final_call_naming_another_payment_request_is_400(
    http: httpx.Client, fake: FakeKlarna
) -> None:
    request_id = step_up(http)
    token = fake.complete_payment_request(request_id).session_token
    other = step_up(http)
    body = {"currency": "USD", "request_payment_transaction": PAYMENT}

    refused = send(http, {**body, "payment_request_id": other}, session=token)
    approved = send(http, {**body, "payment_request_id": request_id}, session=token)

    assert failure(refused) == (400, "VALIDATION_ERROR", ["payment_request_id"])
    assert approved.json()["payment_transaction_response"]["result"] == "APPROVED"


def test_final_call_must_omit_step_up_config(http: httpx.Client, fake: FakeKlarna) -> None:
    token = fake.complete_payment_request(step_up(http)).session_token

    response = send(http, initial(), session=token)

    assert failure(response) == (400, "VALIDATION_ERROR", ["step_up_config"])
    assert "omitted on the final call" in response.json()["validation_errors"][0]["reason"]
    assert fake.transactions == []


def test_final_call_honours_capture_now(http: httpx.Client, fake: FakeKlarna) -> None:
    token = fake.complete_payment_request(step_up(http)).session_token
    body = {"currency": "USD", "request_payment_transaction": {**PAYMENT, "capture": "NOW"}}

    answer = send(http, body, session=token).json()

    transaction = answer["payment_transaction_response"]["payment_transaction"]
    assert transaction["state"] == "COMPLETED"
    assert [c["amount"] for c in transaction["payment_captures"]] == [11800]


def test_an_express_session_token_is_approved_on_the_initial_call(
    http: httpx.Client, fake: FakeKlarna
) -> None:
    token = fake.issue_session_token(amount=11800, currency="USD")

    answer = send(http, initial(), session=token).json()
    mismatch = send(http, {**initial(), "currency": "EUR"}, session=token)

    assert answer["payment_transaction_response"]["result"] == "APPROVED"
    assert failure(mismatch)[:2] == (409, "RESOURCE_CONFLICT")  # the token is used up
