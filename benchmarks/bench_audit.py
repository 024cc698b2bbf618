"""Benchmarks of replay and verification over SQLite logs of 100,000 and 1,000,000 events.

- ``replay``: ``rebuild_read_models()`` (drop the payment index, rebuild it
  from the notification log) against eventsourcing reading the same log with
  no processing (``select_notifications`` in pages of the same size until the
  end), 100,000 events. ratio = replay rate / raw read rate (goal >= 0.90).
- ``verify``: a whole-log ``verify()`` (every digest recomputed, the chain
  heads compared) against the same raw read. ratio = verify rate / raw rate
  (goal >= 0.75).
- ``replay_scale``: the replay rate at 1,000,000 events against the rate at
  100,000 (ratio, goal >= 0.90), and the peak RSS of each: each size runs in
  a process of its own, two rounds in turns, the best rate and the highest
  peak kept (goal: the 1,000,000-event peak at most 1.5 x the other).
- ``verify_scale``: the same for ``verify()``.

Each log holds payments of four events (created, completed with a sealed
session token, authorization requested, approved), written the way a busy
store is: each step of a pipeline creates a block of 500 payments and moves
the three blocks before it on, so a payment's events lie about 6,000 records
apart, interleaved with others'. The records are the library's own (its
mapper and recorder write them), inserted in large transactions. A log is
built once (about 40 s per million events) and kept under the temporary
directory, named by :data:`LOG_VERSION` and its size; change the version when
the stored format changes. Every run reads through an ``AuditLog`` (no
cipher key), as an auditor would.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid5

from eventsourcing.persistence import StoredEvent

from benchmarks._harness import best_of, report
from klarna_flow import Flow, Payment, Payments, TokenCipher
from klarna_flow._audit.log import AuditLog
from klarna_flow._audit.verify import PAGE_SIZE as VERIFY_PAGE
from klarna_flow._store.payment_store import payment_id_for
from klarna_flow._store.projections import _BATCH as REPLAY_PAGE

LOG_VERSION = "v3"
PAYMENTS = 25_000
EVENTS = PAYMENTS * 4
SCALE = (PAYMENTS, 250_000)  # 100,000 and 1,000,000 events
BLOCK = 500  # payments that enter each step of the pipeline together
FLUSH_EVENTS = 50_000  # stored events per insert transaction while building
ACCOUNT = "krn:partner:global:account:bench"
TOKEN = "krn:payment:eu1:klarna-network-session-token:bench-{}"  # noqa: S105  (a dummy)
START = datetime(2025, 1, 1, 12, tzinfo=UTC)


def log_path(payments: int = PAYMENTS) -> Path:
    """Where the benchmark store of ``payments`` payments is kept between runs."""
    name = f"klarna_flow_bench_audit_{LOG_VERSION}_{payments}.sqlite"
    return Path(tempfile.gettempdir()) / name


class _Pipeline:
    """Payments going through their four events as a busy store sees them:
    each step creates a block of payments, completes the block before,
    requests authorization for the one before that and approves the one
    before that, so a payment's events lie about four blocks apart in the log."""

    def __init__(self, app: Payments) -> None:
        self.app = app
        self.blocks: dict[int, list[Payment]] = {}

    def step(self, step: int, blocks: int) -> list[Payment]:
        now = START + timedelta(seconds=step)
        moved: list[Payment] = []
        if step < blocks:
            numbers = range(step * BLOCK, (step + 1) * BLOCK)
            self.blocks[step] = [self._create(n, now) for n in numbers]
            moved += self.blocks[step]
        for stage, act in enumerate((self._complete, self._request, self._approve), start=1):
            block = self.blocks.get(step - stage)
            if block is not None:
                for i, payment in enumerate(block):
                    act(payment, (step - stage) * BLOCK + i, now)
                moved += block
        self.blocks.pop(step - 3, None)
        return moved

    def _create(self, n: int, now: datetime) -> Payment:
        return Payment.create(
            payment_id=payment_id_for(ACCOUNT, f"bench-{n}"),
            flow=Flow.AUTHORIZATION,
            amount=11800,
            currency="EUR",
            reference=f"bench-{n}",
            partner_account_id=ACCOUNT,
            payment_request_id=f"krn:payment:eu1:payment-request:bench-{n}",
            request_lifetime=self.app.request_lifetime,
            now=now,
        )

    def _complete(self, payment: Payment, n: int, now: datetime) -> None:
        payment.complete(
            session_token=self.app._store.seal(payment.id, "session_token", TOKEN.format(n)),
            customer_token=None,
            completed_at=now,
            now=now,
            cause="notification:" + str(uuid5(payment.id, "completed")),
        )

    def _request(self, payment: Payment, n: int, now: datetime) -> None:
        payment.request_authorization(idempotency_key=str(uuid5(payment.id, "1")), now=now)

    def _approve(self, payment: Payment, n: int, now: datetime) -> None:
        payment.approve(
            payment_transaction_id=f"krn:payment:eu1:transaction:bench-{n}",
            correlation_id=str(uuid5(payment.id, "correlation")),
            transaction_expires_at=now + timedelta(days=28),
            now=now,
            cause="command:authorize",
        )


