"""Benchmarks of the lifecycle against a bare eventsourcing aggregate, on SQLite.

- ``rehydrate``: 2,000 loads of a 4-event payment (created, completed,
  authorization requested, approved) through ``Payments.get``, against 2,000
  loads of a minimal ``eventsourcing.domain.Aggregate`` with four events of the
  same fields through a plain ``eventsourcing.application.Application``.
  ratio = ours / bare (goal <= 0.90).
- ``command_path``: 300 payments each created, completed and expired (clock
  advanced past the window) through ``Payments.create/complete/expire``,
  against the same three events on the bare aggregate, each command a
  load-change-save as a plain eventsourcing application would do it.
  ratio = ours / bare (goal <= 1.00).

Both applications live in one SQLite file: the bare one records into a table
of its own (``bare_stored_events``, through a recorder subclass named by
eventsourcing's ``APPLICATION_RECORDER_TOPIC``), so both pay for the same file,
page cache and fsyncs. Runs of the two alternate and the best of each counts.
"""

from __future__ import annotations

import gc
import itertools
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import attrs
from eventsourcing.application import Application
from eventsourcing.utils import get_topic

from benchmarks._bare import ACCOUNT, BarePayment, BareRecorder
from benchmarks._harness import report
from klarna_flow import Flow, Payments, TokenCipher, generate_key
from klarna_flow.testing import ManualClock

__all__ = ["BENCHMARKS"]

LOADS = 8_000  # per side, in rounds of LOAD_ROUND
LOAD_ROUND = 250
PAYMENTS = 600  # per side, in rounds of PAYMENT_ROUND
PAYMENT_ROUND = 50
SESSION_TOKEN = "krn:payment:eu1:klarna-network-session-token:0b9f9d64-bench"  # noqa: S105  (a fake)
WINDOW = timedelta(minutes=60)


class BareApplication(Application[UUID]):
    name = "Bare"


# -- the two applications on one file -------------------------------------------


@contextmanager
def _apps() -> Iterator[tuple[Payments, BareApplication, ManualClock, dict[str, str]]]:
    with tempfile.TemporaryDirectory(prefix="klarna-flow-bench-") as folder:
        path = str(Path(folder) / "bench.sqlite")
        clock = ManualClock()
        cipher = TokenCipher(generate_key())
        ours = Payments.sqlite(path, clock=clock, cipher=cipher, partner_account_id=ACCOUNT)
        bare = BareApplication(
            {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": path,
                "APPLICATION_RECORDER_TOPIC": get_topic(BareRecorder),
            }
        )
        sealed = cipher.seal(SESSION_TOKEN, aad=b"bench")
        token = {"k": sealed.key_id, "n": sealed.nonce, "c": sealed.ciphertext}
        try:
            yield ours, bare, clock, token
        finally:
            ours.close()
            bare.close()


@attrs.frozen
class Times:
    """Best round of each side: CPU time of this process, and wall time."""

    ours_cpu: float
    bare_cpu: float
    ours_wall: float
    bare_wall: float

    @property
    def ratio(self) -> float:
        return self.ours_cpu / self.bare_cpu

    def details(self, per: int, unit: str) -> str:
        return (
            f"ours={self.ours_cpu / per * 1e6:.1f}us bare={self.bare_cpu / per * 1e6:.1f}us "
            f"cpu per {unit}; wall_ratio={self.ours_wall / self.bare_wall:.3f} "
            f"(ours={self.ours_wall / per * 1e6:.1f}us bare={self.bare_wall / per * 1e6:.1f}us)"
        )


