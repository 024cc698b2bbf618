"""Replay: read models rebuilt from scratch equal the ones kept up to date live.

A mixed workload (every state, step-up, failures, an intent left pending,
notifications, the expiry sweep) runs on every store; the payment index is
then dropped and rebuilt from the notification log and compared with the live
one, row by row, and with the payments themselves.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from klarna_flow import Flow, Payments, PaymentState, TokenCipher
from klarna_flow._store.read_models import IndexRow
from klarna_flow.testing import ManualClock
from tests._flow_helpers import Kit, MakePayments, open_kit


@pytest.fixture
def kit(make_payments: MakePayments, clock: ManualClock) -> Iterator[Kit]:
    with open_kit(make_payments, clock) as kit:
        yield kit


def mixed_workload(kit: Kit) -> dict[str, UUID]:
    """One payment in each situation the read models distinguish."""
    p = kit.payments
    ids: dict[str, UUID] = {"lifetime-expired": kit.create().payment_id}
    for name, flow in (
        ("approved", Flow.AUTHORIZATION),
        ("pay-and-tokenize", Flow.AUTHORIZATION_AND_TOKENIZATION),
    ):
        ids[name] = kit.completed(flow).payment_id
        p.authorize(ids[name])
    ids["tokenization"] = kit.completed(Flow.TOKENIZATION, via="command").payment_id
    ids["declined"] = kit.completed().payment_id
    kit.fake.decline_next()
    p.authorize(ids["declined"])
    ids["failed"] = kit.completed().payment_id
    kit.fake.fail_next(400, "VALIDATION_ERROR")
    p.authorize(ids["failed"])
    ids["reconciled"] = kit.completed().payment_id
    for _ in range(3):
        kit.fake.timeout_next(after_processing=True)
    p.authorize(ids["reconciled"])
    canceled = kit.create()
    ids["canceled"] = canceled.payment_id
    notification = kit.fake.cancel_payment_request(canceled.payment_request_id)
    assert p.handle_notification(notification.body, notification.headers).outcome == "applied"
    ids["window-expired"] = kit.completed().payment_id
    kit.clock.advance(timedelta(minutes=61))
    assert set(p.expire_overdue()) == {ids["window-expired"], ids["failed"]}
    ids["step-up"] = kit.completed().payment_id  # back to CREATED, a new request
    kit.fake.step_up_next()
    p.authorize(ids["step-up"])
    ids["open"] = kit.create().payment_id
    kit.clock.advance(timedelta(hours=2))
    assert p.expire_overdue() == [ids["lifetime-expired"]]
    assert [o.payment_id for o in p.reconcile()] == [ids["reconciled"]]
    ids["pending"] = kit.completed().payment_id
    for _ in range(3):
        kit.fake.drop_next()
    p.authorize(ids["pending"])
    return ids


def expected_row(payments: Payments, payment_id: UUID) -> tuple[object, ...]:
    """What the index should say of a payment, from the payment itself."""
    payment = payments.get(payment_id)
    deadline = payment.deadline
    return (
        payment.state.value,
        payment.flow.value,
        payment.version,
        payment.payment_request_id,
        None if deadline is None else deadline.timestamp(),
    )


def summary(row: IndexRow) -> tuple[object, ...]:
    return (row.state, row.flow, row.version, row.payment_request_id, row.deadline)


def test_rebuilt_read_models_equal_the_live_ones(kit: Kit) -> None:
    ids = mixed_workload(kit)
    p = kit.payments
    live = p.read_model()
    live_counts = p.counts_by_state()
    live_due = p._store.index.store.due(kit.clock.now().timestamp() + 86400)
    assert {r.state for r in live} == {s.value for s in PaymentState}  # every state is there

    replayed = p.rebuild_read_models()

    assert replayed > len(ids)
    assert p.read_model() == live
    assert p.counts_by_state() == live_counts
    assert sorted(p._store.index.store.due(kit.clock.now().timestamp() + 86400)) == sorted(live_due)
    for row in live:
        assert summary(row) == expected_row(p, row.payment_id)
    assert len(live) == len(set(ids.values()))
    step_up_request = p.get(ids["step-up"]).payment_request_id
    assert p.find_by_payment_request(step_up_request) == ids["step-up"]


def test_a_replay_counts_and_reports_progress(kit: Kit) -> None:
    mixed_workload(kit)
    p = kit.payments
    events = sum(1 for row in p.read_model() for _ in p.stored_events(row.payment_id))
    calls: list[tuple[int, int]] = []

    replayed = p.rebuild_read_models(progress=lambda done, total: calls.append((done, total)))

    assert replayed == events
    assert calls
    assert calls[-1][0] == calls[-1][1]
    assert p._store.index.catch_up() == 0  # nothing is applied twice
    assert p.rebuild_read_models() == events  # and a second replay is the same


def test_another_process_rebuilds_the_same_read_models(
    kit: Kit, make_payments: MakePayments, store: str
) -> None:
    if store == "memory":
        pytest.skip("each in-memory application has a store of its own")
    mixed_workload(kit)
    live = kit.payments.read_model()

    other = make_payments()
    other.rebuild_read_models()

    assert other.read_model() == live
    assert kit.payments.read_model() == live  # the shared tables, rebuilt, say the same


def test_the_index_reads_an_event_time_wherever_it_stands_in_the_payload() -> None:
    """Most events are projected from their leading timestamp; any order still works."""
    from eventsourcing.persistence import Notification

    from klarna_flow._store.projections import project

    pid = UUID(int=3)
    previous = IndexRow(pid, "AUTHORIZING", "AUTHORIZATION", 3, 1.0, 10.0, 20.0, "krn:x:y:r")
    time_ = {"_type_": "datetime_iso", "_data_": "2025-01-01T12:00:00+00:00"}
    leading = {"timestamp": time_, "cause": "command:authorize", "correlation_id": None}
    trailing = {"cause": "command:authorize", "correlation_id": None, "timestamp": time_}
    rows = []
    for payload in (leading, trailing):
        state = bytes(32) + json.dumps(payload, separators=(",", ":")).encode()
        topic = "klarna_flow._domain.payment:Payment.AuthorizationDeclined"
        rows.append(project(previous, Notification(pid, 4, topic, state, id=9)))
    expected = IndexRow(pid, "DECLINED", "AUTHORIZATION", 4, 1735732800.0, 10.0, 20.0, "krn:x:y:r")
    assert rows == [expected, expected]


def test_a_bulk_rebuild_equals_following_the_log_event_by_event(tmp_path: Path) -> None:
    """The rebuild's in-memory fold gives the rows that catching up one event
    at a time gives, on a log with every path (the demo's, run twice)."""
    from klarna_flow._audit.log import AuditLog
    from klarna_flow._store.projections import PaymentIndex
    from klarna_flow._store.read_models import MemoryIndex
    from klarna_flow.cli.demo import run_demo

    db = tmp_path / "demo.sqlite"
    run_demo(db)
    run_demo(db)
    with AuditLog.open(db) as log:
        assert log.rebuild_read_models() == log._store.recorder.max_notification_id()
        rebuilt = log.read_model()
        stepwise = PaymentIndex(log._store.recorder, MemoryIndex())
        stepwise.catch_up()
        assert rebuilt == stepwise.store.all_rows()
        assert {row.state for row in rebuilt} >= {"AUTHORIZED", "DECLINED", "EXPIRED"}


def test_a_rebuild_keeps_the_request_lifetime_a_step_up_renewed(tmp_path: Path) -> None:
    """Step-up (a new request, a new lifetime) then completion: the rebuilt row
    keeps the renewed lifetime, as following the log event by event does."""
    from klarna_flow._store.projections import PaymentIndex
    from klarna_flow._store.read_models import MemoryIndex

    clock = ManualClock()

    def make(**kwargs: Any) -> Payments:
        return Payments.sqlite(
            tmp_path / "p.sqlite", clock=clock, cipher=TokenCipher.ephemeral(), **kwargs
        )

    with open_kit(make, clock) as kit:
        p = kit.payments
        payment_id = kit.completed(Flow.AUTHORIZATION, via="command").payment_id
        clock.advance(timedelta(minutes=10))
        kit.fake.step_up_next()
        outcome = p.authorize(payment_id)
        assert outcome.state is PaymentState.CREATED
        assert outcome.payment_request_id is not None
        done = kit.fake.complete_payment_request(outcome.payment_request_id)
        p.complete(payment_id, session_token=done.session_token)

        live = p.read_model()
        assert p.rebuild_read_models() == p._store.recorder.max_notification_id()
        stepwise = PaymentIndex(p._store.recorder, MemoryIndex())
        stepwise.catch_up()
        assert p.read_model() == live == stepwise.store.all_rows()
        assert live[0].request_expires_at == (clock.now() + timedelta(hours=3)).timestamp()
        p.close()


def test_a_rebuild_leaves_the_index_tables_indexed(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "p.sqlite"
    payments = Payments.sqlite(db, cipher=TokenCipher.ephemeral())
    payments.create(flow=Flow.AUTHORIZATION, amount=1, currency="EUR", reference="indexed")

    def indexes() -> set[str]:
        with sqlite3.connect(db) as conn:
            rows = conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?",
                ("payments_payment_index",),
            )
            return {name for (name,) in rows if not name.startswith("sqlite_")}

    expected = {f"payments_payment_index_{s}" for s in ("deadline", "state", "request")}
    assert indexes() == expected
    assert payments.rebuild_read_models() == 1
    assert indexes() == expected
    assert payments.counts_by_state() == {"CREATED": 1}
    payments.close()
