"""Customer-token charges, the transaction as Klarna reports it, and the resolution ladder.

klarna-api.md §§5-8 and design.md ("never an orphaned transaction", "after
authorization"), end to end against FakeKlarna on every store.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from uuid import UUID

import httpx
import pytest

from klarna_flow import (
    CustomerTokenScope,
    Flow,
    InvalidInput,
    InvalidTransition,
    KlarnaUnexpectedResponse,
    MissingToken,
    OutcomeResult,
    PaymentState,
    StepUpConfig,
    WrongFlow,
)
from klarna_flow.testing import ManualClock
from tests._flow_helpers import AMOUNT, CURRENCY, Kit, MakePayments, open_kit

RETURN_URL = "https://shop.example/klarna/return"
_refs = itertools.count()


@pytest.fixture
def kit(make_payments: MakePayments, clock: ManualClock) -> Iterator[Kit]:
    with open_kit(make_payments, clock) as kit:
        yield kit


def reference() -> str:
    return f"tx-{next(_refs)}"


def authorize_calls(kit: Kit) -> list[httpx.Request]:
    return [r for r in kit.fake.requests if r.url.path.endswith("/payment/authorize")]


def body(request: httpx.Request) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(request.content)
    return decoded


def deliver(kit: Kit, notification: Any) -> Any:
    return kit.payments.handle_notification(notification.body, notification.headers)


def tokenized(kit: Kit) -> tuple[UUID, str]:
    """A completed pure tokenization payment and its customer token (at the fake)."""
    payment_id = kit.payments.create(
        flow=Flow.TOKENIZATION, amount=AMOUNT, currency=CURRENCY, reference=reference()
    )
    outcome = kit.payments.initiate(
        payment_id,
        step_up=StepUpConfig(return_url=RETURN_URL),
        customer_token_scopes=[
            CustomerTokenScope.CUSTOMER_NOT_PRESENT,
            CustomerTokenScope.CUSTOMER_PRESENT,
        ],
    )
    assert outcome.payment_request_id is not None
    done = kit.fake.complete_payment_request(outcome.payment_request_id)
    assert deliver(kit, done.notification).status_code == 200
    assert done.customer_token is not None
    return payment_id, done.customer_token


def charge(kit: Kit, **kwargs: Any) -> UUID:
    return kit.payments.create(
        flow=Flow.AUTHORIZATION, amount=AMOUNT, currency=CURRENCY, reference=reference(), **kwargs
    )


def pending_final(kit: Kit) -> UUID:
    """A payment whose final authorization reached Klarna but whose answer was lost."""
    created = kit.completed()
    for _ in range(3):
        kit.fake.drop_next(after_processing=True)
    outcome = kit.payments.authorize(created.payment_id)
    assert outcome.result is OutcomeResult.PENDING
    return created.payment_id


# -- customer-token charges -------------------------------------------------------------


def test_a_stored_token_is_charged_with_the_customer_not_present(kit: Kit) -> None:
    source, token = tokenized(kit)
    payment_id = charge(kit, customer_token_of=source)

    outcome = kit.payments.initiate(payment_id)

    assert outcome.result is OutcomeResult.APPROVED
    assert kit.payments.get(payment_id).state is PaymentState.AUTHORIZED
    call = authorize_calls(kit)[-1]
    assert call.headers["Klarna-Customer-Token"] == token
    assert "Klarna-Network-Session-Token" not in call.headers
    assert "step_up_config" not in body(call)
    assert token not in repr(kit.payments.audit_trail(payment_id))


def test_a_token_given_as_is_is_charged(kit: Kit) -> None:
    token = kit.fake.issue_customer_token(scopes=["payment:customer_not_present"])
    payment_id = charge(kit, customer_token=token)

    assert kit.payments.initiate(payment_id).result is OutcomeResult.APPROVED
    assert kit.payments.get(payment_id).charge_token is not None


def test_a_not_present_charge_may_be_declined(kit: Kit) -> None:
    _, token = tokenized(kit)
    payment_id = charge(kit, customer_token=token)
    kit.fake.decline_next()

    assert kit.payments.initiate(payment_id).result is OutcomeResult.DECLINED


def test_a_not_present_charge_never_steps_up(kit: Kit) -> None:
    _, token = tokenized(kit)
    payment_id = charge(kit, customer_token=token)
    sent = len(kit.fake.requests)

    with pytest.raises(InvalidInput) as refused:
        kit.payments.initiate(payment_id, step_up=StepUpConfig(return_url=RETURN_URL))

    assert refused.value.field == "step_up"
    assert len(kit.fake.requests) == sent
    assert kit.names(payment_id) == ["PaymentCreated"]


def test_a_step_up_answer_to_a_not_present_charge_is_a_failure_that_says_so(kit: Kit) -> None:
    _, token = tokenized(kit)
    payment_id = charge(kit, customer_token=token)
    step_up = {
        "payment_transaction_response": {"result": "STEP_UP_REQUIRED"},
        "payment_request": {"payment_request_id": "krn:payment:eu1:request:odd"},
    }
    kit.fake.respond_next(200, json.dumps(step_up).encode())

    outcome = kit.payments.initiate(payment_id)

    assert outcome.result is OutcomeResult.FAILED
    assert isinstance(outcome.error, KlarnaUnexpectedResponse)
    assert "customer-not-present" in str(outcome.error)
    assert kit.payments.get(payment_id).state is PaymentState.CREATED


def test_a_present_charge_steps_up_then_is_finally_authorized(kit: Kit) -> None:
    _, token = tokenized(kit)
    payment_id = charge(kit, customer_token=token, customer_present=True)
    kit.fake.step_up_next()

    stepped = kit.payments.initiate(payment_id, step_up=StepUpConfig(return_url=RETURN_URL))
    assert stepped.result is OutcomeResult.STEP_UP_REQUIRED
    assert stepped.payment_request_id is not None
    done = kit.fake.complete_payment_request(stepped.payment_request_id)
    deliver(kit, done.notification)
    final = kit.payments.authorize(payment_id)

    assert final.result is OutcomeResult.APPROVED
    last = authorize_calls(kit)[-1]
    assert last.headers["Klarna-Network-Session-Token"] == done.session_token
    assert last.headers["Klarna-Customer-Token"] == token


def test_a_revoked_token_is_refused_by_klarna_and_recorded_as_failed(kit: Kit) -> None:
    _, token = tokenized(kit)
    kit.fake.revoke_customer_token(token)
    payment_id = charge(kit, customer_token=token)

    outcome = kit.payments.initiate(payment_id)

    assert outcome.result is OutcomeResult.FAILED
    assert outcome.error is not None
    assert getattr(outcome.error, "status_code", None) == 403
    assert kit.payments.get(payment_id).state is PaymentState.CREATED


def test_charging_a_tokenization_that_never_completed_is_refused(kit: Kit) -> None:
    source = kit.payments.create(
        flow=Flow.TOKENIZATION, amount=AMOUNT, currency=CURRENCY, reference=reference()
    )

    with pytest.raises(MissingToken):
        charge(kit, customer_token_of=source)

    assert kit.payments.read_model() == kit.payments.read_model(PaymentState.CREATED)
    assert len(kit.payments.read_model()) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"customer_token": "has space"},
        {"customer_token": "krn:t:1", "customer_token_of": UUID(int=1)},
        {"customer_token": "krn:t:1", "flow": Flow.TOKENIZATION},
        {"customer_token": "krn:t:1", "payment_request_id": "krn:payment:eu1:request:1"},
        {"customer_token": "krn:t:1", "customer_present": "yes"},
        {"customer_present": True},
        {"customer_token_of": "not-a-uuid"},
    ],
    ids=repr,
)
def test_bad_token_charges_are_refused_before_anything_is_recorded(
    kit: Kit, kwargs: dict[str, Any]
) -> None:
    args: dict[str, Any] = {
        "flow": Flow.AUTHORIZATION,
        "amount": AMOUNT,
        "currency": CURRENCY,
        "reference": reference(),
    }
    args.update(kwargs)

    with pytest.raises(InvalidInput):
        kit.payments.create(**args)

    assert kit.payments.read_model() == []
    assert kit.fake.requests == []


# -- the transaction's view -----------------------------------------------------------------


def authorized(kit: Kit) -> tuple[UUID, str]:
    created = kit.completed()
    outcome = kit.payments.authorize(created.payment_id)
    assert outcome.payment_transaction_id is not None
    return created.payment_id, outcome.payment_transaction_id


def test_the_view_starts_from_the_authorize_answer(kit: Kit) -> None:
    payment_id, transaction_id = authorized(kit)

    view = kit.payments.get(payment_id).transaction_view

    assert view is not None
    assert view.payment_transaction_id == transaction_id
    assert view.state == "AUTHORIZED"
    assert view.captured_amount == 0
    assert view.expires_at is not None


def test_capture_notifications_update_the_view_once(kit: Kit) -> None:
    payment_id, transaction_id = authorized(kit)
    captured = kit.fake.capture_transaction(transaction_id, amount=AMOUNT)

    first = deliver(kit, captured)
    again = deliver(kit, captured)

    view = kit.payments.get(payment_id).transaction_view
    assert (first.status_code, str(first.outcome)) == (200, "applied")
    assert str(again.outcome) == "duplicate"
    assert view is not None
    assert view.captured_amount == AMOUNT
    assert view.state == "COMPLETED"
    assert kit.payments.get(payment_id).state is PaymentState.AUTHORIZED
    assert "TransactionReported" in kit.names(payment_id)


def test_refresh_reads_the_transaction_and_records_only_news(kit: Kit) -> None:
    payment_id, transaction_id = authorized(kit)
    kit.fake.capture_transaction(transaction_id, amount=AMOUNT // 2)  # notification not delivered

    kit.payments.refresh_transaction(payment_id)
    events = len(kit.names(payment_id))
    kit.payments.refresh_transaction(payment_id)

    view = kit.payments.get(payment_id).transaction_view
    assert view is not None
    assert view.captured_amount == AMOUNT // 2
    assert len(kit.names(payment_id)) == events
    assert [r.method for r in kit.fake.requests].count("GET") == 2


def test_refresh_needs_a_transaction(kit: Kit) -> None:
    created = kit.create()
    with pytest.raises(InvalidTransition):
        kit.payments.refresh_transaction(created.payment_id)


def test_transactions_about_to_expire_uncaptured_are_listed(kit: Kit) -> None:
    soon, _ = authorized(kit)
    _captured, transaction_id = authorized(kit)
    deliver(kit, kit.fake.capture_transaction(transaction_id, amount=AMOUNT))
    view = kit.payments.get(soon).transaction_view
    assert view is not None
    assert view.expires_at is not None
    kit.clock.advance(view.expires_at - kit.clock.now() - timedelta(days=1))

    listed = kit.payments.expiring_transactions(within=timedelta(days=2))

    assert [p.id for p in listed] == [soon]
    assert kit.payments.expiring_transactions(within=timedelta(hours=1)) == []


# -- the resolution ladder -----------------------------------------------------------------


def test_a_transaction_notification_resolves_a_lost_answer(kit: Kit) -> None:
    payment_id = pending_final(kit)
    [transaction] = kit.fake.transactions
    notified = kit.fake.transaction_notification(
        transaction.payment_transaction_id, event_type="payment.transaction.state-change.authorized"
    )

    result = deliver(kit, notified)

    payment = kit.payments.get(payment_id)
    assert (result.status_code, str(result.outcome)) == (200, "applied")
    assert payment.state is PaymentState.AUTHORIZED
    assert payment.payment_transaction_id == transaction.payment_transaction_id
    assert kit.payments.get(payment_id).transaction_view is not None


def test_an_operator_resolves_an_unresolved_payment_with_evidence(kit: Kit) -> None:
    payment_id = pending_final(kit)
    [transaction] = kit.fake.transactions

    kit.payments.resolve(
        payment_id,
        by="ops.alice",
        evidence="seen in the Klarna portal, ticket OPS-42",
        transaction_id=transaction.payment_transaction_id,
    )

    payment = kit.payments.get(payment_id)
    assert payment.state is PaymentState.AUTHORIZED
    [*_, last] = kit.payments.audit_trail(payment_id)
    assert last.event == "ResolvedWithTransaction"
    assert (last.cause_kind, last.cause) == ("operator", "ops.alice")
    assert "OPS-42" in json.dumps(last.details, default=str)


def test_a_contradicted_resolution_is_recorded_and_surfaced(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    payment_id = pending_final(kit)
    [transaction] = kit.fake.transactions
    kit.payments.resolve(
        payment_id, by="ops.bob", evidence="nothing in portal", no_transaction=True
    )
    assert kit.payments.get(payment_id).state is PaymentState.COMPLETED

    with caplog.at_level(logging.ERROR, logger="klarna_flow"):
        result = deliver(
            kit,
            kit.fake.transaction_notification(
                transaction.payment_transaction_id,
                event_type="payment.transaction.state-change.authorized",
            ),
        )

    assert result.status_code == 200
    assert "TransactionConflict" in kit.names(payment_id)
    assert [p.id for p in kit.payments.conflicts()] == [payment_id]
    assert any(str(payment_id) in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"by": "ops", "evidence": "x"},
        {"by": "ops", "evidence": "x", "transaction_id": "krn:t:1", "no_transaction": True},
        {"by": "two words", "evidence": "x", "no_transaction": True},
        {"by": "", "evidence": "x", "no_transaction": True},
        {"by": "ops", "evidence": " ", "no_transaction": True},
        {"by": "ops", "evidence": "x", "transaction_id": "not a krn"},
        {"by": "ops", "evidence": "x", "no_transaction": "yes"},
    ],
    ids=repr,
)
def test_bad_resolutions_record_nothing(kit: Kit, kwargs: dict[str, Any]) -> None:
    payment_id = pending_final(kit)
    before = kit.names(payment_id)

    with pytest.raises(InvalidInput):
        kit.payments.resolve(payment_id, **kwargs)

    assert kit.names(payment_id) == before


def test_only_a_pending_payment_is_resolved(kit: Kit) -> None:
    payment_id, _ = authorized(kit)
    with pytest.raises(InvalidTransition):
        kit.payments.resolve(payment_id, by="ops", evidence="x", no_transaction=True)


def test_a_pure_tokenization_never_resolves_to_a_transaction(kit: Kit) -> None:
    payment_id = kit.payments.create(
        flow=Flow.TOKENIZATION, amount=AMOUNT, currency=CURRENCY, reference=reference()
    )
    for _ in range(3):
        kit.fake.drop_next()
    kit.payments.initiate(payment_id, step_up=StepUpConfig(return_url=RETURN_URL))

    with pytest.raises(WrongFlow):
        kit.payments.resolve(payment_id, by="ops", evidence="x", transaction_id="krn:t:1")
    resolved = kit.payments.resolve(payment_id, by="ops", evidence="x", no_transaction=True)
    assert resolved.state is PaymentState.CREATED
