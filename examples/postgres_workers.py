"""Many worker processes on one PostgreSQL store.

Every worker builds its own ``Payments`` on the same database and runs the
same cycle; the event store's optimistic concurrency decides which worker
acts on a payment, so each payment is handled exactly once however many
workers race for it, and the read models' tracking row makes every event
count once:

- ``authorize``: the worker that saves ``AuthorizationRequested`` calls Klarna;
  the others get ``AuthorizationInProgress`` and make no call;
- ``reconcile``: payments left ``AUTHORIZING`` are re-sent with their recorded
  idempotency key (Klarna answers with the original result);
- ``expire_overdue``: payments whose time ran out are expired once;
- notifications: any worker may handle any delivery; duplicates are no-ops.

Run ``python -m examples.postgres_workers postgresql://user:pw@host/db [N]``
to watch N workers (default 4) race through payments against a loopback
FakeKlarna, or import :func:`run_workers` and :func:`worker_cycle` in your
own deployment.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Sequence
from datetime import timedelta
from uuid import UUID, uuid4

import attrs

from klarna_flow import (
    AuthorizationInProgress,
    AuthorizationWindowElapsed,
    CommandRefused,
    Flow,
    Payments,
    TokenCipher,
    generate_key,
)
from klarna_flow.klarna import KlarnaClient, RetryPolicy
from klarna_flow.testing import FakeKlarna, serve_fake


@attrs.frozen
class WorkerConfig:
    """What every worker process needs to build its own ``Payments``."""

    database_url: str
    klarna_base_url: str
    api_key: str = attrs.field(repr=False)
    cipher_key: str = attrs.field(repr=False)
    partner_account_id: str
    schema: str = ""


def open_payments(config: WorkerConfig, *, create_tables: bool = True) -> Payments:
    """One worker's ``Payments`` and Klarna client.

    Tables are created once, by the process that prepares the store; workers
    that start together pass ``create_tables=False`` (eventsourcing's
    ``CREATE_TABLE``), since PostgreSQL refuses concurrent schema changes.
    """
    client = KlarnaClient(
        config.api_key,
        base_url=config.klarna_base_url,
        retry=RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.1),
    )
    env = {"CREATE_TABLE": "y" if create_tables else "n"}
    if config.schema:
        env["POSTGRES_SCHEMA"] = config.schema
    return Payments.postgres(
        config.database_url,
        env=env,
        klarna=client,
        cipher=TokenCipher(config.cipher_key),
        partner_account_id=config.partner_account_id,
    )


def worker_cycle(payments: Payments, payment_ids: Sequence[UUID], *, start: int = 0) -> int:
    """Try to authorize each payment; returns how many this worker authorized.

    Workers start at different offsets (``start``) so that they mostly meet
    fresh payments; every worker still goes through every payment.
    """
    won = 0
    ordered = [*payment_ids[start:], *payment_ids[:start]]
    for payment_id in ordered:
        try:
            payments.authorize(payment_id)
        except (AuthorizationInProgress, AuthorizationWindowElapsed, CommandRefused):
            continue  # another worker has it, or it is no longer authorizable
        won += 1
    payments.reconcile(older_than=timedelta(minutes=5))
    payments.expire_overdue()
    return won


def _work(config: WorkerConfig, payment_ids: Sequence[str], start: int) -> int:
    payments = open_payments(config, create_tables=False)
    try:
        return worker_cycle(payments, [UUID(i) for i in payment_ids], start=start)
    finally:
        if payments.klarna is not None:
            payments.klarna.close()
        payments.close()


def run_workers(config: WorkerConfig, payment_ids: Sequence[UUID], processes: int) -> list[int]:
    """Start ``processes`` workers that all race through ``payment_ids``.

    Returns how many payments each worker authorized (they sum to the number
    of payments authorized: none is authorized twice).
    """
    ids = [str(i) for i in payment_ids]
    step = max(1, len(ids) // processes)
    if processes == 1:  # no pool: measure the work, not process start-up
        return [_work(config, ids, 0)]
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        return pool.starmap(_work, [(config, ids, k * step) for k in range(processes)])


def completed_payments(payments: Payments, fake: FakeKlarna, count: int) -> list[UUID]:
    """``count`` authorization payments completed with tokens the fake issued."""
    ids = []
    for _ in range(count):
        token = fake.issue_session_token(amount=1000, currency="EUR")
        payment_id = payments.create(
            flow=Flow.AUTHORIZATION, amount=1000, currency="EUR", reference=f"w-{uuid4()}"
        )
        payments.complete(payment_id, session_token=token)
        ids.append(payment_id)
    return ids


def main(database_url: str, processes: int = 4, count: int = 40) -> None:
    """Race ``processes`` workers through ``count`` payments and print what happened."""
    fake = FakeKlarna(latency=0.02)
    with serve_fake(fake) as server:
        config = WorkerConfig(
            database_url=database_url,
            klarna_base_url=server.base_url,
            api_key=fake.api_key,
            cipher_key=generate_key(),
            partner_account_id=fake.partner_account_id,
        )
        payments = open_payments(config)
        ids = completed_payments(payments, fake, count)
        wins = run_workers(config, ids, processes)
        print(f"authorized per worker: {wins} (total {sum(wins)} of {count})")
        print(f"transactions at Klarna: {len(fake.transactions)}")
        print(f"states: {payments.counts_by_state()}")
        payments.close()


if __name__ == "__main__":  # pragma: no cover - a manual entry point
    if len(sys.argv) < 2:
        sys.exit("usage: python -m examples.postgres_workers POSTGRES_URL [PROCESSES]")
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 4)
