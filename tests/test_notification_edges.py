"""Notifications at the edges: a request id learned late, a clock running ahead,
a token that is not a token. On every store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from klarna_flow import Flow, InvalidTransition, PaymentState
from klarna_flow.testing import ManualClock
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
