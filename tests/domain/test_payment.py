"""The ``Payment`` aggregate on its own: no store, no clock but plain datetimes.

The domain is pure, so its rules are checked here without any application:
each command records one past-tense event, a refused command records nothing,
and replaying the recorded events rebuilds the same payment without checking
a guard again.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from klarna_flow import (
    CommandRefused,
    Flow,
    InvalidTransition,
    MissingToken,
    NotYetExpired,
    Payment,
    PaymentState,
    WrongFlow,
)
from klarna_flow._domain.sealed import SealedSecret

S = PaymentState
T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)
TOKEN = SealedSecret("k1", "bm9uY2U=", "Y2lwaGVy")  # opaque to the domain


def created(flow: Flow = Flow.AUTHORIZATION) -> Payment:
    return Payment.create(
        payment_id=uuid.uuid4(),
        flow=flow,
        amount=11800,
        currency="USD",
        reference="order-1",
        partner_account_id="krn:partner:global:account:p",
        payment_request_id=None,
        request_lifetime=timedelta(hours=3),
        now=T0,
    )


def completed(flow: Flow = Flow.AUTHORIZATION, at: datetime = T0) -> Payment:
    payment = created(flow)
    payment.complete(
        session_token=TOKEN if flow.authorizes else None,
        customer_token=TOKEN if flow.tokenizes else None,
        completed_at=at,
        now=at,
    )
    return payment


def requested(at: datetime = T0) -> Payment:
    payment = completed(at=at)
    payment.request_authorization(idempotency_key="key-1", now=at)
    return payment


def replayed(payment: Payment) -> Payment:
    rebuilt: Any = None
    for event in payment.collect_events():
        rebuilt = event.mutate(rebuilt)
    assert isinstance(rebuilt, Payment)
    return rebuilt


def names(payment: Payment) -> list[str]:
    return [type(e).__name__ for e in payment.pending_events]


def test_each_command_records_one_past_tense_event() -> None:
    payment = requested()
    payment.approve(
        payment_transaction_id="krn:payment:eu1:transaction:t",
        correlation_id="c",
        transaction_expires_at=None,
        now=T0,
        cause="command:authorize",
    )

    assert names(payment) == [
        "PaymentCreated",
        "PurchaseCompleted",
        "AuthorizationRequested",
        "AuthorizationApproved",
    ]
    assert payment.state is S.AUTHORIZED
    assert payment.last_result == "APPROVED"


@pytest.mark.parametrize(
    ("command", "error"),
    [
        (lambda p: p.request_authorization(idempotency_key="k", now=T0), InvalidTransition),
        (lambda p: p.cancel(now=T0 + timedelta(days=1)), InvalidTransition),
        (lambda p: p.expire(now=T0, reason="REQUEST_LIFETIME"), InvalidTransition),
        (lambda p: p.mark_unresolved(error="e", status_code=400, correlation_id=None, now=T0,
                                     cause="command:reconcile"), InvalidTransition),
    ],
)  # fmt: skip
def test_a_refused_command_records_nothing(command: Any, error: type[Exception]) -> None:
    payment = completed()
    payment.request_authorization(idempotency_key="k", now=T0)
    payment.decline(correlation_id=None, reason=None, now=T0, cause="command:authorize")
    before = names(payment)

    with pytest.raises(error):
        command(payment)

    assert names(payment) == before
    assert payment.state is S.DECLINED


def test_guards_say_why() -> None:
    tokenization = completed(Flow.TOKENIZATION)
    young = created()
    late = completed()

    with pytest.raises(WrongFlow):
        tokenization.request_authorization(idempotency_key="k", now=T0)
    with pytest.raises(MissingToken):
        young.complete(session_token=None, customer_token=None, completed_at=T0, now=T0)
    with pytest.raises(NotYetExpired):
        young.expire(now=T0 + timedelta(hours=2), reason="REQUEST_LIFETIME")
    with pytest.raises(CommandRefused):  # the window: the application records the expiry
        late.request_authorization(idempotency_key="k", now=T0 + timedelta(minutes=60))


def test_replaying_the_events_rebuilds_the_payment_without_guards() -> None:
    payment = requested()
    payment.approve(
        payment_transaction_id="krn:payment:eu1:transaction:t",
        correlation_id="c",
        transaction_expires_at=T0 + timedelta(days=28),
        now=T0,
        cause="command:authorize",
    )
    events = list(payment.pending_events)

    # Long after the window closed, the same events still rebuild AUTHORIZED.
    rebuilt = replayed(payment)

    assert rebuilt.state is S.AUTHORIZED
    assert rebuilt.payment_transaction_id == "krn:payment:eu1:transaction:t"
    assert rebuilt.version == len(events)
    assert vars(rebuilt) == vars(payment)


def test_an_unresolved_authorization_is_recorded_once_and_keeps_its_state() -> None:
    payment = requested()

    for _ in range(2):
        payment.mark_unresolved(
            error="KlarnaConflict: 409",
            status_code=409,
            correlation_id="c",
            now=T0,
            cause="command:reconcile",
        )

    assert names(payment).count("AuthorizationUnresolved") == 1
    assert (payment.state, payment.is_unresolved) == (S.AUTHORIZING, True)
    payment.approve(
        payment_transaction_id="krn:payment:eu1:transaction:t",
        correlation_id=None,
        transaction_expires_at=None,
        now=T0,
        cause="command:reconcile",
    )
    assert not payment.is_unresolved


def test_a_declined_payment_request_declines_only_a_created_payment() -> None:
    payment = created()
    payment.decline_request(now=T0, cause="notification:evt-1")

    assert names(payment)[-1] == "PaymentRequestDeclined"
    assert (payment.state, payment.decline_reason) == (S.DECLINED, "PAYMENT_REQUEST_DECLINED")
    assert payment.notification_ids == {"evt-1"}
    for late in (completed(), requested(), completed(Flow.TOKENIZATION)):
        before = names(late)
        with pytest.raises(InvalidTransition, match="cannot decline_request"):
            late.decline_request(now=T0, cause="notification:evt-2")
        assert names(late) == before
    assert vars(replayed(payment)) == vars(payment)


def test_a_report_on_the_payment_request_keeps_the_state() -> None:
    payment = created()
    before = dict(vars(payment))
    payment.note_request_report(
        event_type="payment.request.state-change.in-progress",
        klarna_state="IN_PROGRESS",
        now=T0 + timedelta(minutes=1),
        cause="notification:evt-1",
    )

    [*_, reported] = payment.pending_events
    assert isinstance(reported, Payment.PaymentRequestReported)
    assert (reported.event_type, reported.klarna_state) == (
        "payment.request.state-change.in-progress",
        "IN_PROGRESS",
    )
    changed = {k for k in vars(payment) if vars(payment)[k] != before.get(k)}
    assert changed == {"_version", "_modified_on", "notification_ids"}
    assert payment.state is S.CREATED
    assert vars(replayed(payment)) == vars(payment)


@pytest.mark.parametrize("late", [completed, requested], ids=["completed", "authorizing"])
def test_a_report_past_created_is_refused_and_records_nothing(late: Any) -> None:
    payment = late()
    before = names(payment)

    with pytest.raises(InvalidTransition, match="no longer open"):
        payment.note_request_report(
            event_type="payment.request.updated", klarna_state=None, now=T0, cause="notification:e"
        )

    assert names(payment) == before


def test_the_last_result_follows_each_attempt() -> None:
    payment = requested()
    assert payment.last_result == "PENDING"
    payment.fail(error="409", status_code=409, correlation_id=None, now=T0, cause="c:a")
    assert (payment.state, payment.last_result) == (S.COMPLETED, "FAILED")
    payment.request_authorization(idempotency_key="key-2", now=T0)
    payment.require_step_up(
        correlation_id=None,
        payment_request_id="krn:payment:eu1:payment-request:r2",
        payment_request_url="https://pay.test.klarna.com/r2",
        request_lifetime=timedelta(hours=3),
        now=T0,
        cause="c:a",
    )
    assert (payment.state, payment.last_result) == (S.CREATED, "STEP_UP_REQUIRED")
    assert payment.authorization_attempts == 2
    assert created().last_result is None
