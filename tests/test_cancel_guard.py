"""cancel: "not once authorization was requested" (design table), on every store."""

from __future__ import annotations

from datetime import timedelta

import pytest

from klarna_flow import Flow, InvalidTransition, Payments, PaymentState
from tests.conftest import MakePayments

TOKEN = "krn:payment:eu1:klarna-network-session-token:cancel-guard"


@pytest.fixture
def payments(make_payments: MakePayments) -> Payments:
    return make_payments(partner_account_id="krn:partner:global:account:cancel")


def _requested(payments: Payments, reference: str) -> None:
    payment_id = payments.create(
        flow=Flow.AUTHORIZATION, amount=100, currency="EUR", reference=reference
    )
    payments.complete(payment_id, session_token=TOKEN)
    payment = payments.get(payment_id)
    payment.request_authorization(idempotency_key="key-1", now=payments.now())
    payments._store.save_payment(payment)


@pytest.mark.parametrize("outcome", ["fail", "require_step_up"])
def test_a_payment_whose_authorization_was_requested_cannot_be_canceled(
    payments: Payments, outcome: str
) -> None:
    _requested(payments, f"c-{outcome}")
    [row] = payments.read_model("AUTHORIZING")
    payment = payments.get(row.payment_id)
    if outcome == "fail":
        payment.fail(
            error="refused", status_code=400, correlation_id=None, now=payments.now(), cause="t"
        )
    else:
        payment.require_step_up(
            correlation_id=None,
            payment_request_id=None,
            payment_request_url=None,
            request_lifetime=timedelta(hours=3),
            now=payments.now(),
            cause="t",
        )
    payments._store.save_payment(payment)
    before = payments.get(payment.id).version

    with pytest.raises(InvalidTransition, match="authorization was requested"):
        payments.cancel(payment.id)

    assert payments.get(payment.id).version == before
    assert payments.get(payment.id).state in (PaymentState.COMPLETED, PaymentState.CREATED)


def test_a_payment_never_sent_to_klarna_can_be_canceled(payments: Payments) -> None:
    payment_id = payments.create(
        flow=Flow.AUTHORIZATION, amount=100, currency="EUR", reference="c-open"
    )
    payments.complete(payment_id, session_token=TOKEN)
    assert payments.cancel(payment_id).state is PaymentState.CANCELED
