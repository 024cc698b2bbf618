"""The whole journey as Klarna runs it, end to end against FakeKlarna (klarna-api.md §1).

Each test starts where a platform starts: a payment with no payment request,
then ``initiate`` (the initial authorize call), the customer at Klarna,
notifications, and the final authorization, on every store.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from uuid import UUID

import attrs
import httpx
import pytest

from klarna_flow import (
    AsyncKlarnaClient,
    CancelRefused,
    Customer,
    Flow,
    InvalidInput,
    InvalidTransition,
    LineItem,
    OutcomeResult,
    PaymentState,
    StepUpConfig,
    SupplementaryPurchaseData,
    WrongFlow,
)
from klarna_flow.testing import FakeKlarna, ManualClock
from tests._flow_helpers import AMOUNT, CURRENCY, Kit, MakePayments, open_kit

RETURN_URL = "https://shop.example/klarna/return"
PURCHASE = SupplementaryPurchaseData(
    purchase_reference="order-1001",
    line_items=(LineItem(name="Sneakers", quantity=1, unit_price=AMOUNT, total_amount=AMOUNT),),
    customer=Customer(given_name="Ada", family_name="Lovelace", email="ada@example.com"),
)
_refs = itertools.count()


@pytest.fixture
def kit(make_payments: MakePayments, clock: ManualClock) -> Iterator[Kit]:
    with open_kit(make_payments, clock) as kit:
        yield kit


def new_payment(kit: Kit, flow: Flow = Flow.AUTHORIZATION) -> UUID:
    """A payment as a platform creates it: no payment request yet."""
    return kit.payments.create(
        flow=flow, amount=AMOUNT, currency=CURRENCY, reference=f"journey-{next(_refs)}"
    )


def step_up(expiry: timedelta | None = None) -> StepUpConfig:
    return StepUpConfig(return_url=RETURN_URL, interaction_expiry=expiry)


def body(request: httpx.Request) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(request.content)
    return decoded


def authorize_calls(kit: Kit) -> list[httpx.Request]:
    return [r for r in kit.fake.requests if r.url.path.endswith("/payment/authorize")]


def notify(kit: Kit, notification: Any) -> str:
    result = kit.payments.handle_notification(notification.body, notification.headers)
    assert result.status_code == 200, result
    return str(result.outcome)


@attrs.frozen
class SteppedUp:
    payment_id: UUID
    payment_request_id: str


def stepped_up(
    kit: Kit, flow: Flow = Flow.AUTHORIZATION, expiry: timedelta | None = None
) -> SteppedUp:
    payment_id = new_payment(kit, flow)
    outcome = kit.payments.initiate(payment_id, step_up=step_up(expiry), purchase=PURCHASE)
    assert outcome.result is OutcomeResult.STEP_UP_REQUIRED
    assert outcome.payment_request_id is not None
    return SteppedUp(payment_id, outcome.payment_request_id)


# -- step-up, then the final authorization ----------------------------------------------


def test_step_up_then_final_authorization(kit: Kit) -> None:
    journey = stepped_up(kit, expiry=timedelta(minutes=30))
    payment = kit.payments.get(journey.payment_id)
    request = kit.fake.payment_request(journey.payment_request_id)
    url = request["state_context"]["customer_interaction"]["payment_request_url"]

    assert payment.state is PaymentState.CREATED
    assert payment.payment_request_id == journey.payment_request_id
    assert payment.payment_request_url == url
    # Klarna's own deadline (interaction_expiry), not an assumed 3 hours.
    assert payment.request_expires_at == kit.clock.now() + timedelta(minutes=30)

    done = kit.fake.complete_payment_request(journey.payment_request_id)
    assert notify(kit, done.notification) == "applied"
    outcome = kit.payments.authorize(journey.payment_id)

    assert outcome.result is OutcomeResult.APPROVED
    assert kit.payments.get(journey.payment_id).state is PaymentState.AUTHORIZED
    [first, final] = authorize_calls(kit)
    assert "Klarna-Network-Session-Token" not in first.headers
    assert final.headers["Klarna-Network-Session-Token"] == done.session_token
    assert first.headers["Klarna-Idempotency-Key"] != final.headers["Klarna-Idempotency-Key"]
    initial_body, final_body = body(first), body(final)
    assert "step_up_config" in initial_body
    assert "step_up_config" not in final_body
    assert final_body.pop("payment_request_id") == journey.payment_request_id
    del initial_body["step_up_config"]
    assert final_body == initial_body  # "the same request payload"


def test_the_initial_call_sends_what_the_flow_asks_for(kit: Kit) -> None:
    for flow in Flow:
        stepped_up(kit, flow)
    bodies = [body(r) for r in authorize_calls(kit)]

    assert [
        ("request_payment_transaction" in b, "request_customer_token" in b) for b in bodies
    ] == [(flow.authorizes, flow.tokenizes) for flow in Flow]
    assert all(b["supplementary_purchase_data"] == PURCHASE.to_wire() for b in bodies)


# -- the other journeys -----------------------------------------------------------------


def test_initial_approval_with_a_session_token_from_an_earlier_journey(kit: Kit) -> None:
    token = kit.fake.issue_session_token(amount=AMOUNT, currency=CURRENCY)
    payment_id = new_payment(kit)

    outcome = kit.payments.initiate(payment_id, session_token=token)

    assert outcome.result is OutcomeResult.APPROVED
    assert outcome.payment_transaction_id is not None
    assert kit.payments.get(payment_id).state is PaymentState.AUTHORIZED
    [call] = authorize_calls(kit)
    assert call.headers["Klarna-Network-Session-Token"] == token
    assert token not in repr(kit.payments.audit_trail(payment_id))


def test_pure_tokenization_records_the_customer_token_and_never_a_transaction(
    kit: Kit,
) -> None:
    journey = stepped_up(kit, Flow.TOKENIZATION)
    done = kit.fake.complete_payment_request(journey.payment_request_id)
    notify(kit, done.notification)

    payment = kit.payments.get(journey.payment_id)
    assert payment.state is PaymentState.COMPLETED
    assert payment.customer_token is not None
    with pytest.raises(WrongFlow):
        kit.payments.authorize(journey.payment_id)
    assert kit.fake.transactions == []
    assert all("request_payment_transaction" not in body(r) for r in authorize_calls(kit))


def test_pure_tokenization_approved_at_the_initial_call(kit: Kit) -> None:
    payment_id = new_payment(kit, Flow.TOKENIZATION)
    kit.fake.approve_next()

    outcome = kit.payments.initiate(payment_id, step_up=step_up())

    payment = kit.payments.get(payment_id)
    assert outcome.result is OutcomeResult.APPROVED
    assert payment.state is PaymentState.COMPLETED
    assert payment.customer_token is not None
    assert payment.payment_transaction_id is None
    assert "TokenizationApproved" in kit.names(payment_id)


def test_pay_and_tokenize(kit: Kit) -> None:
    journey = stepped_up(kit, Flow.AUTHORIZATION_AND_TOKENIZATION)
    done = kit.fake.complete_payment_request(journey.payment_request_id)
    notify(kit, done.notification)

    outcome = kit.payments.authorize(journey.payment_id)

    payment = kit.payments.get(journey.payment_id)
    assert outcome.result is OutcomeResult.APPROVED
    assert payment.state is PaymentState.AUTHORIZED
    assert payment.customer_token is not None
    assert done.customer_token is not None


def test_declined_at_the_initial_call(kit: Kit) -> None:
    payment_id = new_payment(kit)
    kit.fake.decline_next()

    outcome = kit.payments.initiate(payment_id, step_up=step_up())

    assert outcome.result is OutcomeResult.DECLINED
    assert kit.payments.get(payment_id).state is PaymentState.DECLINED


def test_declined_request_by_webhook(kit: Kit) -> None:
    journey = stepped_up(kit)

    assert notify(kit, kit.fake.decline_payment_request(journey.payment_request_id)) == "applied"

    assert kit.payments.get(journey.payment_id).state is PaymentState.DECLINED


def test_canceled_at_klarna(kit: Kit) -> None:
    journey = stepped_up(kit)

    payment = kit.payments.cancel(journey.payment_id)

    assert payment.state is PaymentState.CANCELED
    assert kit.fake.state_of(journey.payment_request_id) == "CANCELED"
    [delete] = [r for r in kit.fake.requests if r.method == "DELETE"]
    assert delete.url.path.endswith(journey.payment_request_id)
    [*_, canceled] = kit.events(journey.payment_id)
    assert getattr(canceled, "at_klarna", None) is True


def test_a_request_klarna_completed_is_not_canceled_and_nothing_is_recorded(kit: Kit) -> None:
    journey = stepped_up(kit)
    kit.fake.complete_payment_request(journey.payment_request_id)  # webhook not yet here
    before = kit.names(journey.payment_id)

    with pytest.raises(CancelRefused) as refused:
        kit.payments.cancel(journey.payment_id)

    assert refused.value.payment_id == journey.payment_id
    assert kit.names(journey.payment_id) == before
    assert kit.fake.state_of(journey.payment_request_id) == "COMPLETED"


def test_the_request_expires_at_klarna_s_own_expires_at(kit: Kit) -> None:
    journey = stepped_up(kit, expiry=timedelta(minutes=15))

    kit.clock.advance(timedelta(minutes=14, seconds=59))
    assert kit.payments.expire_overdue() == []
    kit.clock.advance(timedelta(seconds=1))
    assert kit.payments.expire_overdue() == [journey.payment_id]

    assert kit.payments.get(journey.payment_id).state is PaymentState.EXPIRED


def test_capture_now_records_the_transaction_as_klarna_returns_it(kit: Kit) -> None:
    token = kit.fake.issue_session_token(amount=AMOUNT, currency=CURRENCY)
    payment_id = new_payment(kit)

    kit.payments.initiate(payment_id, session_token=token, capture="NOW")

    [call] = authorize_calls(kit)
    assert body(call)["request_payment_transaction"]["capture"] == "NOW"
    transaction = kit.payments.get(payment_id).transaction
    assert transaction is not None
    assert transaction["state"] == "COMPLETED"
    assert [c["amount"] for c in transaction["payment_captures"]] == [AMOUNT]


# -- refusals, failures and lost answers ----------------------------------------------------


def test_a_payment_with_an_open_request_is_not_initiated_again(kit: Kit) -> None:
    journey = stepped_up(kit)
    sent = len(kit.fake.requests)

    with pytest.raises(InvalidTransition):
        kit.payments.initiate(journey.payment_id, step_up=step_up())

    assert len(kit.fake.requests) == sent


def test_a_refused_initial_call_reopens_the_payment_for_another(kit: Kit) -> None:
    payment_id = new_payment(kit)
    kit.fake.fail_next(400)

    failed = kit.payments.initiate(payment_id, step_up=step_up())
    again = kit.payments.initiate(payment_id, step_up=step_up())

    assert failed.result is OutcomeResult.FAILED
    assert failed.state is PaymentState.CREATED
    assert again.result is OutcomeResult.STEP_UP_REQUIRED
    assert "InitiationFailed" in kit.names(payment_id)


def test_a_lost_initial_answer_is_resent_with_the_same_key_and_body(kit: Kit) -> None:
    payment_id = new_payment(kit)
    kit.fake.drop_next(after_processing=True)
    kit.fake.drop_next(after_processing=True)
    kit.fake.drop_next(after_processing=True)

    pending = kit.payments.initiate(payment_id, step_up=step_up(), purchase=PURCHASE)
    kit.clock.advance(timedelta(minutes=10))
    [resolved] = kit.payments.reconcile()

    assert pending.result is OutcomeResult.PENDING
    assert resolved.result is OutcomeResult.STEP_UP_REQUIRED
    calls = authorize_calls(kit)
    assert len({r.headers["Klarna-Idempotency-Key"] for r in calls}) == 1
    assert len({r.content for r in calls}) == 1
    assert kit.payments.get(payment_id).payment_request_id == resolved.payment_request_id


def test_the_journey_async(make_payments: MakePayments, clock: ManualClock) -> None:
    asyncio.run(_journey_async(make_payments, clock))


async def _journey_async(make_payments: MakePayments, clock: ManualClock) -> None:
    fake = FakeKlarna(clock=clock)
    async with AsyncKlarnaClient("test-api-key", transport=httpx.MockTransport(fake)) as client:
        payments = make_payments(
            async_klarna=client,
            signing_keys=fake.signing_keys,
            partner_account_id=fake.partner_account_id,
        )
        payment_id = payments.create(
            flow=Flow.AUTHORIZATION, amount=AMOUNT, currency=CURRENCY, reference="async-journey"
        )
        outcome = await payments.initiate_async(payment_id, step_up=step_up())
        assert outcome.payment_request_id is not None
        done = fake.complete_payment_request(outcome.payment_request_id)
        await payments.handle_notification_async(done.notification.body, done.notification.headers)
        final = await payments.authorize_async(payment_id)

        assert final.result is OutcomeResult.APPROVED
        canceled_id = payments.create(
            flow=Flow.AUTHORIZATION, amount=AMOUNT, currency=CURRENCY, reference="async-cancel"
        )
        stepped = await payments.initiate_async(canceled_id, step_up=step_up())
        assert (await payments.cancel_async(canceled_id)).state is PaymentState.CANCELED
        assert stepped.payment_request_id is not None
        assert fake.state_of(stepped.payment_request_id) == "CANCELED"


@pytest.mark.parametrize(
    ("flow", "kwargs", "field"),
    [
        (Flow.AUTHORIZATION, {}, "step_up"),
        (Flow.AUTHORIZATION, {"step_up": {"return_url": RETURN_URL}}, "step_up"),
        (Flow.AUTHORIZATION, {"step_up": step_up(), "purchase": {"line_items": []}}, "purchase"),
        (Flow.AUTHORIZATION, {"step_up": step_up(), "capture": "SOON"}, "capture"),
        (Flow.AUTHORIZATION, {"session_token": "has space"}, "session_token"),
        (Flow.AUTHORIZATION, {"session_token": ""}, "session_token"),
        (Flow.AUTHORIZATION, {"step_up": step_up(), "payment_option_id": ""}, "payment_option_id"),
        (
            Flow.AUTHORIZATION,
            {"step_up": step_up(), "customer_token_scopes": ["payment:customer_present"]},
            "customer_token_scopes",
        ),
        (Flow.TOKENIZATION, {"step_up": step_up(), "capture": "NOW"}, "capture"),
        (Flow.TOKENIZATION, {"step_up": step_up(), "customer_token_scopes": []}, "scopes"),
        (Flow.TOKENIZATION, {"step_up": step_up(), "customer_token_scopes": ["x"]}, "scopes"),
    ],
    ids=repr,
)
def test_bad_input_to_initiate_records_and_sends_nothing(
    kit: Kit, flow: Flow, kwargs: dict[str, Any], field: str
) -> None:
    payment_id = new_payment(kit, flow)

    with pytest.raises(InvalidInput) as refused:
        kit.payments.initiate(payment_id, **kwargs)

    assert refused.value.field == field
    assert kit.names(payment_id) == ["PaymentCreated"]
    assert kit.fake.requests == []


def test_an_absolute_interaction_expiry_too_close_is_refused(kit: Kit) -> None:
    payment_id = new_payment(kit)
    too_soon = StepUpConfig(
        return_url=RETURN_URL, interaction_expiry=kit.clock.now() + timedelta(minutes=5)
    )

    with pytest.raises(InvalidInput, match="15 minutes"):
        kit.payments.initiate(payment_id, step_up=too_soon)

    assert kit.fake.requests == []
