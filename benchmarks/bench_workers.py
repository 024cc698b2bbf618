"""workers_scaling: authorization flows on PostgreSQL, 4 worker processes vs 1.

Both runs authorize the same number of completed payments against the
loopback FakeKlarna with 20 ms latency, each on a fresh schema of the
database named by ``KLARNA_FLOW_BENCH_DATABASE_URL`` (else
``KLARNA_FLOW_TEST_DATABASE_URL``), with the workers of
``examples/postgres_workers.py`` (their cycle: authorize every payment, then
reconcile and expire), each in a process of its own, timed from the moment
all have opened their store: process start-up is not the work. ratio =
throughput with 4 processes / throughput with 1 (goal >= 2.5).
"""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid
from typing import Any
from uuid import UUID

from benchmarks._harness import report
from benchmarks.bench_pg import database_url, results_of
from examples.postgres_workers import (
    WorkerConfig,
    completed_payments,
    open_payments,
    worker_cycle,
)
from klarna_flow import generate_key
from klarna_flow.testing import FakeKlarna, serve_fake

FLOWS = int(os.environ.get("KLARNA_FLOW_BENCH_WORKER_FLOWS", "2000"))
LATENCY = 0.02
_CONTEXT = multiprocessing.get_context("spawn")


def _work(  # pragma: no cover - runs in a child process
    config: WorkerConfig, ids: list[str], start: int, *, barrier: Any, results: Any
) -> None:
    payments = open_payments(config, create_tables=False)
    payment_ids = [UUID(i) for i in ids]
    payments.get(payment_ids[0])  # connected
    barrier.wait()
    wins = worker_cycle(payments, payment_ids, start=start)
    results.put((wins, time.perf_counter(), 0.0))
    if payments.klarna is not None:
        payments.klarna.close()
    payments.close()


def _run_workers(config: WorkerConfig, ids: list[str], processes: int) -> tuple[int, float]:
    """Payments authorized and seconds taken by ``processes`` workers of
    ``examples/postgres_workers.py`` (its ``worker_cycle``), timed from the
    moment all have opened their store."""
    barrier, results = _CONTEXT.Barrier(processes + 1), _CONTEXT.Queue()
    step = max(1, len(ids) // processes)
    workers = [
        _CONTEXT.Process(
            target=_work,
            args=(config, ids, k * step),
            kwargs={"barrier": barrier, "results": results},
        )
        for k in range(processes)
    ]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    done = results_of(results, workers)
    for worker in workers:
        worker.join()
    return sum(w for w, _, _ in done), max(end for _, end, _ in done) - start


def _run(url: str, processes: int) -> float:
    import psycopg

    schema = "bench_" + uuid.uuid4().hex[:10]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        fake = FakeKlarna()
        with serve_fake(fake) as server:
            config = WorkerConfig(
                database_url=url,
                klarna_base_url=server.base_url,
                api_key=fake.api_key,
                cipher_key=generate_key(),
                partner_account_id=fake.partner_account_id,
                schema=schema,
            )
            payments = open_payments(config)
            ids = completed_payments(payments, fake, FLOWS)
            payments.close()
            fake.latency = LATENCY
            wins, elapsed = _run_workers(config, [str(i) for i in ids], processes)
            assert wins == FLOWS, wins
            assert len(fake.transactions) == FLOWS
            return elapsed
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def workers_scaling() -> None:
    url = database_url()
    if not url:
        print(
            "BENCH workers_scaling skipped: no PostgreSQL configured "
            "(set KLARNA_FLOW_BENCH_DATABASE_URL or KLARNA_FLOW_TEST_DATABASE_URL)",
            flush=True,
        )
        return
    one = _run(url, 1)
    four = _run(url, 4)
    report(
        "workers_scaling",
        one / four,
        f"flows={FLOWS} latency={LATENCY * 1000:.0f}ms "
        f"1proc={FLOWS / one:.1f}/s 4proc={FLOWS / four:.1f}/s goal>=2.5",
    )


BENCHMARKS = {"workers_scaling": workers_scaling}