def build_log(payments: int = PAYMENTS) -> Path:
    """The benchmark store of ``payments`` payments (four events each), built
    if it is not there yet: about 40 s per million events.

    The records are the library's own (its mapper writes them: typed
    payloads, a sealed session token, the hash chain), inserted through the
    recorder (which keeps the chain heads) in large transactions.
    """
    path = log_path(payments)
    if path.exists():
        return path
    partial = path.with_suffix(f".{os.getpid()}.partial")
    app = Payments.sqlite(partial, cipher=TokenCipher.ephemeral())
    store = app._store
    mapper, recorder = store.mapper, store.recorder
    pipeline, blocks = _Pipeline(app), payments // BLOCK
    pending: list[StoredEvent] = []
    try:
        for step in range(blocks + 3):
            for payment in pipeline.step(step, blocks):
                # Mapped, never settled: the mapper keeps each payment's last
                # digest in memory, so it never reads one not yet inserted.
                pending.extend(mapper.to_stored_event(e) for e in payment.collect_events())
            if len(pending) >= FLUSH_EVENTS or step == blocks + 2:
                recorder.insert_events(pending)
                pending = []
        assert recorder.max_notification_id() == payments * 4
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


# -- at scale: each size in a process of its own ------------------------------------------


def _measure(what: str, payments: int, runs: int) -> dict[str, float]:
    """In this process (a child): ``runs`` rebuilds or verifications of the
    store of ``payments`` payments; the best rate, and the peak RSS."""
    path = log_path(payments)
    with AuditLog.open(path) as log:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if what == "replay":
            run: Callable[[], object] = log.rebuild_read_models
        else:
            log.counts_by_state()  # the index is caught up (before the peak is read)
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            run = log.verify
        best = min(best_of(run, repeat=1) for _ in range(runs))
        if what == "replay":
            assert log.counts_by_state() == {"AUTHORIZED": payments}
        else:
            assert log.verify().ok
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"rate": payments * 4 / best, "peak_mib": peak / 1024, "base_mib": base / 1024}


def _in_child(what: str, payments: int, runs: int) -> dict[str, float]:
    """:func:`_measure` in a fresh interpreter, so that its peak RSS is its own."""
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "benchmarks.bench_audit", what, str(payments), str(runs)]
    out = subprocess.run(command, cwd=root, check=True, capture_output=True, text=True)  # noqa: S603
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _at_scale(name: str, what: str, goal: str) -> str:
    """Rate and peak RSS at 1,000,000 events against 100,000, two rounds in
    turns (each size in its own child process), the best of each kept."""
    small, large = SCALE
    for payments in SCALE:
        build_log(payments)
    runs: dict[int, list[dict[str, float]]] = {small: [], large: []}
    for _ in range(2):
        runs[small].append(_in_child(what, small, 3))
        runs[large].append(_in_child(what, large, 2))
    rate = {n: max(r["rate"] for r in runs[n]) for n in SCALE}
    peak = {n: max(r["peak_mib"] for r in runs[n]) for n in SCALE}
    base = {n: min(r["base_mib"] for r in runs[n]) for n in SCALE}
    return report(
        name,
        rate[large] / rate[small],
        f"events={small * 4}/{large * 4} rate={rate[small]:,.0f}/s/{rate[large]:,.0f}/s "
        f"peak_rss={peak[small]:.1f}MiB/{peak[large]:.1f}MiB "
        f"peak_ratio={peak[large] / peak[small]:.2f} (after opening: "
        f"{base[small]:.1f}MiB/{base[large]:.1f}MiB) {goal}",
    )


def bench_replay_scale() -> str:
    return _at_scale("replay_scale", "replay", "goal>=0.90 peak_ratio<=1.5")


def bench_verify_scale() -> str:
    return _at_scale("verify_scale", "verify", "goal>=0.90 peak_ratio<=1.5")


BENCHMARKS = {
    "replay": bench_replay,
    "verify": bench_verify,
    "replay_scale": bench_replay_scale,
    "verify_scale": bench_verify_scale,
}


if __name__ == "__main__":  # a child of _in_child: what, payments, runs
    what_, payments_, runs_ = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(_measure(what_, payments_, runs_)))
