"""The client contract for the whole journey, per shape in klarna-api.md §§2-4, 8.

Every test runs on sync/async x in-process/loopback (the ``caller`` axis).
Where Klarna's pages disagree, both sides are here: the body the client
sends is read back from FakeKlarna's recorded requests, the answers are
either the fake's own or a scripted raw body in the documented shape.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from klarna_flow import (
    Address,
    Customer,
    KlarnaConflict,
    KlarnaNotFound,
    KlarnaUnexpectedResponse,
    LineItem,
    Shipment,
    StepUpConfig,
    SupplementaryPurchaseData,
)
from klarna_flow.klarna import AuthorizationResult, CustomerTokenRequest, CustomerTokenScope

from .klarna_support import REFERENCE, Caller

REQUEST_ID = "krn:payment:eu1:request:top-level"
INNER_ID = "krn:payment:eu1:request:inner"
URL = "https://pay.klarna.com/l/abc"
NANOS = "2025-02-26T17:25:34.534721775Z"
PURCHASE = SupplementaryPurchaseData(
    purchase_reference="order-9",
    line_items=(LineItem(name="Lamp", quantity=2, unit_price=5900, total_amount=11800),),
    customer=Customer(
        given_name="Ada",
        family_name="Lovelace",
        email="ada@example.com",
        address=Address(street_address="1 Main St", postal_code="10001", city="NY", country="US"),
    ),
    shipping=(Shipment(address=Address(city="Boston", country="US")),),
    extra={"partner_note": "kept as given"},
)


def initial(caller: Caller, **overrides: Any) -> Any:
    args: dict[str, Any] = {
        "partner_account_id": caller.fake.partner_account_id,
        "currency": "USD",
        "amount": 11800,
        "reference": REFERENCE,
        "idempotency_key": str(uuid.uuid4()),
        "step_up": StepUpConfig(return_url="https://shop.example/back"),
    }
    return caller.client()(**(args | overrides))


def sent(caller: Caller) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(caller.fake.requests[-1].content)
    return decoded


def step_up_answer(payment_request: dict[str, Any], *, nested: bool = False) -> bytes:
    answer: dict[str, Any] = {"result": "STEP_UP_REQUIRED"}
    if nested:
        answer["payment_request"] = payment_request
        return json.dumps({"payment_transaction_response": answer}).encode()
    body = {"payment_transaction_response": answer, "payment_request": payment_request}
    return json.dumps(body).encode()


# -- what the client sends ----------------------------------------------------------------


def test_the_initial_call_sends_the_documented_body_and_no_session_token(caller: Caller) -> None:
    initial(
        caller,
        purchase=PURCHASE,
        capture="NOW",
        payment_option_id="opt-1",
        step_up=StepUpConfig(
            return_url="https://shop.example/back",
            app_return_url="shop://back",
            method="SDK",
            interaction_expiry=timedelta(minutes=90),
            payment_request_reference="session-7",
        ),
    )

    request = caller.fake.requests[-1]
    assert "Klarna-Network-Session-Token" not in request.headers
    assert sent(caller) == {
        "currency": "USD",
        "request_payment_transaction": {
            "amount": 11800,
            "payment_transaction_reference": REFERENCE,
            "payment_option_id": "opt-1",
            "capture": "NOW",
        },
        "supplementary_purchase_data": {
            "purchase_reference": "order-9",
            "line_items": [
                {"name": "Lamp", "quantity": 2, "unit_price": 5900, "total_amount": 11800}
            ],
            "customer": {
                "given_name": "Ada",
                "family_name": "Lovelace",
                "email": "ada@example.com",
                "address": {
                    "street_address": "1 Main St",
                    "postal_code": "10001",
                    "city": "NY",
                    "country": "US",
                },
            },
            "shipping": [{"address": {"city": "Boston", "country": "US"}}],
            "partner_note": "kept as given",
        },
        "step_up_config": {
            "payment_request_reference": "session-7",
            "customer_interaction_config": {
                "method": "SDK",
                "return_url": "https://shop.example/back",
                "app_return_url": "shop://back",
                "interaction_expiry": {"duration": "PT1H30M"},
            },
        },
    }


def test_an_absolute_interaction_expiry_is_sent_as_a_timestamp(caller: Caller) -> None:
    at = (caller.fake.clock.now() + timedelta(hours=2)).replace(microsecond=0)
    initial(caller, step_up=StepUpConfig(return_url="https://s.example/", interaction_expiry=at))

    interaction = sent(caller)["step_up_config"]["customer_interaction_config"]
    stamp = at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    assert interaction["interaction_expiry"] == {"timestamp": stamp}


def test_pure_tokenization_sends_only_the_token_request(caller: Caller) -> None:
    initial(
        caller,
        amount=None,
        reference=None,
        customer_token_request=CustomerTokenRequest(
            scopes=(CustomerTokenScope.CUSTOMER_PRESENT,), customer_token_reference="tok-1"
        ),
    )

    body = sent(caller)
    assert "request_payment_transaction" not in body
    assert body["request_customer_token"] == {
        "scopes": ["payment:customer_present"],
        "customer_token_reference": "tok-1",
    }


def test_the_final_call_names_the_request_and_carries_the_token(caller: Caller) -> None:
    request_id = caller.fake.create_payment_request(amount=11800, currency="USD")
    token = caller.fake.complete_payment_request(request_id).session_token
    assert token is not None

    answer = caller.authorize(token, payment_request_id=request_id)

    request = caller.fake.requests[-1]
    assert answer.result is AuthorizationResult.APPROVED
    assert request.headers["Klarna-Network-Session-Token"] == token
    assert sent(caller)["payment_request_id"] == request_id
    assert "step_up_config" not in sent(caller)


def test_a_token_charge_sends_the_customer_token_header(caller: Caller) -> None:
    caller.fake.respond_next(200, step_up_answer({"payment_request_id": REQUEST_ID}))
    initial(caller, customer_token="krn:customer-token:abc", step_up=None)

    assert caller.fake.requests[-1].headers["Klarna-Customer-Token"] == "krn:customer-token:abc"


# -- what the client reads: the step-up's payment request, every documented place -----------


@pytest.mark.parametrize("nested", [False, True], ids=["top-level", "inside-the-answer"])
def test_the_step_up_request_is_read_from_the_documented_shape(
    caller: Caller, nested: bool
) -> None:
    payment_request = {
        "payment_request_id": REQUEST_ID,
        "state": "SUBMITTED",
        "expires_at": NANOS,
        "created_at": "2025-02-26T14:25:34.1Z",
        "state_context": {
            "customer_interaction": {
                "method": "HANDOVER",
                "payment_request_id": INNER_ID,
                "payment_request_url": URL,
            }
        },
        "unknown_field": {"kept": True},
    }
    caller.fake.respond_next(200, step_up_answer(payment_request, nested=nested))

    answer = initial(caller)

    assert answer.result is AuthorizationResult.STEP_UP_REQUIRED
    step_up = answer.step_up
    assert step_up is not None
    assert step_up.payment_request_id == REQUEST_ID  # the top-level id is preferred
    assert step_up.interaction_payment_request_id == INNER_ID  # and the other is kept
    assert step_up.payment_request_url == URL
    assert step_up.method == "HANDOVER"
    assert step_up.state == "SUBMITTED"
    assert step_up.expires_at == datetime(2025, 2, 26, 17, 25, 34, 534721, UTC)
    assert step_up.raw["unknown_field"] == {"kept": True}


def test_the_older_reading_of_the_step_up_request_is_accepted(caller: Caller) -> None:
    older = {"payment_request_id": REQUEST_ID, "payment_request_url": URL}
    caller.fake.respond_next(200, step_up_answer(older))

    step_up = initial(caller).step_up

    assert step_up is not None
    assert (step_up.payment_request_id, step_up.payment_request_url) == (REQUEST_ID, URL)
    assert step_up.expires_at is None


def test_the_id_inside_customer_interaction_is_enough(caller: Caller) -> None:
    inner_only = {"state_context": {"customer_interaction": {"payment_request_id": INNER_ID}}}
    caller.fake.respond_next(200, step_up_answer(inner_only))

    step_up = initial(caller).step_up

    assert step_up is not None
    assert step_up.payment_request_id == INNER_ID


def test_a_step_up_request_without_any_id_is_unexpected(caller: Caller) -> None:
    caller.fake.respond_next(200, step_up_answer({"state": "SUBMITTED"}))

    with pytest.raises(KlarnaUnexpectedResponse, match="payment_request_id"):
        initial(caller)


# -- tokens and transactions in the answer ------------------------------------------------------


@pytest.mark.parametrize("name", ["customer_token", "customer_token_id"])
def test_the_customer_token_is_read_by_either_name(caller: Caller, name: str) -> None:
    secret = "krn:customer-token:s3cr3t"
    body = {
        "customer_token_response": {
            "result": "APPROVED",
            "customer_token": {
                name: secret,
                "customer_token_reference": "tok-1",
                "scopes": ["payment:customer_not_present"],
            },
        }
    }
    caller.fake.respond_next(200, json.dumps(body).encode())

    answer = initial(
        caller, amount=None, reference=None, customer_token_request=CustomerTokenRequest()
    )

    assert answer.result is AuthorizationResult.APPROVED
    assert answer.transaction is None
    assert answer.customer_token is not None
    assert answer.customer_token.customer_token == secret
    assert answer.customer_token.scopes == ("payment:customer_not_present",)
    assert "s3cr3t" not in repr(answer)


def test_an_answer_with_neither_verdict_is_unexpected(caller: Caller) -> None:
    caller.fake.respond_next(200, b'{"something": "else"}')

    with pytest.raises(KlarnaUnexpectedResponse):
        initial(caller)


def test_capture_now_captures_are_read(caller: Caller) -> None:
    transaction = {
        "payment_transaction_id": "krn:payment:eu1:transaction:t-9",
        "payment_transaction_reference": REFERENCE,
        "amount": 11800,
        "currency": "USD",
        "state": "COMPLETED",
        "payment_funding": {"type": "GUARANTEED", "state": "PENDING"},
        "payment_captures": [
            {
                "payment_capture_id": "krn:payment:eu1:capture:c-1",
                "amount": 11800,
                "captured_at": NANOS,
            }
        ],
    }
    body = {
        "payment_transaction_response": {"result": "APPROVED", "payment_transaction": transaction}
    }
    caller.fake.respond_next(200, json.dumps(body).encode())

    answer = initial(caller, capture="NOW")

    assert answer.transaction is not None
    assert answer.transaction.state == "COMPLETED"
    [capture] = answer.transaction.payment_captures
    assert capture.payment_capture_id == "krn:payment:eu1:capture:c-1"
    assert answer.transaction.captured_amount == 11800


# -- cancel and read -------------------------------------------------------------------------


def stepped_up_request(caller: Caller) -> str:
    answer = initial(caller)
    assert answer.step_up is not None
    return str(answer.step_up.payment_request_id)


def test_cancel_answers_the_canceled_request(caller: Caller) -> None:
    request_id = stepped_up_request(caller)

    canceled = caller.method("cancel_payment_request")(
        partner_account_id=caller.fake.partner_account_id, payment_request_id=request_id
    )

    delete = caller.fake.requests[-1]
    assert delete.method == "DELETE"
    assert delete.content == b""
    assert canceled.payment_request_id == request_id
    assert canceled.state == "CANCELED"
    assert caller.fake.state_of(request_id) == "CANCELED"


def test_cancel_of_a_completed_request_is_a_conflict(caller: Caller) -> None:
    request_id = stepped_up_request(caller)
    caller.fake.complete_payment_request(request_id)

    with pytest.raises(KlarnaConflict):
        caller.method("cancel_payment_request")(
            partner_account_id=caller.fake.partner_account_id, payment_request_id=request_id
        )


def test_cancel_of_an_unknown_request_is_not_found(caller: Caller) -> None:
    with pytest.raises(KlarnaNotFound):
        caller.method("cancel_payment_request")(
            partner_account_id=caller.fake.partner_account_id,
            payment_request_id="krn:payment:eu1:request:nobody",
        )


def test_a_transaction_is_read(caller: Caller, token: str) -> None:
    approved = caller.authorize(token)
    assert approved.transaction is not None

    read = caller.method("read_transaction")(
        partner_account_id=caller.fake.partner_account_id,
        payment_transaction_id=approved.transaction.payment_transaction_id,
    )

    assert caller.fake.requests[-1].method == "GET"
    assert read.payment_transaction_id == approved.transaction.payment_transaction_id
    assert read.state == "AUTHORIZED"
    assert (read.amount, read.currency) == (11800, "USD")


def test_an_unknown_transaction_is_not_found(caller: Caller) -> None:
    with pytest.raises(KlarnaNotFound):
        caller.method("read_transaction")(
            partner_account_id=caller.fake.partner_account_id,
            payment_transaction_id="krn:payment:eu1:transaction:nobody",
        )
