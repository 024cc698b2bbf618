"""Authorize, intent first, end to end against FakeKlarna on every store.

What ``/work/shared/design.md`` ("Authorize: intent first") promises:
``AuthorizationRequested`` with its idempotency key is recorded before Klarna
is called, the call carries that key, the outcome is recorded after it, and a
refused command records nothing and sends nothing (except past the window,
where ``PaymentExpired`` is recorded).
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from klarna_flow import (
    AuthorizationInProgress,
    AuthorizationOutcome,
    AuthorizationWindowElapsed,
    ConcurrentModification,
    ConfigurationError,
    Flow,
    InvalidTransition,
    KlarnaFlowError,
    OutcomeResult,
    Payment,
    Payments,
    PaymentState,
    TokenCipher,
    WrongFlow,
)
from klarna_flow._app.authorization import _expire_if_window_elapsed
from klarna_flow.testing import FakeKlarna, ManualClock
from tests._flow_helpers import (
    AMOUNT,
    CURRENCY,
    Kit,
    MakePayments,
    Via,
    event_names,
    klarna_client,
    open_kit,
)

S = PaymentState
WINDOW = timedelta(minutes=60)
VIAS: list[Via] = ["notification", "command"]


@pytest.fixture
def kit(make_payments: MakePayments, clock: ManualClock) -> Iterator[Kit]:
    with open_kit(make_payments, clock) as kit:
        yield kit


def requested_keys(kit: Kit, payment_id: uuid.UUID) -> list[str]:
    return [
        e.idempotency_key
        for e in kit.events(payment_id)
        if isinstance(e, Payment.AuthorizationRequested)
    ]


# -- the happy paths ------------------------------------------------------------


@pytest.mark.parametrize("via", VIAS)
def test_authorization_flow_ends_authorized_with_klarnas_transaction(kit: Kit, via: Via) -> None:
    created = kit.completed(Flow.AUTHORIZATION, via)

    outcome = kit.payments.authorize(created.payment_id)

    [transaction] = kit.fake.transactions
    assert outcome.result is OutcomeResult.APPROVED
    assert outcome.state is S.AUTHORIZED
    assert outcome.payment_transaction_id == transaction.payment_transaction_id
    assert outcome.correlation_id  # Klarna-Correlation-Id of the answer is kept
    assert transaction.reference == created.reference
    assert (transaction.amount, transaction.currency) == (11800, "USD")
    payment = kit.payments.get(created.payment_id)
    assert payment.state is S.AUTHORIZED
    assert payment.payment_transaction_id == transaction.payment_transaction_id
    assert kit.names(created.payment_id) == [
        "PaymentCreated",
        "PurchaseCompleted",
        "AuthorizationRequested",
        "AuthorizationApproved",
    ]
    assert kit.payments.outcome(created.payment_id) == outcome


@pytest.mark.parametrize("via", VIAS)
def test_pay_and_tokenize_is_authorized_and_keeps_the_customer_token(kit: Kit, via: Via) -> None:
    created = kit.create(Flow.AUTHORIZATION_AND_TOKENIZATION)
    done = kit.complete(created, via)
    assert done.customer_token is not None

    outcome = kit.payments.authorize(created.payment_id)

    [transaction] = kit.fake.transactions_for(created.reference)
    assert outcome.result is OutcomeResult.APPROVED
    assert outcome.payment_transaction_id == transaction.payment_transaction_id
    payment = kit.payments.get(created.payment_id)
    assert payment.state is S.AUTHORIZED
    assert payment.customer_token is not None
    assert done.customer_token not in repr(payment.customer_token)  # sealed at rest
    opened = kit.payments._store.unseal(
        created.payment_id, "customer_token", payment.customer_token
    )
    assert opened == done.customer_token


@pytest.mark.parametrize("via", VIAS)
def test_pure_tokenization_completes_and_is_never_sent_to_klarna(kit: Kit, via: Via) -> None:
    created = kit.create(Flow.TOKENIZATION)
    done = kit.complete(created, via)
    events_before = kit.names(created.payment_id)

    with pytest.raises(WrongFlow):
        kit.payments.authorize(created.payment_id)

    assert kit.fake.requests == []
    payment = kit.payments.get(created.payment_id)
    assert payment.state is S.COMPLETED
    assert kit.names(created.payment_id) == events_before == ["PaymentCreated", "PurchaseCompleted"]
    assert payment.customer_token is not None
    assert kit.payments._store.unseal(
        created.payment_id, "customer_token", payment.customer_token
    ) == (done.customer_token)


@pytest.mark.parametrize("via", VIAS)
def test_decline_is_recorded_and_final(kit: Kit, via: Via) -> None:
    created = kit.completed(Flow.AUTHORIZATION, via)
    kit.fake.decline_next(reason="RISK")

    outcome = kit.payments.authorize(created.payment_id)

    assert outcome.result is OutcomeResult.DECLINED
    assert outcome.state is S.DECLINED
    assert outcome.payment_transaction_id is None
    assert kit.fake.transactions == []
    payment = kit.payments.get(created.payment_id)
    assert (payment.state, payment.decline_reason) == (S.DECLINED, "RISK")
    with pytest.raises(InvalidTransition):
        kit.payments.authorize(created.payment_id)
    assert len(kit.fake.requests) == 1


@pytest.mark.parametrize("via", VIAS)
def test_step_up_returns_to_created_with_the_new_payment_request(kit: Kit, via: Via) -> None:
    created = kit.completed(Flow.AUTHORIZATION, via)
    kit.fake.step_up_next()

    outcome = kit.payments.authorize(created.payment_id)

    assert outcome.result is OutcomeResult.STEP_UP_REQUIRED
    assert outcome.state is S.CREATED
    new_request = outcome.payment_request_id
    assert new_request is not None
    assert new_request != created.payment_request_id
    assert kit.fake.state_of(new_request) == "SUBMITTED"
    assert outcome.payment_request_url is not None
    assert outcome.payment_request_url.startswith("https://")
    payment = kit.payments.get(created.payment_id)
    assert (payment.state, payment.payment_request_id) == (S.CREATED, new_request)
    assert payment.session_token is None  # the old token is spent
    assert kit.payments.find_by_payment_request(new_request) == created.payment_id
    assert kit.fake.transactions == []


def test_after_a_step_up_the_new_request_completes_and_authorizes(kit: Kit) -> None:
    created = kit.completed(Flow.AUTHORIZATION)
    kit.fake.step_up_next()
    first = kit.payments.authorize(created.payment_id)
    assert first.payment_request_id is not None

    done = kit.fake.complete_payment_request(first.payment_request_id)
    answer = kit.payments.handle_notification(done.notification.body, done.notification.headers)
    assert (answer.status_code, answer.outcome) == (200, "applied")
    second = kit.payments.authorize(created.payment_id)

    [transaction] = kit.fake.transactions
    assert second.result is OutcomeResult.APPROVED
    assert second.payment_transaction_id == transaction.payment_transaction_id
    assert second.idempotency_key != first.idempotency_key  # a new attempt, a new key
    assert kit.sent_keys() == [first.idempotency_key, second.idempotency_key]


# -- the idempotency key --------------------------------------------------------


def test_klarna_receives_the_recorded_idempotency_key(kit: Kit) -> None:
    created = kit.completed()

    outcome = kit.payments.authorize(created.payment_id)

    [recorded] = requested_keys(kit, created.payment_id)
    [request] = kit.fake.requests
    assert request.headers["Klarna-Idempotency-Key"] == recorded == outcome.idempotency_key
    assert uuid.UUID(recorded).version == 5  # Klarna's guides ask for a UUID
    [transaction] = kit.fake.transactions
    assert transaction.idempotency_key == recorded


def test_the_key_is_deterministic_per_payment_and_attempt(kit: Kit, clock: ManualClock) -> None:
    # Attempt 1 is refused by Klarna without acting (400), attempt 2 succeeds.
    created = kit.completed()
    kit.fake.fail_next(400)
    failed = kit.payments.authorize(created.payment_id)
    assert (failed.result, failed.state) == (OutcomeResult.FAILED, S.COMPLETED)
    approved = kit.payments.authorize(created.payment_id)
    assert approved.result is OutcomeResult.APPROVED
    keys = requested_keys(kit, created.payment_id)
    assert kit.sent_keys() == keys
    assert len(set(keys)) == 2

    # The same payment (same account and reference) in another, in-memory
    # store with another fake gets the same keys for the same attempts.
    elsewhere: list[Payments] = []

    def in_memory(**kwargs: Any) -> Payments:
        elsewhere.append(
            Payments({"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=clock, **kwargs)
        )
        return elsewhere[-1]

    with open_kit(in_memory, clock) as other:
        twin = other.create()
        other.complete(twin)
        assert twin.payment_id == created.payment_id
        other.fake.fail_next(400)
        other.payments.authorize(twin.payment_id)
        other.payments.authorize(twin.payment_id)
        assert requested_keys(other, twin.payment_id) == keys
    elsewhere[0].close()

    # Another payment gets other keys.
    third = kit.completed()
    kit.payments.authorize(third.payment_id)
    assert not set(requested_keys(kit, third.payment_id)) & set(keys)


# -- refusals -------------------------------------------------------------------


def test_after_sixty_minutes_authorize_records_expiry_and_sends_nothing(kit: Kit) -> None:
    created = kit.completed()
    kit.clock.advance(WINDOW)

    with pytest.raises(AuthorizationWindowElapsed) as caught:
        kit.payments.authorize(created.payment_id)

    assert caught.value.payment_id == created.payment_id
    assert caught.value.state == "EXPIRED"
    assert kit.fake.requests == []
    payment = kit.payments.get(created.payment_id)
    assert (payment.state, payment.expiry_reason) == (S.EXPIRED, "AUTHORIZATION_WINDOW")
    events = kit.events(created.payment_id)
    assert [type(e).__name__ for e in events] == [
        "PaymentCreated",
        "PurchaseCompleted",
        "PaymentExpired",
    ]
    assert events[-1].cause == "command:authorize"
    with pytest.raises(InvalidTransition):
        kit.payments.authorize(created.payment_id)
    assert kit.fake.requests == []


def test_just_inside_the_window_authorize_goes_through(kit: Kit) -> None:
    created = kit.completed()
    kit.clock.advance(WINDOW - timedelta(seconds=1))

    outcome = kit.payments.authorize(created.payment_id)

    assert outcome.result is OutcomeResult.APPROVED


def test_the_window_counts_from_klarnas_completion_time(kit: Kit) -> None:
    # The notification is delivered 50 minutes late: only 10 minutes remain.
    created = kit.create()
    done = kit.fake.complete_payment_request(created.payment_request_id)
    kit.clock.advance(timedelta(minutes=50))
    kit.payments.handle_notification(done.notification.body, done.notification.headers)
    assert kit.payments.get(created.payment_id).completed_at == done.completed_at
    kit.clock.advance(timedelta(minutes=10))

    with pytest.raises(AuthorizationWindowElapsed):
        kit.payments.authorize(created.payment_id)
    assert kit.fake.requests == []


def test_a_created_payment_cannot_be_authorized(kit: Kit) -> None:
    created = kit.create()

    with pytest.raises(InvalidTransition) as caught:
        kit.payments.authorize(created.payment_id)

    assert caught.value.state == "CREATED"
    assert kit.fake.requests == []
    assert kit.names(created.payment_id) == ["PaymentCreated"]


def test_a_second_authorize_after_approval_is_refused(kit: Kit) -> None:
    created = kit.completed()
    kit.payments.authorize(created.payment_id)
    events = kit.names(created.payment_id)

    with pytest.raises(InvalidTransition) as caught:
        kit.payments.authorize(created.payment_id)

    assert caught.value.state == "AUTHORIZED"
    assert len(kit.fake.requests) == 1
    assert len(kit.fake.transactions) == 1
    assert kit.names(created.payment_id) == events


def test_authorize_while_authorizing_is_in_progress_and_sends_nothing(kit: Kit) -> None:
    created = kit.completed()
    kit.fake.timeout_next(after_processing=False)
    kit.fake.timeout_next(after_processing=False)
    kit.fake.timeout_next(after_processing=False)
    pending = kit.payments.authorize(created.payment_id)
    assert (pending.result, pending.state) == (OutcomeResult.PENDING, S.AUTHORIZING)
    sent = len(kit.fake.requests)

    with pytest.raises(AuthorizationInProgress):
        kit.payments.authorize(created.payment_id)

    assert len(kit.fake.requests) == sent
    assert requested_keys(kit, created.payment_id) == [pending.idempotency_key]


def test_canceled_and_expired_payments_are_refused(kit: Kit) -> None:
    canceled = kit.completed()
    kit.payments.cancel(canceled.payment_id)
    expired = kit.create()
    kit.clock.advance(timedelta(hours=3))
    kit.payments.expire(expired.payment_id)

    for payment_id in (canceled.payment_id, expired.payment_id):
        with pytest.raises(InvalidTransition):
            kit.payments.authorize(payment_id)
    assert kit.fake.requests == []


def test_without_a_klarna_client_nothing_is_recorded(make_payments: MakePayments, kit: Kit) -> None:
    bare = make_payments(partner_account_id=kit.fake.partner_account_id)
    token = kit.fake.issue_session_token(amount=AMOUNT, currency=CURRENCY)
    payment_id = bare.create(
        flow=Flow.AUTHORIZATION, amount=AMOUNT, currency=CURRENCY, reference="no-client"
    )
    bare.complete(payment_id, session_token=token)

    with pytest.raises(ConfigurationError):
        bare.authorize(payment_id)

    assert event_names(bare, payment_id) == ["PaymentCreated", "PurchaseCompleted"]
    assert kit.fake.requests == []


# -- the outcome of a payment never sent to Klarna ----------------------------------


def test_a_payment_never_sent_to_klarna_has_no_outcome(kit: Kit) -> None:
    created = kit.create()
    canceled = kit.create()
    kit.payments.cancel(canceled.payment_id)
    completed = kit.completed()

    assert kit.payments.outcome(created.payment_id) is None
    assert kit.payments.outcome(canceled.payment_id) is None
    assert kit.payments.outcome(completed.payment_id) is None
    # Canceling reached Klarna (its open request), never its authorize endpoint.
    assert [r.method for r in kit.fake.requests] == ["DELETE"]


def test_the_outcome_is_the_last_attempt_s_even_after_the_payment_moved_on(kit: Kit) -> None:
    stepped_up = kit.completed()
    kit.fake.step_up_next()
    kit.payments.authorize(stepped_up.payment_id)
    failed = kit.completed()
    kit.fake.fail_next(409)
    kit.payments.authorize(failed.payment_id)
    kit.clock.advance(WINDOW)
    kit.payments.expire_overdue()

    after_step_up = kit.payments.outcome(stepped_up.payment_id)
    after_failure = kit.payments.outcome(failed.payment_id)

    assert after_step_up is not None
    assert after_step_up.result is OutcomeResult.STEP_UP_REQUIRED
    assert after_step_up.payment_request_url is not None
    assert after_failure is not None
    assert (after_failure.result, after_failure.state) == (OutcomeResult.FAILED, S.EXPIRED)


# -- a client that cannot send -------------------------------------------------------


def test_a_closed_client_is_refused_before_anything_is_recorded(kit: Kit) -> None:
    created = kit.completed()
    assert kit.payments.klarna is not None
    kit.payments.klarna.close()

    with pytest.raises(ConfigurationError, match="closed"):
        kit.payments.authorize(created.payment_id)
    with pytest.raises(ConfigurationError, match="closed"):
        kit.payments.reconcile()

    assert kit.names(created.payment_id) == ["PaymentCreated", "PurchaseCompleted"]
    assert kit.payments.get(created.payment_id).state is S.COMPLETED
    assert kit.fake.requests == []


# -- a lost race names the state found --------------------------------------------------


class _RunOnceOnFirstRead:
    """A clock that lets another worker act between this worker's load and its save."""

    def __init__(self, clock: ManualClock, act: Any) -> None:
        self.clock = clock
        self.act = act

    def now(self) -> Any:
        act, self.act = self.act, None
        if act is not None:
            act()
        return self.clock.now()


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_worker_that_loses_the_race_reports_the_state_it_found(
    kit: Kit, make_payments: MakePayments
) -> None:
    created = kit.completed()
    winner = kit.payments
    loser = make_payments(
        klarna=winner.klarna,
        clock=_RunOnceOnFirstRead(kit.clock, lambda: winner.authorize(created.payment_id)),
    )

    with pytest.raises(AuthorizationInProgress) as caught:
        loser.authorize(created.payment_id)

    assert caught.value.state == "AUTHORIZED"
    assert "AUTHORIZED" in str(caught.value)
    assert len(kit.fake.requests) == 1


