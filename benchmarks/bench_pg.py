"""Throughput on PostgreSQL: pg_throughput (whole flows) and pg_save_rate (the store alone).

pg_throughput: authorization flows on PostgreSQL, store-bound, against bare
eventsourcing. Ours: ``FLOWS`` completed payments (session tokens issued by FakeKlarna), then
1, 2 and 4 worker processes that each race through all of them with
``Payments.authorize``, as ``examples/postgres_workers.py`` does: the worker
that saves ``AuthorizationRequested`` calls Klarna and saves the approval; the
others find the payment taken and move on.

Baseline: the same payments as bare eventsourcing aggregates (``BarePayment``:
the same events and fields, the token sealed with the same cipher) in a plain
``eventsourcing.application.Application`` on eventsourcing's own PostgreSQL
recorder, and the same workers by hand: load, skip unless ``COMPLETED``,
record the request and save (a conflict means another worker has it), open
the token, raw ``httpx.Client.post`` (same headers, same body), record the
approval and save.

FakeKlarna answers at once (no latency): the flows are bound by the store and
the processes' own work. It is served on loopback by a child process of its
own, so that no worker shares its interpreter with the server. Every run uses
fresh schemas of the same database (``KLARNA_FLOW_BENCH_DATABASE_URL``, else
``KLARNA_FLOW_TEST_DATABASE_URL``); workers open their store, then start
together at a barrier, and the clock runs from the barrier to the last
worker's end. Each side runs ``REPEAT`` times (3) at each process count, the
sides alternating, and the best run of each counts (the machines are shared).
ratio = ours / baseline, each the best flows per second of its 1, 2 and 4
processes (goal >= 0.80). A line per side and process count shows
where the CPU went, per flow: the workers, their PostgreSQL backends (read
from ``/proc``, so only when the server runs on this machine) and the fake,
and how many cores the machine kept busy (others' work included: a figure
well below the machine's cores means the run was bound by waiting, not CPU).

pg_save_rate: what one store takes, without any domain work: 1, 2, 4 and 8
processes insert ``SAVES`` records between them, one save each (two per
payment, as an authorization makes), through klarna_flow's recorder (events
and heads in one statement) and through eventsourcing's own (one
transaction), each on a fresh schema. ratio = ours / eventsourcing, each the
best saves per second of its process counts (information: no goal).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any
from uuid import UUID

import attrs
from eventsourcing.application import Application

from benchmarks._bare import BarePayment
from benchmarks._harness import report

__all__ = ["BENCHMARKS"]

FLOWS = int(os.environ.get("KLARNA_FLOW_BENCH_PG_FLOWS", "1000"))
PROCESSES = (1, 2, 4)
REPEAT = int(os.environ.get("KLARNA_FLOW_BENCH_PG_REPEAT", "3"))
AMOUNT = 11_800
CURRENCY = "EUR"
KEYS = uuid.UUID("9a7c2b1e-5d4f-4e3a-8b6c-0d1e2f3a4b5c")
_CONTEXT = multiprocessing.get_context("spawn")


def database_url() -> str | None:
    """The PostgreSQL database the benchmark runs on, if one is configured."""
    return os.environ.get("KLARNA_FLOW_BENCH_DATABASE_URL") or os.environ.get(
        "KLARNA_FLOW_TEST_DATABASE_URL"
    )


@attrs.frozen
class Setup:
    """What every worker needs: the database, its schema, the fake, the key."""

    url: str
    schema: str
    base_url: str
    api_key: str = attrs.field(repr=False)
    account: str
    cipher_key: str = attrs.field(repr=False)


# -- the fake, in a process of its own ----------------------------------------------


def _serve_fake(conn: Connection) -> None:  # pragma: no cover - runs in a child process
    from klarna_flow.testing import FakeKlarna, serve_fake

    fake = FakeKlarna()
    with serve_fake(fake) as server:
        conn.send((server.base_url, fake.api_key, fake.partner_account_id))
        while True:
            command, arg = conn.recv()
            if command == "tokens":
                conn.send(
                    [fake.issue_session_token(amount=AMOUNT, currency=CURRENCY) for _ in range(arg)]
                )
            elif command == "transactions":
                conn.send((len(fake.transactions), time.process_time()))
            else:
                return


class _Fake:
    """FakeKlarna served by a child process, asked for tokens over a pipe."""

    def __init__(self) -> None:
        self._conn, child = _CONTEXT.Pipe()
        self._process = _CONTEXT.Process(target=_serve_fake, args=(child,), daemon=True)
        self._process.start()
        self.base_url, self.api_key, self.account = self._conn.recv()

    def tokens(self, count: int) -> list[str]:
        self._conn.send(("tokens", count))
        tokens: list[str] = self._conn.recv()
        return tokens

    def transactions(self) -> tuple[int, float]:
        """How many transactions the fake holds, and its CPU seconds so far."""
        self._conn.send(("transactions", 0))
        count, cpu = self._conn.recv()
        return int(count), float(cpu)

    def close(self) -> None:
        self._conn.send(("stop", 0))
        self._process.join(timeout=10)


# -- the workers ----------------------------------------------------------------------


def _run_worker(  # pragma: no cover - runs in a child process
    side: str, setup: Setup, ids: Sequence[str], start: int, *, barrier: Any, results: Any
) -> None:
    os.environ["PGAPPNAME"] = setup.schema  # names this worker's connections
    ordered = [*ids[start:], *ids[:start]]
    loop, close = (_ours if side == "ours" else _baseline)(setup, ordered)
    barrier.wait()
    cpu = time.process_time()
    wins = loop()
    results.put((wins, time.perf_counter(), time.process_time() - cpu))
    barrier.wait()  # the parent reads the connections' CPU time first
    close()


def _ours(setup: Setup, ids: Sequence[str]) -> tuple[Callable[[], int], Callable[[], None]]:
    from klarna_flow import (
        AuthorizationInProgress,
        AuthorizationWindowElapsed,
        CommandRefused,
        Payments,
        TokenCipher,
    )
    from klarna_flow.klarna import KlarnaClient

    client = KlarnaClient(setup.api_key, base_url=setup.base_url)
    payments = Payments.postgres(
        setup.url,
        env={"CREATE_TABLE": "n", "POSTGRES_SCHEMA": setup.schema},
        klarna=client,
        cipher=TokenCipher(setup.cipher_key),
        partner_account_id=setup.account,
    )
    payment_ids = [UUID(i) for i in ids]
    payments.get(payment_ids[0])  # connected, types registered

    def loop() -> int:
        won = 0
        for payment_id in payment_ids:
            try:
                payments.authorize(payment_id)
            except (AuthorizationInProgress, AuthorizationWindowElapsed, CommandRefused):
                continue
            won += 1
        return won

    def close() -> None:
        payments.close()
        client.close()

    return loop, close


def _baseline(setup: Setup, ids: Sequence[str]) -> tuple[Callable[[], int], Callable[[], None]]:
    import httpx
    from eventsourcing.persistence import RecordConflictError

    from klarna_flow import SealedSecret, TokenCipher

    app = Baseline(_baseline_env(setup))
    cipher = TokenCipher(setup.cipher_key)
    http = httpx.Client(base_url=setup.base_url)
    url = f"/v2/accounts/{setup.account}/payment/authorize"
    payment_ids = [UUID(i) for i in ids]
    app.repository.get(payment_ids[0])

    def authorize(payment_id: UUID) -> bool:
        payment: BarePayment = app.repository.get(payment_id)
        if payment.state != "COMPLETED":
            return False
        attempt = payment.authorization_attempts + 1
        key = str(uuid.uuid5(KEYS, f"{payment.id}:{attempt}"))
        payment.trigger_event(
            BarePayment.AuthorizationRequested,
            cause="command:authorize",
            idempotency_key=key,
            attempt=attempt,
        )
        try:
            app.save(payment)
        except RecordConflictError:
            return False
        assert payment.session_token is not None
        sealed = payment.session_token
        token = cipher.open(
            SealedSecret(sealed["k"], sealed["n"], sealed["c"]),
            aad=payment.id.bytes + b"session_token",
        )
        body = {
            "currency": payment.currency,
            "request_payment_transaction": {
                "amount": payment.amount,
                "payment_transaction_reference": payment.reference,
            },
        }
        response = http.post(
            url,
            headers={
                "Authorization": f"Basic {setup.api_key}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": "klarna-flow/bench",
                "Klarna-Idempotency-Key": key,
                "Partner-Correlation-Id": payment.id.hex,
                "Klarna-Network-Session-Token": token,
            },
            content=json.dumps(body, separators=(",", ":")).encode(),
        )
        response.raise_for_status()
        answer = response.json()["payment_transaction_response"]
        assert answer["result"] == "APPROVED", answer
        transaction = answer["payment_transaction"]
        payment.trigger_event(
            BarePayment.Approved,
            cause="command:authorize",
            payment_transaction_id=transaction["payment_transaction_id"],
            correlation_id=response.headers.get("Klarna-Correlation-Id"),
            transaction_expires_at=datetime.fromisoformat(transaction["expires_at"]),
        )
        app.save(payment)
        return True

    def loop() -> int:
        return sum(authorize(payment_id) for payment_id in payment_ids)

    def close() -> None:
        http.close()
        app.close()

    return loop, close


def _baseline_env(setup: Setup, *, create: bool = False) -> dict[str, str]:
    from klarna_flow._store.locations import postgres_env

    return {
        **postgres_env(setup.url),
        "POSTGRES_SCHEMA": setup.schema,
        "CREATE_TABLE": "y" if create else "n",
    }


class Baseline(Application[UUID]):
    """A plain eventsourcing application on its own PostgreSQL recorder."""

    name = "Baseline"


# -- preparing the payments -------------------------------------------------------------


def _prepare_ours(setup: Setup, tokens: Sequence[str]) -> list[str]:
    from klarna_flow import Flow, Payments, TokenCipher

    payments = Payments.postgres(
        setup.url,
        env={"POSTGRES_SCHEMA": setup.schema},
        cipher=TokenCipher(setup.cipher_key),
        partner_account_id=setup.account,
    )
    ids = []
    for token in tokens:
        payment_id = payments.create(
            flow=Flow.AUTHORIZATION,
            amount=AMOUNT,
            currency=CURRENCY,
            reference=f"pg-{uuid.uuid4()}",
        )
        payments.complete(payment_id, session_token=token)
        ids.append(str(payment_id))
    payments.close()
    return ids


def _prepare_baseline(setup: Setup, tokens: Sequence[str]) -> list[str]:
    from klarna_flow import TokenCipher

    app = Baseline(_baseline_env(setup, create=True))
    cipher = TokenCipher(setup.cipher_key)
    ids = []
    for token in tokens:
        now = datetime.now(UTC)
        payment = BarePayment.create(
            f"pg-{uuid.uuid4()}", now, amount=AMOUNT, account=setup.account
        )
        app.save(payment)
        sealed = cipher.seal(token, aad=payment.id.bytes + b"session_token")
        payment.complete({"k": sealed.key_id, "n": sealed.nonce, "c": sealed.ciphertext}, now)
        app.save(payment)
        ids.append(str(payment.id))
    app.close()
    return ids


# -- one run --------------------------------------------------------------------------------


@attrs.frozen
class Run:
    """One run: flows per second, and where the CPU went (ms per flow)."""

    rate: float
    workers_cpu: float
    fake_cpu: float
    server_cpu: float | None
    """The CPU time of the workers' PostgreSQL backends (None: not on this machine)."""
    busy: float | None
    """Cores the whole machine kept busy during the run (others' work included)."""

    def shown(self) -> str:
        server = "?" if self.server_cpu is None else f"{self.server_cpu:.2f}ms"
        busy = "?" if self.busy is None else f"{self.busy:.2f}"
        return (
            f"{self.rate:.0f}/s; CPU per flow: workers={self.workers_cpu:.2f}ms "
            f"postgres={server} fake={self.fake_cpu:.2f}ms; machine busy cores={busy}"
        )


