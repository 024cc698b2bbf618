"""FakeKlarna's scripts compose: a verdict and a fault queued together both apply.

Verdicts (``approve_next``, ``decline_next``, ``step_up_next``) wait for the
next authorize call Klarna processes; faults (``fail_next``, ``respond_next``,
``drop_next``, ``timeout_next``) hit the next call to any endpoint. The two
queues are independent, so a verdict applies to a call whose answer is then
lost (``after_processing``), whichever was scripted first, and a re-send
under the same idempotency key gets that verdict's answer back. Seen through
the clients (sync and async, in process and on loopback) and through
``Payments``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from uuid import UUID

import httpx
import pytest

from klarna_flow import (
    Flow,
    KlarnaServerError,
    KlarnaTransportError,
    OutcomeResult,
    Payments,
    PaymentState,
)
from klarna_flow.klarna import AuthorizationResult, KlarnaClient, RetryPolicy
from klarna_flow.testing import FakeKlarna, ManualClock

from .klarna_support import REFERENCE, Caller

ONCE = RetryPolicy(max_attempts=1)
Script = Callable[[FakeKlarna], None]


def both_orders(verdict: Script, fault: Script) -> pytest.MarkDecorator:
    """Parametrize ``script`` with ``verdict`` and ``fault`` queued either way round."""

    def verdict_first(fake: FakeKlarna) -> None:
        verdict(fake)
        fault(fake)

    def fault_first(fake: FakeKlarna) -> None:
        fault(fake)
        verdict(fake)

    return pytest.mark.parametrize(
        "script", [verdict_first, fault_first], ids=["verdict-first", "fault-first"]
    )


def decline(fake: FakeKlarna) -> None:
    fake.decline_next(reason="RISK")


def approve(fake: FakeKlarna) -> None:
    fake.approve_next()


def step_up(fake: FakeKlarna) -> None:
    fake.step_up_next()


def drop_after(fake: FakeKlarna) -> None:
    fake.drop_next(after_processing=True)


def drop_before(fake: FakeKlarna) -> None:
    fake.drop_next()


def timeout_after(fake: FakeKlarna) -> None:
    fake.timeout_next(after_processing=True)


def fail_503(fake: FakeKlarna) -> None:
    fake.fail_next(503)


def completed_request(fake: FakeKlarna) -> tuple[str, str]:
    """A completed USD 11800 payment request: its id and session token."""
    request_id = fake.create_payment_request(amount=11800, currency="USD")
    token = fake.complete_payment_request(request_id).session_token
    assert token is not None
    return request_id, token


# -- a verdict on a call whose answer is lost -------------------------------------------


@both_orders(decline, drop_after)
def test_a_decline_applies_to_a_call_whose_answer_is_dropped(
    caller: Caller, script: Script
) -> None:
    request_id, token = completed_request(caller.fake)
    script(caller.fake)
    args = caller.args(token)

    with pytest.raises(KlarnaTransportError):
        caller.client(retry=ONCE)(**args)

    assert caller.fake.state_of(request_id) == "DECLINED"  # Klarna declined
    assert caller.fake.transactions == []
    resent = caller.client(retry=ONCE)(**args)  # same key, same body
    assert (resent.result, resent.result_reason) == (AuthorizationResult.DECLINED, "RISK")
    assert resent.transaction is None
    assert caller.fake.transactions == []
    assert len(caller.fake.requests) == 2


@both_orders(decline, timeout_after)
def test_the_client_s_own_retry_hears_the_decline_of_a_lost_answer(
    caller: Caller, script: Script
) -> None:
    _, token = completed_request(caller.fake)
    script(caller.fake)
    args = caller.args(token)

    answer = caller.client()(**args)

    assert (answer.result, answer.result_reason) == (AuthorizationResult.DECLINED, "RISK")
    keys = {r.headers["Klarna-Idempotency-Key"] for r in caller.fake.requests}
    assert (len(caller.fake.requests), keys) == (2, {args["idempotency_key"]})
    assert caller.fake.transactions == []


@both_orders(approve, drop_after)
def test_an_approval_applies_to_an_initial_call_whose_answer_is_dropped(
    caller: Caller, script: Script
) -> None:
    # Without the approval, an initial call lacking step_up_config is refused (400).
    script(caller.fake)
    args = caller.args("", session_token=None)  # no token: an initial call

    with pytest.raises(KlarnaTransportError):
        caller.client(retry=ONCE)(**args)

    [transaction] = caller.fake.transactions_for(REFERENCE)  # Klarna approved
    resent = caller.client(retry=ONCE)(**args)
    assert resent.result is AuthorizationResult.APPROVED
    assert resent.transaction is not None
    assert resent.transaction.payment_transaction_id == transaction.payment_transaction_id
    assert len(caller.fake.transactions) == 1  # replayed, never approved twice


@both_orders(step_up, drop_after)
def test_a_step_up_applies_to_a_call_whose_answer_is_dropped(
    caller: Caller, script: Script
) -> None:
    _, token = completed_request(caller.fake)
    script(caller.fake)
    args = caller.args(token)

    with pytest.raises(KlarnaTransportError):
        caller.client(retry=ONCE)(**args)

    assert caller.fake.transactions == []  # not approved by default
    resent = caller.client(retry=ONCE)(**args)
    assert resent.result is AuthorizationResult.STEP_UP_REQUIRED
    assert resent.step_up is not None
    assert caller.fake.state_of(resent.step_up.payment_request_id) == "SUBMITTED"
    assert caller.fake.transactions == []


def test_a_replay_takes_no_verdict_the_next_processed_call_does(caller: Caller) -> None:
    _, token = completed_request(caller.fake)
    _, other_token = completed_request(caller.fake)
    caller.fake.decline_next()
    caller.fake.drop_next(after_processing=True)
    caller.fake.step_up_next()
    args = caller.args(token)

    with pytest.raises(KlarnaTransportError):
        caller.client(retry=ONCE)(**args)
    replayed = caller.client(retry=ONCE)(**args)
    fresh = caller.authorize(other_token)

    assert replayed.result is AuthorizationResult.DECLINED
    assert fresh.result is AuthorizationResult.STEP_UP_REQUIRED


# -- a verdict waits past a call that is never processed --------------------------------


@both_orders(decline, drop_before)
def test_a_drop_before_processing_leaves_the_verdict_for_the_next_call(
    caller: Caller, script: Script
) -> None:
    request_id, token = completed_request(caller.fake)
    script(caller.fake)
    args = caller.args(token)

    with pytest.raises(KlarnaTransportError):
        caller.client(retry=ONCE)(**args)

    assert caller.fake.state_of(request_id) == "COMPLETED"  # nothing processed
    answer = caller.client(retry=ONCE)(**args)
    assert (answer.result, answer.result_reason) == (AuthorizationResult.DECLINED, "RISK")
    assert caller.authorize(completed_request(caller.fake)[1]).result is (
        AuthorizationResult.APPROVED  # the decline was used once
    )


@both_orders(decline, fail_503)
def test_an_error_leaves_the_verdict_for_the_next_call(caller: Caller, script: Script) -> None:
    _, token = completed_request(caller.fake)
    script(caller.fake)
    args = caller.args(token)

    with pytest.raises(KlarnaServerError):
        caller.client(retry=ONCE)(**args)

    answer = caller.client(retry=ONCE)(**args)
    assert answer.result is AuthorizationResult.DECLINED


def test_a_fault_hits_the_next_call_even_behind_a_queued_verdict(caller: Caller) -> None:
    open_request = caller.fake.create_payment_request(amount=11800, currency="USD")
    _, token = completed_request(caller.fake)
    caller.fake.decline_next()
    caller.fake.fail_next(503)
    cancel = caller.method("cancel_payment_request", retry=ONCE)

    with pytest.raises(KlarnaServerError):
        cancel(partner_account_id=caller.fake.partner_account_id, payment_request_id=open_request)

    assert caller.fake.state_of(open_request) == "SUBMITTED"
    assert caller.authorize(token).result is AuthorizationResult.DECLINED  # no fault left
    assert len(caller.fake.requests) == 2


# -- through Payments -------------------------------------------------------------------


def payments_on(fake: FakeKlarna, clock: ManualClock, retry: RetryPolicy) -> Iterator[Payments]:
    client = KlarnaClient(fake.api_key, transport=httpx.MockTransport(fake), retry=retry)
    payments = Payments(
        {"PERSISTENCE_MODULE": "eventsourcing.popo"},
        clock=clock,
        klarna=client,
        partner_account_id=fake.partner_account_id,
        signing_keys=fake.signing_keys,
    )
    yield payments
    client.close()
    payments.close()


@pytest.fixture
def payments(fake: FakeKlarna, clock: ManualClock) -> Iterator[Payments]:
    """``Payments`` whose client sends each call once (a lost answer stays lost)."""
    yield from payments_on(fake, clock, ONCE)


def completed_payment(payments: Payments, fake: FakeKlarna, reference: str) -> UUID:
    _, token = completed_request(fake)
    payment_id = payments.create(
        flow=Flow.AUTHORIZATION, amount=11800, currency="USD", reference=reference
    )
    payments.complete(payment_id, session_token=token)
    return payment_id


@both_orders(decline, drop_after)
def test_payments_learn_of_a_lost_decline_on_reconcile(
    payments: Payments, fake: FakeKlarna, clock: ManualClock, script: Script
) -> None:
    payment_id = completed_payment(payments, fake, "lost-decline")
    script(fake)

    assert payments.authorize(payment_id).result is OutcomeResult.PENDING
    clock.advance(timedelta(minutes=6))
    [outcome] = payments.reconcile(older_than=timedelta(minutes=5))

    assert (outcome.result, outcome.state) == (OutcomeResult.DECLINED, PaymentState.DECLINED)
    assert fake.transactions == []


@both_orders(step_up, drop_after)
def test_payments_learn_of_a_lost_step_up_on_reconcile(
    payments: Payments, fake: FakeKlarna, clock: ManualClock, script: Script
) -> None:
    payment_id = completed_payment(payments, fake, "lost-step-up")
    script(fake)

    assert payments.authorize(payment_id).result is OutcomeResult.PENDING
    clock.advance(timedelta(minutes=6))
    [outcome] = payments.reconcile(older_than=timedelta(minutes=5))

    assert (outcome.result, outcome.state) == (
        OutcomeResult.STEP_UP_REQUIRED,
        PaymentState.CREATED,
    )
    assert outcome.payment_request_id is not None
    assert fake.state_of(outcome.payment_request_id) == "SUBMITTED"
    assert fake.transactions == []
