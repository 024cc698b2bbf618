"""The expiry sweep and the payment index it reads, on every store.

``expire_overdue`` expires ``COMPLETED`` authorization payments when their
60-minute window closes and ``CREATED`` payments when their request lifetime
(3 hours unless configured) runs out; a completed pure tokenization payment
never expires. The index is a projection of the notification log, updated
exactly once per event however many workers catch up at the same time.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any, cast
from uuid import UUID

import pytest

from klarna_flow import Flow, Payments, PaymentState
from klarna_flow._store.read_models import IndexRow, ReadModelStore
from klarna_flow.testing import ManualClock
from tests._flow_helpers import Kit, MakePayments, event_names, open_kit

S = PaymentState
WINDOW = timedelta(minutes=60)
LIFETIME = timedelta(hours=3)
SECOND = timedelta(seconds=1)
AUTHORIZING_FLOWS = [Flow.AUTHORIZATION, Flow.AUTHORIZATION_AND_TOKENIZATION]


@pytest.fixture
def kit(make_payments: MakePayments, clock: ManualClock) -> Iterator[Kit]:
    with open_kit(make_payments, clock) as kit:
        yield kit


def check_expired(kit: Kit, payment_id: UUID, reason: str) -> None:
    payment = kit.payments.get(payment_id)
    assert (payment.state, payment.expiry_reason) == (S.EXPIRED, reason)
    assert kit.events(payment_id)[-1].cause == "command:expire_overdue"


@pytest.mark.parametrize("flow", AUTHORIZING_FLOWS)
def test_a_completed_payment_expires_when_its_window_closes(kit: Kit, flow: Flow) -> None:
    created = kit.completed(flow)

    kit.clock.advance(WINDOW - SECOND)
    assert kit.payments.expire_overdue() == []
    kit.clock.advance(SECOND)
    assert kit.payments.expire_overdue() == [created.payment_id]

    check_expired(kit, created.payment_id, "AUTHORIZATION_WINDOW")
    assert kit.payments.expire_overdue() == []
    assert kit.payments.counts_by_state() == {"EXPIRED": 1}


def test_the_window_counts_from_klarnas_completion_time(kit: Kit) -> None:
    created = kit.create()
    done = kit.fake.complete_payment_request(created.payment_request_id)
    kit.clock.advance(timedelta(minutes=45))  # the notification arrives late
    kit.payments.handle_notification(done.notification.body, done.notification.headers)

    kit.clock.advance(timedelta(minutes=15) - SECOND)
    assert kit.payments.expire_overdue() == []
    kit.clock.advance(SECOND)
    assert kit.payments.expire_overdue() == [created.payment_id]


def test_a_created_payment_expires_after_the_default_request_lifetime(kit: Kit) -> None:
    created = kit.create()

    kit.clock.advance(LIFETIME - SECOND)
    assert kit.payments.expire_overdue() == []
    kit.clock.advance(SECOND)
    assert kit.payments.expire_overdue() == [created.payment_id]

    check_expired(kit, created.payment_id, "REQUEST_LIFETIME")


def test_a_configured_request_lifetime_is_used(
    make_payments: MakePayments, clock: ManualClock
) -> None:
    with open_kit(make_payments, clock, request_lifetime=timedelta(minutes=20)) as kit:
        created = kit.create()

        kit.clock.advance(timedelta(minutes=20) - SECOND)
        assert kit.payments.expire_overdue() == []
        kit.clock.advance(SECOND)
        assert kit.payments.expire_overdue() == [created.payment_id]
        check_expired(kit, created.payment_id, "REQUEST_LIFETIME")


def test_a_completed_tokenization_payment_never_expires(kit: Kit) -> None:
    created = kit.completed(Flow.TOKENIZATION)

    kit.clock.advance(timedelta(days=400))

    assert kit.payments.expire_overdue() == []
    assert kit.payments.get(created.payment_id).state is S.COMPLETED


def test_a_created_tokenization_payment_expires_like_any_request(kit: Kit) -> None:
    created = kit.create(Flow.TOKENIZATION)

    kit.clock.advance(LIFETIME)

    assert kit.payments.expire_overdue() == [created.payment_id]


def test_the_sweep_expires_exactly_the_overdue_payments(kit: Kit) -> None:
    authorized = kit.completed()
    kit.payments.authorize(authorized.payment_id)
    declined = kit.completed()
    kit.fake.decline_next()
    kit.payments.authorize(declined.payment_id)
    pending = kit.completed()
    for _ in range(3):
        kit.fake.fail_next(503)
    kit.payments.authorize(pending.payment_id)
    canceled = kit.create()
    kit.payments.cancel(canceled.payment_id)
    tokenized = kit.completed(Flow.TOKENIZATION)
    window = kit.completed()
    retried = kit.completed()  # a definitive failure reopens it: its window still runs
    kit.fake.fail_next(400)
    kit.payments.authorize(retried.payment_id)
    kit.clock.advance(timedelta(minutes=30))
    fresh = kit.create()
    kit.clock.advance(timedelta(minutes=30))

    expired = kit.payments.expire_overdue()

    assert sorted(expired) == sorted([window.payment_id, retried.payment_id])
    kit.clock.advance(LIFETIME)
    assert kit.payments.expire_overdue() == [fresh.payment_id]
    assert kit.payments.counts_by_state() == {
        "AUTHORIZED": 1,
        "DECLINED": 1,
        "AUTHORIZING": 1,
        "CANCELED": 1,
        "COMPLETED": 1,
        "EXPIRED": 3,
    }
    assert kit.payments.get(tokenized.payment_id).state is S.COMPLETED


def test_a_step_up_renews_the_request_lifetime(kit: Kit) -> None:
    created = kit.completed()
    kit.clock.advance(timedelta(minutes=30))
    kit.fake.step_up_next()
    assert kit.payments.authorize(created.payment_id).state is S.CREATED

    kit.clock.advance(LIFETIME - timedelta(minutes=30))  # the first request's lifetime
    assert kit.payments.expire_overdue() == []
    kit.clock.advance(timedelta(minutes=30))
    assert kit.payments.expire_overdue() == [created.payment_id]


def test_payments_expired_by_klarna_are_not_swept_again(kit: Kit) -> None:
    created = kit.create()
    notice = kit.fake.expire_payment_request(created.payment_request_id)
    kit.payments.handle_notification(notice.body, notice.headers)

    kit.clock.advance(LIFETIME)

    assert kit.payments.expire_overdue() == []
    assert event_names(kit.payments, created.payment_id).count("PaymentExpired") == 1


# -- the index: exactly once per event ---------------------------------------------


class RecordingStore:
    """A read-model store that remembers which position ranges it applied."""

    def __init__(self, inner: ReadModelStore) -> None:
        self.inner = inner
        self.applied: list[tuple[int, int]] = []

    def apply(self, rows: Mapping[UUID, IndexRow], *, expected: int, position: int) -> bool:
        applied = self.inner.apply(rows, expected=expected, position=position)
        if applied:
            self.applied.append((expected, position))
        return applied

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def recording(payments: Payments) -> RecordingStore:
    store = RecordingStore(payments._store.index.store)
    payments._store.index.store = cast(ReadModelStore, store)
    return store


def busy_history(kit: Kit) -> None:
    """Payments in every state, recorded by commands (nothing catches the index up)."""
    for number in range(12):
        created = kit.completed(via="command") if number % 3 else kit.create()
        if number % 3 == 1:
            kit.payments.authorize(created.payment_id)
        elif number % 4 == 0:
            kit.payments.cancel(created.payment_id)


def catch_up_together(apps: list[Payments]) -> list[dict[str, int]]:
    """Every app catches its index up at the same instant; returns their counts."""
    barrier = threading.Barrier(len(apps))
    counts: list[dict[str, int]] = []

    def catch_up(app: Payments) -> None:
        barrier.wait()
        counts.append(app.counts_by_state())

    threads = [threading.Thread(target=catch_up, args=(app,)) for app in apps]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(counts) == len(apps)
    return counts


def test_workers_catching_up_at_once_apply_each_event_exactly_once(
    kit: Kit, make_payments: MakePayments, store: str
) -> None:
    records = [recording(kit.payments)]
    busy_history(kit)
    # Durable stores share the index between instances; in memory, threads
    # share the one instance.
    apps = [kit.payments] * 2
    if store != "memory":
        apps += [make_payments() for _ in range(3)]
        records += [recording(app) for app in apps[2:]]
    for round_ in range(2):
        if round_:
            busy_history(kit)
        counts = catch_up_together(apps)
        assert all(c == counts[0] for c in counts)

    # The applied ranges chain from 0 to the last notification: no overlap, no gap.
    ranges = sorted(r for record in records for r in record.applied)
    last = kit.payments._store.recorder.max_notification_id()
    assert ranges[0][0] == 0
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert ranges[-1][1] == last == kit.payments._store.index.store.position()

    # Same rows as a replay from scratch, and each row at its payment's last version.
    rows = kit.payments.read_model()
    for row in rows:
        assert row.version == len(event_names(kit.payments, row.payment_id))
    assert kit.payments.rebuild_read_models() == last
    assert kit.payments.read_model() == rows


def test_the_index_finds_payments_by_request_and_state(kit: Kit) -> None:
    created = kit.completed()
    other = kit.create()

    assert kit.payments.find_by_payment_request(created.payment_request_id) == created.payment_id
    assert kit.payments.find_by_payment_request("krn:payment:eu1:payment-request:none") is None
    assert kit.payments.find_by_payment_request(None) is None
    assert [r.payment_id for r in kit.payments.read_model("COMPLETED")] == [created.payment_id]
    assert [r.payment_id for r in kit.payments.read_model(S.CREATED)] == [other.payment_id]
    [row] = kit.payments.read_model("COMPLETED")
    completed_at = kit.payments.get(created.payment_id).completed_at
    assert completed_at is not None
    assert row.authorize_by == (completed_at + WINDOW).timestamp()