# -- workers racing to authorize -----------------------------------------------------------
# Workers racing to authorize the same payment: one call to Klarna, ever.
#
# Eight threads authorize one payment at the same instant (a barrier), each
# with its own ``Payments`` on one store (SQLite file, PostgreSQL schema), or all
# sharing one ``Payments``. Optimistic concurrency on ``AuthorizationRequested``
# picks the one worker that goes on; every other worker is told
# ``AuthorizationInProgress`` (a ``ConcurrentModification``) and sends nothing.
#
# The winner's HTTP call is held until every loser has returned, so no loser can
# arrive after the outcome is recorded and see a final payment instead of a race.


WORKERS = 8
DURABLE = ["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres])]


class HoldUntilLosersReturn:
    """In front of the fake: a request waits until ``losers`` workers have given up."""

    def __init__(self, fake: FakeKlarna, losers: int) -> None:
        self.fake = fake
        self.losers = losers
        self._given_up = 0
        self._changed = threading.Condition()

    def gave_up(self) -> None:
        with self._changed:
            self._given_up += 1
            self._changed.notify_all()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._changed:
            self._changed.wait_for(lambda: self._given_up >= self.losers, timeout=10)
        return self.fake(request)


Attempt = AuthorizationOutcome | KlarnaFlowError


def race(
    workers: Sequence[Callable[[], AuthorizationOutcome]], hold: HoldUntilLosersReturn
) -> list[Attempt]:
    """Run every worker at once; return each one's outcome or error."""
    barrier = threading.Barrier(len(workers))
    results: list[Attempt] = []
    lock = threading.Lock()

    def run(work: Callable[[], AuthorizationOutcome]) -> None:
        barrier.wait()
        result: Attempt
        try:
            result = work()
        except KlarnaFlowError as e:
            result = e
            hold.gave_up()
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == len(workers)
    return results


def check_one_winner(kit: Kit, payment_id: object, results: list[Attempt]) -> None:
    outcomes = [r for r in results if isinstance(r, AuthorizationOutcome)]
    refusals = [r for r in results if not isinstance(r, AuthorizationOutcome)]
    assert len(outcomes) == 1, results
    assert outcomes[0].result is OutcomeResult.APPROVED
    assert len(refusals) == WORKERS - 1
    for refusal in refusals:
        assert isinstance(refusal, ConcurrentModification), refusal
        assert refusal.payment_id == payment_id
    assert len(kit.fake.requests) == 1
    assert len(kit.fake.transactions) == 1
    assert event_names(kit.payments, outcomes[0].payment_id).count("AuthorizationRequested") == 1
    assert kit.payments.get(outcomes[0].payment_id).state is PaymentState.AUTHORIZED


@pytest.mark.parametrize("store", DURABLE)
def test_workers_with_their_own_payments_race_and_one_calls_klarna(
    kit: Kit, make_payments: MakePayments
) -> None:
    created = kit.completed()
    hold = HoldUntilLosersReturn(kit.fake, losers=WORKERS - 1)
    with klarna_client(hold) as client:
        apps = [make_payments(klarna=client) for _ in range(WORKERS)]
        workers = [functools.partial(app.authorize, created.payment_id) for app in apps]

        results = race(workers, hold)

    check_one_winner(kit, created.payment_id, results)


def test_workers_sharing_one_payments_race_and_one_calls_klarna(kit: Kit) -> None:
    created = kit.completed()
    hold = HoldUntilLosersReturn(kit.fake, losers=WORKERS - 1)
    with klarna_client(hold) as client:
        kit.payments.klarna = client
        workers = [functools.partial(kit.payments.authorize, created.payment_id)] * WORKERS

        results = race(workers, hold)

    check_one_winner(kit, created.payment_id, results)


@pytest.mark.parametrize("store", DURABLE)
def test_workers_reconciling_one_payment_record_one_outcome(
    kit: Kit, make_payments: MakePayments
) -> None:
    # Reconcile may re-send from several workers: the same key makes Klarna
    # answer each with the one transaction, and one outcome is recorded.
    created = kit.completed()
    for _ in range(3):
        kit.fake.timeout_next(after_processing=True)
    assert kit.payments.authorize(created.payment_id).result is OutcomeResult.PENDING
    apps = [make_payments(klarna=kit.payments.klarna) for _ in range(4)]
    barrier = threading.Barrier(len(apps))
    outcomes: list[list[AuthorizationOutcome]] = []

    def reconcile(app: Payments) -> None:
        barrier.wait()
        outcomes.append(app.reconcile(older_than=timedelta(0)))

    threads = [threading.Thread(target=reconcile, args=(app,)) for app in apps]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    [transaction] = kit.fake.transactions
    results = [o for batch in outcomes for o in batch]
    assert results
    assert {o.result for o in results} == {OutcomeResult.APPROVED}
    assert {o.payment_transaction_id for o in results} == {transaction.payment_transaction_id}
    events = list(kit.payments.stored_events(created.payment_id))
    assert sum(isinstance(e, Payment.AuthorizationApproved) for e in events) == 1
    assert {r.headers["Klarna-Idempotency-Key"] for r in kit.fake.requests} == {
        results[0].idempotency_key
    }


# -- the window closes during a race -------------------------------------------------------
# The window closes while another worker requests authorization: the late
# worker reports what happened, not what it meant to record.


WINDOW_RACE_TOKEN = "krn:payment:eu1:klarna-network-session-token:window-race"


def _two_workers(tmp_path: Path) -> tuple[Payments, Payments, ManualClock]:
    clock, cipher = ManualClock(), TokenCipher.ephemeral()
    db = tmp_path / "p.sqlite"
    return (
        Payments.sqlite(db, clock=clock, cipher=cipher),
        Payments.sqlite(db, clock=clock, cipher=cipher),
        clock,
    )


def test_a_late_expiry_that_loses_to_a_request_reports_authorization_in_progress(
    tmp_path: Path,
) -> None:
    late, early, clock = _two_workers(tmp_path)
    payment_id = early.create(flow=Flow.AUTHORIZATION, amount=1, currency="EUR", reference="w")
    early.complete(payment_id, session_token=WINDOW_RACE_TOKEN)
    stale = late.get(payment_id)  # loaded just before the window closed
    clock.advance(timedelta(minutes=59))
    current = early.get(payment_id)
    current.request_authorization(idempotency_key="k-1", now=early.now())
    early._store.save_payment(current)  # the other worker got in first
    clock.advance(timedelta(minutes=2))

    with pytest.raises(AuthorizationInProgress):
        _expire_if_window_elapsed(late._ledger, stale, late.now())

    assert late.get(payment_id).state is PaymentState.AUTHORIZING


def test_a_late_expiry_that_loses_to_another_expiry_reports_the_state_found(
    tmp_path: Path,
) -> None:
    late, early, clock = _two_workers(tmp_path)
    payment_id = early.create(flow=Flow.AUTHORIZATION, amount=1, currency="EUR", reference="w2")
    early.complete(payment_id, session_token=WINDOW_RACE_TOKEN)
    stale = late.get(payment_id)
    clock.advance(timedelta(minutes=61))
    early.expire(payment_id)

    with pytest.raises(AuthorizationWindowElapsed, match="EXPIRED") as caught:
        _expire_if_window_elapsed(late._ledger, stale, late.now())

    assert caught.value.state == "EXPIRED"
    assert len(list(late.stored_events(payment_id))) == 3  # nothing recorded twice
