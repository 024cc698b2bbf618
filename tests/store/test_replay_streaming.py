"""Replay streams: the read models it rebuilds do not depend on how the log is cut.

A rebuild reads the log a page at a time (``_BATCH``), folds a window of
records (``_WINDOW``) and writes their rows with the position they reach. So:

- any page and window sizes (down to one record) give the rows of following
  the log event by event, on every store;
- a rebuild stopped half way leaves read models that a catch-up continues, or
  a new rebuild starts again, to the same rows; a worker that catches up in
  the middle of a rebuild leaves the same rows too;
- the Python memory a rebuild uses does not grow with the number of payments
  (2,000 against 20,000 payments, measured with ``tracemalloc``, no timing).
"""

from __future__ import annotations

import gc
import sqlite3
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid5

import pytest
from eventsourcing.persistence import StoredEvent

from klarna_flow import Flow, Payment, Payments, TokenCipher
from klarna_flow._audit.log import AuditLog
from klarna_flow._store import projections
from klarna_flow._store.payment_store import payment_id_for
from klarna_flow._store.projections import PaymentIndex
from klarna_flow._store.read_models import IndexRow, MemoryIndex
from klarna_flow.cli.demo import run_demo
from klarna_flow.testing import ManualClock
from tests._flow_helpers import Kit, MakePayments, open_kit
from tests.store.test_replay import mixed_workload

SECONDARY = ("deadline", "state", "request")
SIZES = [(1, 1), (1, 5), (2, 3), (7, 1), (7, 13), (2000, 2)]
"""(page, window) sizes, in records, besides the defaults."""


def stepwise(payments_or_log: Payments | AuditLog) -> list[IndexRow]:
    """The rows of following the whole log event by event (a catch-up into memory)."""
    index = PaymentIndex(payments_or_log._store.recorder, MemoryIndex())
    index.catch_up()
    return index.store.all_rows()


@pytest.fixture
def kit(make_payments: MakePayments, clock: ManualClock) -> Iterator[Kit]:
    with open_kit(make_payments, clock) as kit:
        yield kit


