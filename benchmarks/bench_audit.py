"""Benchmarks of replay and verification over a 100,000-event SQLite log.

- ``replay``: ``rebuild_read_models()`` (drop the payment index, rebuild it
  from the notification log) against eventsourcing reading the same log with
  no processing (``select_notifications`` in pages of the same size until the
  end). ratio = replay rate / raw read rate (goal >= 0.90).
- ``verify``: a whole-log ``verify()`` (every digest recomputed, the index
  compared) against the same raw read. ratio = verify rate / raw rate (goal
  >= 0.75).

The log holds 25,000 payments of four events each (created, completed with a
sealed session token, authorization requested, approved), written with many
payments per save. It is built once and kept under the temporary directory,
named by :data:`LOG_VERSION`; change that when the stored format changes.
Both sides read through an ``AuditLog`` (no cipher key), as an auditor would.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid5

from benchmarks._harness import best_of, report
from klarna_flow import Flow, Payment, Payments, TokenCipher
from klarna_flow._audit.log import AuditLog
from klarna_flow._audit.verify import PAGE_SIZE as VERIFY_PAGE
from klarna_flow._store.payment_store import payment_id_for
from klarna_flow._store.projections import _BATCH as REPLAY_PAGE

LOG_VERSION = "v2"
PAYMENTS = 25_000
EVENTS = PAYMENTS * 4
SAVE_BATCH = 500
ACCOUNT = "krn:partner:global:account:bench"
TOKEN = "krn:payment:eu1:klarna-network-session-token:bench-{}"  # noqa: S105  (a dummy)
START = datetime(2025, 1, 1, 12, tzinfo=UTC)


def log_path() -> Path:
    return Path(tempfile.gettempdir()) / f"klarna_flow_bench_audit_{LOG_VERSION}.sqlite"


def _payment(app: Payments, n: int) -> Payment:
    payment_id = payment_id_for(ACCOUNT, f"bench-{n}")
    now = START + timedelta(seconds=n)
    payment = Payment.create(
        payment_id=payment_id,
        flow=Flow.AUTHORIZATION,
        amount=11800,
        currency="EUR",
        reference=f"bench-{n}",
        partner_account_id=ACCOUNT,
        payment_request_id=f"krn:payment:eu1:payment-request:bench-{n}",
        request_lifetime=app.request_lifetime,
        now=now,
    )
    payment.complete(
        session_token=app._store.seal(payment_id, "session_token", TOKEN.format(n)),
        customer_token=None,
        completed_at=now,
        now=now,
        cause="notification:" + str(uuid5(payment_id, "completed")),
    )
    payment.request_authorization(idempotency_key=str(uuid5(payment_id, "1")), now=now)
    payment.approve(
        payment_transaction_id=f"krn:payment:eu1:transaction:bench-{n}",
        correlation_id=str(uuid5(payment_id, "correlation")),
        transaction_expires_at=now + timedelta(days=28),
        now=now,
        cause="command:authorize",
    )
    return payment


def build_log() -> Path:
    """The benchmark log, built if it is not there yet (a few seconds)."""
    path = log_path()
    if path.exists():
        return path
    partial = path.with_suffix(f".{os.getpid()}.partial")
    app = Payments.sqlite(partial, cipher=TokenCipher.ephemeral())
    try:
        for start in range(0, PAYMENTS, SAVE_BATCH):
            app._store.save(*(_payment(app, n) for n in range(start, start + SAVE_BATCH)))
        assert app._store.recorder.max_notification_id() == EVENTS
    finally:
        app.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{partial}{suffix}").unlink(missing_ok=True)
    partial.rename(path)
    return path


def _raw_read(log: AuditLog, page: int) -> int:
    recorder = log._store.recorder
    start, read = 1, 0
    while notifications := recorder.select_notifications(start=start, limit=page):
        read += len(notifications)
        start = notifications[-1].id + 1
    return read


def _alternating(
    a: Callable[[], object], b: Callable[[], object], rounds: int = 3
) -> tuple[float, float]:
    """Best times of ``a`` and ``b``, run in turns so that load on a shared
    machine falls on both alike."""
    times_a, times_b = [], []
    for _ in range(rounds):
        times_a.append(best_of(a, repeat=1))
        times_b.append(best_of(b, repeat=1))
    return min(times_a), min(times_b)


def bench_replay() -> str:
    path = build_log()
    with AuditLog.open(path) as log:
        assert _raw_read(log, REPLAY_PAGE) == EVENTS
        assert log.rebuild_read_models() == EVENTS
        raw, replay = _alternating(lambda: _raw_read(log, REPLAY_PAGE), log.rebuild_read_models)
        assert log.counts_by_state() == {"AUTHORIZED": PAYMENTS}
    return report(
        "replay",
        raw / replay,
        f"events={EVENTS} replay={EVENTS / replay:,.0f}/s raw={EVENTS / raw:,.0f}/s "
        f"page={REPLAY_PAGE} goal>=0.90",
    )


def bench_verify() -> str:
    path = build_log()
    with AuditLog.open(path) as log:
        log.counts_by_state()  # the index is caught up (its versions are compared)
        report_ = log.verify()
        assert report_.ok, report_.findings
        assert report_.events_checked == EVENTS
        raw, verify = _alternating(lambda: _raw_read(log, VERIFY_PAGE), log.verify)
    return report(
        "verify",
        raw / verify,
        f"events={EVENTS} verify={EVENTS / verify:,.0f}/s raw={EVENTS / raw:,.0f}/s "
        f"page={VERIFY_PAGE} goal>=0.75",
    )


BENCHMARKS = {"replay": bench_replay, "verify": bench_verify}
