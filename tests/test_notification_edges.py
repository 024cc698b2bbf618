"""Notifications at the edges: a request id learned late, a clock running ahead,
a token that is not a token, JSON nested too deeply. On every store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from klarna_flow import Flow, InvalidTransition, PaymentState
from klarna_flow._shared.secrets import mask
from klarna_flow.testing import ManualClock, SignedNotification
from tests._flow_helpers import Kit, MakePayments, open_kit


@pytest.fixture
def kit(make_payments: MakePayments, clock: ManualClock) -> Iterator[Kit]:
    with open_kit(make_payments, clock) as k:
        yield k


def test_a_request_id_given_on_a_repeated_create_is_kept(kit: Kit) -> None:
    p, fake = kit.payments, kit.fake
    payment_id = p.create(flow=Flow.AUTHORIZATION, amount=100, currency="EUR", reference="late-id")
    request_id = fake.create_payment_request(amount=100, currency="EUR")

    again = p.create(
        flow=Flow.AUTHORIZATION,
        amount=100,
        currency="EUR",
        reference="late-id",
        payment_request_id=request_id,
    )

    assert again == payment_id
    assert p.get(payment_id).payment_request_id == request_id
    done = fake.complete_payment_request(request_id)
    result = p.handle_notification(done.notification.body, done.notification.headers)
    assert (result.status_code, result.outcome) == (200, "applied")
    assert p.get(payment_id).state is PaymentState.COMPLETED


def test_identify_payment_request_records_once_and_never_on_a_final_payment(kit: Kit) -> None:
    p, fake = kit.payments, kit.fake
    payment_id = p.create(flow=Flow.AUTHORIZATION, amount=100, currency="EUR", reference="ident")
    request_id = fake.create_payment_request(amount=100, currency="EUR")
    version = p.identify_payment_request(payment_id, request_id).version
    assert p.identify_payment_request(payment_id, request_id).version == version  # no-op
    p.cancel(payment_id)
    with pytest.raises(InvalidTransition):
        p.identify_payment_request(
            payment_id, fake.create_payment_request(amount=1, currency="EUR")
        )


def test_a_completion_stamped_ahead_of_our_clock_is_applied_at_our_now(kit: Kit) -> None:
    p, fake, clock = kit.payments, kit.fake, kit.clock
    request_id = fake.create_payment_request(amount=100, currency="EUR")
    payment_id = p.create(
        flow=Flow.AUTHORIZATION,
        amount=100,
        currency="EUR",
        reference="clock-ahead",
        payment_request_id=request_id,
    )
    done = fake.complete_payment_request(request_id)
    token = done.session_token
    assert token is not None
    ahead = fake.notification(
        "payment.request.state-change.completed",
        {
            "payment_request_id": request_id,
            "state": "COMPLETED",
            "previous_state": "IN_PROGRESS",
            "klarna_network_session_token": token,
        },
        occurred_at=clock.now() + timedelta(minutes=6),
    )

    result = p.handle_notification(ahead.body, ahead.headers)

    assert (result.status_code, result.outcome) == (200, "applied")
    payment = p.get(payment_id)
    assert payment.state is PaymentState.COMPLETED
    assert payment.completed_at == clock.now()


def test_a_completion_with_a_malformed_token_is_answered_400(kit: Kit) -> None:
    p, fake = kit.payments, kit.fake
    request_id = fake.create_payment_request(amount=100, currency="EUR")
    payment_id = p.create(
        flow=Flow.AUTHORIZATION,
        amount=100,
        currency="EUR",
        reference="bad-token",
        payment_request_id=request_id,
    )
    bad = fake.notification(
        "payment.request.state-change.completed",
        {"payment_request_id": request_id, "klarna_network_session_token": "not a krn"},
    )

    result = p.handle_notification(bad.body, bad.headers)

    assert (result.status_code, result.outcome) == (400, "rejected")
    assert "not a krn" not in result.detail
    assert p.get(payment_id).state is PaymentState.CREATED
    assert p.get(payment_id).version == 1


@pytest.mark.parametrize("where", ["whole-body", "inside-the-payload"])
def test_deeply_nested_signed_json_is_answered_400(kit: Kit, where: str) -> None:
    p, fake = kit.payments, kit.fake
    nested = b"[" * 200_000 + b"]" * 200_000
    if where == "whole-body":
        body = nested
    else:
        inner = fake.notification("payment.request.state-change.completed", {"deep": 0}).body
        body = inner.replace(b'"deep":0', b'"deep":' + nested)

    result = p.handle_notification(body, fake.sign(body))

    assert (result.status_code, result.outcome) == (400, "rejected")
    assert "nested" in result.detail
    assert p.notification_counts["rejected"] == 1


def test_the_repr_of_a_signed_notification_masks_every_token(kit: Kit) -> None:
    fake = kit.fake
    request_id = fake.create_payment_request(
        amount=100, currency="EUR", flow=Flow.AUTHORIZATION_AND_TOKENIZATION.value
    )
    done = fake.complete_payment_request(request_id)
    nested_token = "krn:payment:eu1:klarna-network-session-token:nested-0001"
    by_hand = fake.notification(
        "payment.request.state-change.completed",
        {"payment_request_id": request_id, "state_context": {"payment_token": nested_token}},
    )
    tokens = [done.session_token, done.customer_token, nested_token]
    assert all(tokens)

    for shown in (repr(done.notification), str(done.notification), repr(by_hand)):
        for token in tokens:
            assert token is not None
            assert token not in shown
        assert "SignedNotification(" in shown
    shown = repr(done.notification)
    assert f"{mask(done.session_token)}" in shown
    assert f"{mask(done.customer_token)}" in shown
    assert done.notification.event_id in shown  # the rest stays readable
    assert request_id in shown
    not_json = SignedNotification(body=b"token " + nested_token.encode(), headers={})
    assert nested_token not in repr(not_json)
