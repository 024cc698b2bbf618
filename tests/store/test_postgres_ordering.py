"""Racing writers on one PostgreSQL store: a reader of the notification log never skips.

A reader that follows the log asks for the events after the last id it has
seen. If a writer could commit an event with a lower id after a reader had
read a higher one, that reader would pass it for good: its projection would
miss an event. Each save takes the events table's lock before its ids are
issued and keeps it until it has committed (``heads_postgres``), so ids are
issued in commit order; these tests race eight writer processes against
readers and projections that follow the log while it grows, and compare all
they read with the final log.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from klarna_flow import (
    Clock,
    CommandRefused,
    ConcurrentModification,
    Flow,
    Payments,
    PaymentState,
    TokenCipher,
    generate_key,
)
from klarna_flow._store.locations import postgres_env
from klarna_flow.testing import ManualClock
from tests.conftest import PG_URL

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

WRITERS = 8
PAYMENTS_PER_WRITER = 40
SHARED = 10  # payments every writer tries to expire: saves that conflict and roll back
ACCOUNT = "krn:partner:global:account:ordering"
TOKEN = "krn:payment:eu1:klarna-network-session-token:ordering"


def _env(schema: str, *, create: bool) -> dict[str, str]:
    assert PG_URL is not None
    return {
        **postgres_env(PG_URL),
        "POSTGRES_SCHEMA": schema,
        "CREATE_TABLE": "y" if create else "n",
    }


def _open(schema: str, key: str, *, create: bool = False, clock: Clock | None = None) -> Payments:
    return Payments(
        _env(schema, create=create),
        cipher=TokenCipher(key),
        partner_account_id=ACCOUNT,
        clock=clock,
    )


def _write(  # noqa: PLR0917  (a process target's arguments)
    schema: str, key: str, writer: int, shared: list[str], start: Any, results: Any
) -> None:
    """One writer: create and complete payments, and race the others to expire the shared ones."""
    # A day ahead: the shared payments' requests have expired.
    payments = _open(schema, key, clock=ManualClock(datetime.now(UTC) + timedelta(days=1)))
    saves = 0
    start.wait()
    try:
        for n in range(PAYMENTS_PER_WRITER):
            payment_id = payments.create(
                flow=Flow.AUTHORIZATION, amount=1000, currency="EUR", reference=f"w{writer}-{n}"
            )
            payments.complete(payment_id, session_token=TOKEN)
            saves += 2
            if n < len(shared):
                try:
                    payments.expire(UUID(shared[(n + writer) % len(shared)]))
                    saves += 1
                except (ConcurrentModification, CommandRefused):
                    pass  # another writer expired it first
    finally:
        payments.close()
    results.put(saves)


def _follow(payments: Payments, seen: list[int], stop: threading.Event) -> None:
    """Read the log as a projection does: always from just after the last id read."""
    recorder = payments._store.recorder
    last = 0
    while True:
        done = stop.is_set()  # read once more after the writers have finished
        batch = recorder.select_notifications(start=last + 1, limit=50)
        seen.extend(n.id for n in batch)
        if batch:
            last = batch[-1].id
        elif done:
            return


def _catch_up(payments: Payments, stop: threading.Event, errors: list[Exception]) -> None:
    """A worker's payment index, caught up again and again while the log grows."""
    try:
        while not stop.is_set():
            payments.counts_by_state()
        payments.counts_by_state()
    except Exception as e:  # noqa: BLE001  (reported by the test)
        errors.append(e)


def test_readers_following_the_log_never_skip_an_event_of_eight_racing_writers(
    pg_schema: str,
) -> None:
    key = generate_key()
    setup = _open(pg_schema, key, create=True)
    shared = []
    for n in range(SHARED):
        payment_id = setup.create(
            flow=Flow.AUTHORIZATION, amount=1000, currency="EUR", reference=f"shared-{n}"
        )
        shared.append(str(payment_id))
    readers = [_open(pg_schema, key) for _ in range(3)]
    projections = [_open(pg_schema, key) for _ in range(2)]
    seen: list[list[int]] = [[] for _ in readers]
    errors: list[Exception] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=_follow, args=(r, s, stop))
        for r, s in zip(readers, seen, strict=True)
    ] + [threading.Thread(target=_catch_up, args=(p, stop, errors)) for p in projections]
    for thread in threads:
        thread.start()

    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    writers = [
        context.Process(target=_write, args=(pg_schema, key, w, shared, start, results))
        for w in range(WRITERS)
    ]
    try:
        for writer in writers:
            writer.start()
        time.sleep(0.5)  # the readers are reading
        start.set()
        saves = [results.get(timeout=240) for _ in writers]
        for writer in writers:
            writer.join(timeout=60)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        for writer in writers:
            if writer.is_alive():  # pragma: no cover - a writer hung
                writer.terminate()
    assert not errors, errors

    log = setup._store.recorder.select_notifications(start=1, limit=100_000)
    ids = [n.id for n in log]
    assert len(ids) == SHARED + WRITERS * PAYMENTS_PER_WRITER * 2 + SHARED  # each expired once
    assert sum(saves) == len(ids) - SHARED
    for got in seen:
        assert got == ids  # every event, in log order, none skipped, none twice
    # Each projection, caught up while the writers raced, equals one rebuilt from the log.
    rows = {r.payment_id: r for r in setup.read_model()}
    assert Counter(r.state for r in rows.values()) == {
        PaymentState.COMPLETED.value: WRITERS * PAYMENTS_PER_WRITER,
        PaymentState.EXPIRED.value: SHARED,
    }
    per_payment = Counter(n.originator_id for n in log)
    assert {UUID(str(i)): v for i, v in per_payment.items()} == {
        i: r.version for i, r in rows.items()
    }
    assert setup.rebuild_read_models() == len(ids)
    assert {r.payment_id: r for r in setup.read_model()} == rows
    # And the heads written with the events agree with the log.
    report = setup.verify()
    assert report.ok, report
    for p in (setup, *readers, *projections):
        p.close()