def _busy_seconds() -> float | None:
    """CPU seconds the whole machine spent busy since boot (Linux), else None."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _backends_cpu(url: str, application: str) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend of ``application`` (those on this machine)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (application,)
        ).fetchall()
    found = {}
    for (pid,) in rows:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        found[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return found


def _run(side: str, url: str, fake: _Fake, processes: int) -> Run:
    """``processes`` workers of ``side`` through ``FLOWS`` payments on fresh schemas."""
    import psycopg

    from klarna_flow import generate_key

    schema = f"bench_pg_{side}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        setup = Setup(url, schema, fake.base_url, fake.api_key, fake.account, generate_key())
        prepare = _prepare_ours if side == "ours" else _prepare_baseline
        ids = prepare(setup, fake.tokens(FLOWS))
        before, fake_cpu = fake.transactions()
        barrier = _CONTEXT.Barrier(processes + 1)
        results = _CONTEXT.Queue()
        step = len(ids) // processes
        workers = [
            _CONTEXT.Process(
                target=_run_worker,
                args=(side, setup, ids, k * step),
                kwargs={"barrier": barrier, "results": results},
            )
            for k in range(processes)
        ]
        for worker in workers:
            worker.start()
        barrier.wait()
        start, busy = time.perf_counter(), _busy_seconds()
        server = _backends_cpu(url, schema)
        done = results_of(results, workers)
        busy_after = _busy_seconds()
        server_after = _backends_cpu(url, schema)
        barrier.wait()
        for worker in workers:
            worker.join()
        elapsed = max(end for _, end, _ in done) - start
        wins = sum(won for won, _, _ in done)
        assert wins == FLOWS, (side, processes, wins)
        after, fake_cpu_after = fake.transactions()
        assert after - before == FLOWS
        workers_cpu = sum(cpu for _, _, cpu in done)
        fake_cpu = fake_cpu_after - fake_cpu
        server_cpu = None
        if server_after:
            server_cpu = sum(t - server.get(pid, 0.0) for pid, t in server_after.items())
            server_cpu *= 1000 / FLOWS
        cores = None
        if busy is not None and busy_after is not None:
            cores = (busy_after - busy) / elapsed
        per_flow = 1000 / FLOWS
        return Run(FLOWS / elapsed, workers_cpu * per_flow, fake_cpu * per_flow, server_cpu, cores)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def results_of(results: Any, workers: Sequence[Any]) -> list[tuple[int, float, float]]:
    """Each worker's (wins, end time, CPU seconds); a worker that died fails the run at once."""
    done: list[tuple[int, float, float]] = []
    while len(done) < len(workers):
        try:
            done.append(results.get(timeout=1))
        except queue.Empty:
            failed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            if failed:
                raise RuntimeError(f"a worker failed (exit codes {failed})") from None
    return done