def _round(fn: Callable[[], object]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one call, GC paused."""
    gc.collect()
    gc.disable()
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        fn()
        return time.process_time() - cpu, time.perf_counter() - wall
    finally:
        gc.enable()


def _race(ours: Callable[[], object], bare: Callable[[], object], rounds: int) -> Times:
    """Best rounds of ``ours`` and ``bare``, alternating.

    The ratio is of CPU time: both sides commit the same transactions, and on a
    shared machine the wait for another process's fsync says nothing about
    either (the wall-clock ratio is printed beside it). Many short rounds, the
    best of each, alternating so both meet the same drift.
    """
    ours_times = []
    bare_times = []
    for _ in range(rounds):
        ours_times.append(_round(ours))
        bare_times.append(_round(bare))
    return Times(
        ours_cpu=min(t[0] for t in ours_times),
        bare_cpu=min(t[0] for t in bare_times),
        ours_wall=min(t[1] for t in ours_times),
        bare_wall=min(t[1] for t in bare_times),
    )


# -- rehydrate --------------------------------------------------------------------


def _four_event_payment(payments: Payments) -> UUID:
    pid = payments.create(flow=Flow.AUTHORIZATION, amount=11_800, currency="EUR", reference="r")
    payments.complete(pid, session_token=SESSION_TOKEN)
    payment = payments.get(pid)
    payment.request_authorization(idempotency_key=str(uuid4()), now=payments.now())
    payments._store.save_payment(payment)
    payment = payments.get(pid)
    payment.approve(
        payment_transaction_id="krn:payment:eu1:transaction:bench",
        correlation_id="corr-bench",
        transaction_expires_at=payments.now() + timedelta(days=28),
        now=payments.now(),
        cause="command:test",
    )
    payments._store.save_payment(payment)
    return pid


def _four_event_bare(app: BareApplication, token: dict[str, str]) -> UUID:
    payment = BarePayment.create("r", datetime.now(UTC))
    payment.complete(token, datetime.now(UTC))
    payment.request_authorization()
    payment.approve()
    app.save(payment)
    return payment.id


def rehydrate() -> str:
    with _apps() as (ours, bare, _clock, token):
        pid = _four_event_payment(ours)
        bid = _four_event_bare(bare, token)
        assert ours.get(pid).version == bare.repository.get(bid).version == 4

        def load_ours() -> None:
            for _ in range(LOAD_ROUND):
                ours.get(pid)

        def load_bare() -> None:
            for _ in range(LOAD_ROUND):
                bare.repository.get(bid)

        rounds = LOADS // LOAD_ROUND
        times = _race(load_ours, load_bare, rounds)
    return report(
        "rehydrate",
        times.ratio,
        f"loads={LOADS} (best of {rounds} rounds of {LOAD_ROUND}) events=4 "
        f"{times.details(LOAD_ROUND, 'load')} store=sqlite-file goal<=0.90",
    )


# -- command path -------------------------------------------------------------------


def command_path() -> str:
    with _apps() as (ours, bare, clock, token):
        refs = itertools.count()

        def path_ours() -> None:
            ids: list[UUID] = []
            for _ in range(PAYMENT_ROUND):
                pid = ours.create(
                    flow=Flow.AUTHORIZATION,
                    amount=11_800,
                    currency="EUR",
                    reference=f"order-{next(refs)}",
                )
                ours.complete(pid, session_token=SESSION_TOKEN)
                ids.append(pid)
            clock.advance(WINDOW)
            for pid in ids:
                ours.expire(pid)

        def path_bare() -> None:
            ids: list[UUID] = []
            for _ in range(PAYMENT_ROUND):
                payment = BarePayment.create(f"order-{next(refs)}", datetime.now(UTC))
                bare.save(payment)
                payment = bare.repository.get(payment.id)
                payment.complete(token, datetime.now(UTC))
                bare.save(payment)
                ids.append(payment.id)
            for bid in ids:
                payment = bare.repository.get(bid)
                payment.expire()
                bare.save(payment)

        rounds = PAYMENTS // PAYMENT_ROUND
        times = _race(path_ours, path_bare, rounds)
    return report(
        "command_path",
        times.ratio,
        f"payments={PAYMENTS} (best of {rounds} rounds of {PAYMENT_ROUND}) events=3 "
        f"{times.details(PAYMENT_ROUND, 'payment')} store=sqlite-file goal<=1.00",
    )


BENCHMARKS: dict[str, Callable[[], Any]] = {
    "rehydrate": rehydrate,
    "command_path": command_path,
}
