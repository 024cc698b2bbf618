"""workers_scaling: authorization flows on PostgreSQL, 4 worker processes vs 1.

Both runs authorize the same number of completed payments against the
loopback FakeKlarna with 20 ms latency, each on a fresh schema of the
database named by ``KLARNA_FLOW_BENCH_DATABASE_URL`` (else
``KLARNA_FLOW_TEST_DATABASE_URL``). ratio = throughput with 4
processes / throughput with 1 (goal >= 2.5).
"""

from __future__ import annotations

import os
import time
import uuid

from benchmarks._harness import report
from benchmarks.bench_pg import database_url
from examples.postgres_workers import (
    WorkerConfig,
    completed_payments,
    open_payments,
    run_workers,
)
from klarna_flow import generate_key
from klarna_flow.testing import FakeKlarna, serve_fake

FLOWS = int(os.environ.get("KLARNA_FLOW_BENCH_WORKER_FLOWS", "2000"))
LATENCY = 0.02


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
            start = time.perf_counter()
            wins = run_workers(config, ids, processes)
            elapsed = time.perf_counter() - start
            assert sum(wins) == FLOWS, wins
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