def pg_throughput() -> None:
    url = database_url()
    if not url:
        print(
            "BENCH pg_throughput skipped: no PostgreSQL configured "
            "(set KLARNA_FLOW_BENCH_DATABASE_URL or KLARNA_FLOW_TEST_DATABASE_URL)",
            flush=True,
        )
        return
    fake = _Fake()
    runs: dict[tuple[str, int], Run] = {}
    try:
        for _ in range(REPEAT):
            for processes in PROCESSES:  # the two sides alternate
                for side in ("ours", "baseline"):
                    run = _run(side, url, fake, processes)
                    best = runs.get((side, processes))
                    if best is None or run.rate > best.rate:
                        runs[side, processes] = run
    finally:
        fake.close()
    for (side, processes), run in sorted(runs.items()):
        print(f"pg_throughput {side} {processes}proc: {run.shown()}", flush=True)
    best_ours = max(runs["ours", p].rate for p in PROCESSES)
    best_base = max(runs["baseline", p].rate for p in PROCESSES)
    shown = " ".join(
        f"{p}proc={runs['ours', p].rate:.0f}/{runs['baseline', p].rate:.0f}" for p in PROCESSES
    )
    report(
        "pg_throughput",
        best_ours / best_base,
        f"flows={FLOWS} ours={best_ours:.0f}/s baseline={best_base:.0f}/s "
        f"(ours/baseline flows/s: {shown}) latency=0 goal>=0.80",
    )