def test_any_page_and_window_size_rebuilds_the_same_rows(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    mixed_workload(kit)
    p = kit.payments
    live = p.read_model()
    assert stepwise(p) == live
    events = p._store.recorder.max_notification_id()

    for page, window in SIZES:
        monkeypatch.setattr(projections, "_BATCH", page)
        monkeypatch.setattr(projections, "_WINDOW", window)
        assert p.rebuild_read_models() == events, (page, window)
        assert p.read_model() == live, (page, window)
        assert p._store.index.catch_up() == 0  # nothing is applied twice


def test_a_log_with_every_path_rebuilds_alike_in_any_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's log, run twice: step-ups, renewed lifetimes, declines,
    expiries, token charges, interleaved across payments."""
    db = tmp_path / "demo.sqlite"
    run_demo(db)
    run_demo(db)
    with AuditLog.open(db) as log:
        expected = stepwise(log)
        assert {row.state for row in expected} >= {"AUTHORIZED", "DECLINED", "EXPIRED"}
        events = log._store.recorder.max_notification_id()
        for page, window in SIZES:
            monkeypatch.setattr(projections, "_BATCH", page)
            monkeypatch.setattr(projections, "_WINDOW", window)
            assert log.rebuild_read_models() == events
            assert log.read_model() == expected, (page, window)
            in_memory = PaymentIndex(log._store.recorder, MemoryIndex())
            in_memory.rebuild()
            assert in_memory.store.all_rows() == expected, (page, window)


class Stop(Exception):
    """Stands for whatever ends a replay half way (a crash, a signal)."""


def _index_names(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?",
            ("payments_payment_index",),
        )
        return {name for (name,) in rows if not name.startswith("sqlite_")}


@pytest.mark.parametrize("then", ["catch_up", "rebuild", "another_process"])
def test_a_replay_stopped_half_way_ends_with_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, then: str
) -> None:
    db = tmp_path / "demo.sqlite"
    run_demo(db)
    run_demo(db)
    monkeypatch.setattr(projections, "_BATCH", 3)
    monkeypatch.setattr(projections, "_WINDOW", 9)
    with AuditLog.open(db) as log:
        expected = stepwise(log)
        events = log._store.recorder.max_notification_id() or 0
        index = log._store.index

        def stop_half_way(done: int, total: int) -> None:
            if done >= total // 2:
                raise Stop

        with pytest.raises(Stop):
            log.rebuild_read_models(progress=stop_half_way)
        written = index.store.position()
        assert 0 < written < events  # rows were written as the replay went
        if then == "catch_up":
            assert index.catch_up() == events - written
        elif then == "rebuild":
            assert log.rebuild_read_models() == events
    if then == "another_process":
        with AuditLog.open(db) as log:
            assert log._store.index.store.position() == written
            assert log.read_model() == expected  # caught up from where the replay stopped
    else:
        with AuditLog.open(db, read_only=True) as log:
            assert log.read_model() == expected
    assert _index_names(db) == {
        f"payments_payment_index_{s}" for s in ("deadline", "state", "request")
    }


def test_a_worker_catching_up_during_a_replay_leaves_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process catches up while a replay writes: the replay's next
    write finds the position moved, and it follows from there."""
    db = tmp_path / "demo.sqlite"
    run_demo(db)
    run_demo(db)
    monkeypatch.setattr(projections, "_BATCH", 2)
    monkeypatch.setattr(projections, "_WINDOW", 6)
    with AuditLog.open(db) as log, AuditLog.open(db) as worker:
        expected = stepwise(log)
        events = log._store.recorder.max_notification_id() or 0
        caught_up: list[int] = []

        def meanwhile(done: int, total: int) -> None:
            if done >= total // 3 and not caught_up:
                caught_up.append(worker._store.index.catch_up())

        assert log.rebuild_read_models(progress=meanwhile) + caught_up[0] == events
        assert caught_up[0] > 0
        assert log.read_model() == expected
        assert worker.read_model() == expected


# -- memory ------------------------------------------------------------------------------

START = datetime(2025, 1, 1, 12, tzinfo=UTC)
ACCOUNT = "krn:partner:global:account:streaming"
BLOCK = 100


def build_store(path: Path, payments: int) -> Path:
    """A store of ``payments`` payments of four events each, written by the
    library's mapper and recorder: each step creates a block of payments and
    moves the three blocks before it on, so a payment's events lie blocks apart."""
    app = Payments.sqlite(path, cipher=TokenCipher.ephemeral())
    store = app._store
    blocks: dict[int, list[Payment]] = {}
    records: list[StoredEvent] = []
    for step in range(payments // BLOCK + 3):
        now = START + timedelta(seconds=step)
        if step < payments // BLOCK:
            blocks[step] = [
                Payment.create(
                    payment_id=payment_id_for(ACCOUNT, f"s-{n}"),
                    flow=Flow.AUTHORIZATION,
                    amount=100 + n,
                    currency="EUR",
                    reference=f"s-{n}",
                    partner_account_id=ACCOUNT,
                    payment_request_id=f"krn:payment:eu1:payment-request:s-{n}",
                    request_lifetime=app.request_lifetime,
                    now=now,
                )
                for n in range(step * BLOCK, (step + 1) * BLOCK)
            ]
        moved = [*blocks.get(step, []), *blocks.get(step - 1, [])]
        moved += [*blocks.get(step - 2, []), *blocks.get(step - 3, [])]
        for payment in blocks.get(step - 1, []):
            payment.complete(
                session_token=store.seal(payment.id, "session_token", "krn:x:token"),
                customer_token=None,
                completed_at=now,
                now=now,
            )
        for payment in blocks.get(step - 2, []):
            payment.request_authorization(idempotency_key=str(uuid5(payment.id, "1")), now=now)
        for payment in blocks.pop(step - 3, []):
            payment.approve(
                payment_transaction_id=f"krn:payment:eu1:transaction:{payment.id}",
                correlation_id=None,
                transaction_expires_at=None,
                now=now,
                cause="command:authorize",
            )
        for payment in moved:
            records.extend(store.mapper.to_stored_event(e) for e in payment.collect_events())
        if len(records) > 20_000:
            store.recorder.insert_events(records)
            records = []
    store.recorder.insert_events(records)
    app.close()
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Stores of 2,000 and 20,000 payments (built once for the module)."""
    folder = tmp_path_factory.mktemp("streaming")
    return {n: build_store(folder / f"{n}.sqlite", n) for n in (2_000, 20_000)}


def traced_peak(run: Any) -> int:
    """The most Python memory ``run()`` held at once, beyond what was held before."""
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before


def test_a_store_of_the_builder_is_realistic(stores: dict[int, Path]) -> None:
    with AuditLog.open(stores[2_000]) as log:
        assert log._store.recorder.max_notification_id() == 8_000
        assert log.verify().ok
        assert log.rebuild_read_models() == 8_000
        assert log.counts_by_state() == {"AUTHORIZED": 2_000}
        first: UUID = log.read_model()[0].payment_id
        assert [e.event for e in log.trail(first)][-1] == "AuthorizationApproved"


@pytest.mark.slow
def test_a_replays_memory_does_not_grow_with_the_payments(
    stores: dict[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A window of 1,000 records (250 payments): both stores span many windows.
    monkeypatch.setattr(projections, "_WINDOW", 1_000)
    peaks = {}
    for payments, path in stores.items():
        with AuditLog.open(path) as log:
            log.rebuild_read_models()  # caches and statements warmed, as for the larger one
            peaks[payments] = traced_peak(log.rebuild_read_models)
            assert log.counts_by_state() == {"AUTHORIZED": payments}
    # Ten times the payments: about the same memory (it held every payment: ten times).
    assert peaks[20_000] < 1.5 * peaks[2_000], peaks
