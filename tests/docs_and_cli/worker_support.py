"""Helpers of the worker tests: a store with work due, and ``klarna-flow worker`` processes.

A worker process runs on the system clock, so the payments it should act on
are recorded with a :class:`ManualClock` set hours in the past: their
deadlines have passed by the time the worker looks, and their pending
authorizations are old enough to be re-sent. The FakeKlarna that approved
them (its answers lost) is served on loopback for the worker to reach.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import attrs
import httpx

from klarna_flow import AuditLog, Flow, Payments, PaymentState, TokenCipher, generate_key
from klarna_flow.klarna import KlarnaClient, RetryPolicy
from klarna_flow.testing import FakeKlarna, FakeKlarnaServer, ManualClock, serve_fake

UNMASKED_TOKEN = re.compile(r"token:(?!\*\*\*\*)")
SECRET_ENV = (
    "KLARNA_FLOW_CIPHER_KEY",
    "KLARNA_FLOW_OLD_CIPHER_KEYS",
    "KLARNA_FLOW_ALLOW_PLAINTEXT",
    "KLARNA_FLOW_DB",
    "KLARNA_API_KEY",
    "KLARNA_BASE_URL",
    "KLARNA_FLOW_WORKER_INTERVAL",
    "POSTGRES_SCHEMA",
)


@attrs.define
class Work:
    """A store with work due, and the FakeKlarna (served) behind it."""

    db: str
    key: str
    fake: FakeKlarna
    server: FakeKlarnaServer
    extra_env: dict[str, str]
    clock: ManualClock
    due: list[UUID] = attrs.field(factory=list)  # each should be expired once
    stuck: list[UUID] = attrs.field(factory=list)  # each should be authorized once
    references: dict[UUID, str] = attrs.field(factory=dict)

    def env(self, **more: str) -> dict[str, str]:
        """The environment of a worker process: the keys, and nothing else secret."""
        env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
        env.update(
            KLARNA_FLOW_CIPHER_KEY=self.key,
            KLARNA_API_KEY=self.fake.api_key,
            KLARNA_BASE_URL=self.server.base_url,
            **self.extra_env,
            **more,
        )
        return env

    def secrets(self) -> list[str]:
        return [self.key, self.fake.api_key]


def seed(
    payments: Payments,
    fake: FakeKlarna,
    clock: ManualClock,
    *,
    due: int,
    stuck: int,
    prefix: str = "",
) -> tuple[list[UUID], list[UUID], dict[UUID, str]]:
    """Record ``due`` payments past their deadlines and ``stuck`` ones left AUTHORIZING."""
    due_ids: list[UUID] = []
    stuck_ids: list[UUID] = []
    references: dict[UUID, str] = {}
    for i in range(due):
        reference = f"{prefix}due-{i}"
        payment_id = payments.create(
            flow=Flow.AUTHORIZATION, amount=1000 + i, currency="EUR", reference=reference
        )
        if i % 2:  # half wait for the customer, half were completed and never authorized
            token = fake.issue_session_token(amount=1000 + i, currency="EUR")
            payments.complete(payment_id, session_token=token)
        due_ids.append(payment_id)
        references[payment_id] = reference
    for i in range(stuck):
        reference = f"{prefix}stuck-{i}"
        payment_id = payments.create(
            flow=Flow.AUTHORIZATION, amount=2000 + i, currency="EUR", reference=reference
        )
        token = fake.issue_session_token(amount=2000 + i, currency="EUR")
        payments.complete(payment_id, session_token=token)
        fake.timeout_next(after_processing=True)  # Klarna approves; the answer is lost
        assert payments.authorize(payment_id).state is PaymentState.AUTHORIZING
        stuck_ids.append(payment_id)
        references[payment_id] = reference
    clock.advance(timedelta(minutes=1))
    return due_ids, stuck_ids, references


def _payments(
    db: str, env: dict[str, str], key: str, clock: ManualClock, fake: FakeKlarna
) -> tuple[KlarnaClient, Payments]:
    client = KlarnaClient(
        fake.api_key, transport=httpx.MockTransport(fake), retry=RetryPolicy(max_attempts=1)
    )
    payments = Payments.open(
        db,
        env=env,
        clock=clock,
        cipher=TokenCipher(key),
        klarna=client,
        partner_account_id=fake.partner_account_id,
    )
    return client, payments


@contextmanager
def store_with_work(
    db: str, *, due: int, stuck: int, env: dict[str, str] | None = None
) -> Iterator[Work]:
    """``db`` (an SQLite path or a PostgreSQL URL) fed with work, the fake served."""
    key = generate_key()
    # Four hours ago: every deadline (3 h requests, 60 min windows) has passed now.
    clock = ManualClock(datetime.now(UTC) - timedelta(hours=4))
    fake = FakeKlarna(clock=clock)  # the fake shares the payments' clock
    client, payments = _payments(db, env or {}, key, clock, fake)
    with client, payments:
        due_ids, stuck_ids, references = seed(payments, fake, clock, due=due, stuck=stuck)
    with serve_fake(fake) as server:
        yield Work(db, key, fake, server, dict(env or {}), clock, due_ids, stuck_ids, references)


def add_work(work: Work, *, due: int, stuck: int, prefix: str) -> None:
    """More work on the same store (references starting with ``prefix``)."""
    client, payments = _payments(work.db, work.extra_env, work.key, work.clock, work.fake)
    with client, payments:
        due_ids, stuck_ids, references = seed(
            payments, work.fake, work.clock, due=due, stuck=stuck, prefix=prefix
        )
    work.due += due_ids
    work.stuck += stuck_ids
    work.references.update(references)


def start_worker(work: Work, log: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    """``python -m klarna_flow.cli worker --db ...``, logging to ``log``."""
    command = [sys.executable, "-m", "klarna_flow.cli", "worker", "--db", work.db, *args]
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=out, env=work.env(**env))


def wait_until(check: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20) -> int:
    """Signal the worker and return its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def states(work: Work, ids: list[UUID]) -> dict[UUID, PaymentState]:
    """The states of ``ids`` as stored now (read-only, as an auditor reads)."""
    with AuditLog.open(work.db, env=work.extra_env) as log:
        return {i: log.get(i).state for i in ids}


def all_done(work: Work) -> bool:
    found = states(work, work.due + work.stuck)
    return all(found[i] is PaymentState.EXPIRED for i in work.due) and all(
        found[i] is PaymentState.AUTHORIZED for i in work.stuck
    )


def event_counts(work: Work) -> dict[UUID, Counter[str]]:
    """How many of each event every payment of ``work`` has."""
    with AuditLog.open(work.db, env=work.extra_env) as log:
        return {i: Counter(e.event for e in log.trail(i)) for i in work.due + work.stuck}


def assert_each_effect_once(work: Work) -> None:
    """Every due payment expired once, every stuck one approved once, one transaction each."""
    counts = event_counts(work)
    for payment_id in work.due:
        assert counts[payment_id]["PaymentExpired"] == 1, counts[payment_id]
    for payment_id in work.stuck:
        assert counts[payment_id]["AuthorizationApproved"] == 1, counts[payment_id]
        reference = work.references[payment_id]
        assert len(work.fake.transactions_for(reference)) == 1
    assert all_done(work)


def read_log(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def assert_no_secret(text: str, work: Work) -> None:
    for secret in work.secrets():
        assert secret not in text
    assert "Traceback" not in text
    assert not UNMASKED_TOKEN.search(text)