# -- the store alone: saves per second ----------------------------------------------------

SAVES = int(os.environ.get("KLARNA_FLOW_BENCH_PG_SAVES", "4000"))
SAVE_PROCESSES = (1, 2, 4, 8)
_STATE = bytes(range(256)) * 2  # a record of a typical size


def _recorder(setup: Setup, side: str, *, create: bool) -> Any:
    from eventsourcing.postgres import PostgresFactory
    from eventsourcing.utils import Environment

    from klarna_flow._store.heads import recorder_topic

    env = Environment(
        "Payments" if side == "ours" else "Baseline", _baseline_env(setup, create=create)
    )
    if side == "ours":
        topic = recorder_topic("eventsourcing.postgres")
        assert topic is not None
        env["APPLICATION_RECORDER_TOPIC"] = topic
    return PostgresFactory(env).application_recorder()


def _save_worker(  # pragma: no cover - runs in a child process
    side: str, setup: Setup, saves: int, *, barrier: Any, results: Any
) -> None:
    from eventsourcing.persistence import StoredEvent

    recorder = _recorder(setup, side, create=False)
    recorder.max_notification_id()  # connected
    records: list[StoredEvent] = []
    for n in range(saves):  # payments of two saves each, as an authorization makes
        oid = uuid.uuid4() if n % 2 == 0 else records[-1].originator_id
        records.append(StoredEvent(oid, 1 + n % 2, "bench:Event", _STATE))
    barrier.wait()
    for record in records:
        recorder.insert_events([record])
    results.put((saves, time.perf_counter(), 0.0))
    barrier.wait()
    recorder.datastore.close()


