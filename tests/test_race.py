"""Workers racing to authorize the same payment: one call to Klarna, ever.

Eight threads authorize one payment at the same instant (a barrier), each
with its own ``Payments`` on one store (SQLite file, PostgreSQL schema), or all
sharing one ``Payments``. Optimistic concurrency on ``AuthorizationRequested``
picks the one worker that goes on; every other worker is told
``AuthorizationInProgress`` (a ``ConcurrentModification``) and sends nothing.

The winner's HTTP call is held until every loser has returned, so no loser can
arrive after the outcome is recorded and see a final payment instead of a race.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta

import httpx
import pytest

from klarna_flow import (
    AuthorizationOutcome,
    ConcurrentModification,
    KlarnaFlowError,
    OutcomeResult,
    Payment,
    Payments,
    PaymentState,
)
from klarna_flow.testing import FakeKlarna, ManualClock
from tests._flow_helpers import Kit, MakePayments, event_names, klarna_client, open_kit

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


@pytest.fixture
def kit(make_payments: MakePayments, clock: ManualClock) -> Iterator[Kit]:
    with open_kit(make_payments, clock) as kit:
        yield kit


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
