"""A failure after which Klarna may have acted never reopens a payment.

When any attempt of a call may have reached Klarna (a timeout or a dropped
answer after Klarna acted, a 5xx), a later refusal of a retry proves nothing:
the payment stays ``AUTHORIZING`` and ``reconcile`` re-sends the same key,
until Klarna answers with its original result. One transaction, ever.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from uuid import UUID

import httpx
import pytest

from klarna_flow import (
    Flow,
    KlarnaClient,
    OutcomeResult,
    Payments,
    PaymentState,
    RetryPolicy,
)
from klarna_flow.testing import FakeKlarna, ManualClock

RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.001)


@pytest.fixture
def setup() -> Iterator[tuple[Payments, FakeKlarna, ManualClock]]:
    clock = ManualClock()
    fake = FakeKlarna(clock=clock)
    client = KlarnaClient(fake.api_key, transport=httpx.MockTransport(fake), retry=RETRY)
    payments = Payments(
        clock=clock,
        klarna=client,
        signing_keys=fake.signing_keys,
        partner_account_id=fake.partner_account_id,
    )
    yield payments, fake, clock
    client.close()
    payments.close()


def _completed(payments: Payments, fake: FakeKlarna, reference: str) -> UUID:
    token = fake.issue_session_token(amount=100, currency="USD")
    payment_id = payments.create(
        flow=Flow.AUTHORIZATION, amount=100, currency="USD", reference=reference
    )
    payments.complete(payment_id, session_token=token)
    return payment_id


def test_rate_limited_retries_after_a_lost_answer_leave_the_payment_pending(
    setup: tuple[Payments, FakeKlarna, ManualClock],
) -> None:
    payments, fake, clock = setup
    payment_id = _completed(payments, fake, "lost-then-429")
    fake.timeout_next(after_processing=True)  # Klarna acts; the answer is lost
    fake.fail_next(429, times=2)  # the retries under the same key are rate limited

    outcome = payments.authorize(payment_id)

    assert outcome.result is OutcomeResult.PENDING
    assert outcome.state is PaymentState.AUTHORIZING
    assert outcome.error is not None
    assert outcome.error.may_have_acted
    assert len(fake.transactions_for("lost-then-429")) == 1
    # Nothing reopens it: no second attempt, no cancel, no expiry.
    clock.advance(timedelta(minutes=61))
    assert payments.expire_overdue() == []
    # reconcile re-sends the recorded key: Klarna answers with the original result.
    [resolved] = payments.reconcile(older_than=timedelta(0))
    assert resolved.result is OutcomeResult.APPROVED
    [transaction] = fake.transactions_for("lost-then-429")
    assert resolved.payment_transaction_id == transaction.payment_transaction_id


def test_a_rate_limited_reconcile_keeps_the_payment_pending(
    setup: tuple[Payments, FakeKlarna, ManualClock],
) -> None:
    payments, fake, clock = setup
    payment_id = _completed(payments, fake, "pending-429")
    for _ in range(RETRY.max_attempts):
        fake.timeout_next(after_processing=True)
    assert payments.authorize(payment_id).result is OutcomeResult.PENDING
    clock.advance(timedelta(minutes=6))
    fake.fail_next(429, times=RETRY.max_attempts)

    [still] = payments.reconcile()

    assert still.result is OutcomeResult.PENDING
    assert payments.get(payment_id).state is PaymentState.AUTHORIZING
    [again] = payments.reconcile()
    assert again.result is OutcomeResult.APPROVED
    assert len(fake.transactions_for("pending-429")) == 1


def test_a_refusal_on_the_first_send_is_definitive(
    setup: tuple[Payments, FakeKlarna, ManualClock],
) -> None:
    payments, fake, _ = setup
    payment_id = _completed(payments, fake, "plain-429")
    fake.fail_next(429, times=RETRY.max_attempts)  # never processed: safe to retry later

    outcome = payments.authorize(payment_id)

    assert outcome.result is OutcomeResult.FAILED
    assert outcome.error is not None
    assert not outcome.error.may_have_acted
    assert payments.authorize(payment_id).result is OutcomeResult.APPROVED
    assert len(fake.transactions_for("plain-429")) == 1