def _save_rate(side: str, url: str, processes: int) -> float:
    """Saves per second of ``processes`` writers straight into ``side``'s recorder."""
    import psycopg

    schema = f"bench_pg_{side}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        setup = Setup(url, schema, "", "", "", "")
        _recorder(setup, side, create=True).datastore.close()
        barrier = _CONTEXT.Barrier(processes + 1)
        results = _CONTEXT.Queue()
        share = SAVES // processes
        workers = [
            _CONTEXT.Process(
                target=_save_worker,
                args=(side, setup, share),
                kwargs={"barrier": barrier, "results": results},
            )
            for _ in range(processes)
        ]
        for worker in workers:
            worker.start()
        barrier.wait()
        start = time.perf_counter()
        done = results_of(results, workers)
        barrier.wait()
        for worker in workers:
            worker.join()
        return share * processes / (max(end for _, end, _ in done) - start)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def pg_save_rate() -> None:
    url = database_url()
    if not url:
        print(
            "BENCH pg_save_rate skipped: no PostgreSQL configured "
            "(set KLARNA_FLOW_BENCH_DATABASE_URL or KLARNA_FLOW_TEST_DATABASE_URL)",
            flush=True,
        )
        return
    rates: dict[tuple[str, int], float] = {}
    for _ in range(REPEAT):
        for processes in SAVE_PROCESSES:
            for side in ("ours", "baseline"):
                rate = _save_rate(side, url, processes)
                rates[side, processes] = max(rate, rates.get((side, processes), 0.0))
    best_ours = max(rates["ours", p] for p in SAVE_PROCESSES)
    best_base = max(rates["baseline", p] for p in SAVE_PROCESSES)
    shown = " ".join(
        f"{p}proc={rates['ours', p]:.0f}/{rates['baseline', p]:.0f}" for p in SAVE_PROCESSES
    )
    report(
        "pg_save_rate",
        best_ours / best_base,
        f"saves={SAVES} ours={best_ours:.0f}/s eventsourcing={best_base:.0f}/s "
        f"(ours/eventsourcing saves/s: {shown}) store=one table, one lock",
    )


BENCHMARKS: dict[str, Callable[[], Any]] = {
    "pg_throughput": pg_throughput,
    "pg_save_rate": pg_save_rate,
}
