"""Many worker processes on one PostgreSQL store: each payment handled once."""

from __future__ import annotations

from collections import Counter

import pytest

from examples.postgres_workers import (
    WorkerConfig,
    completed_payments,
    open_payments,
    run_workers,
)
from klarna_flow import PaymentState, generate_key
from klarna_flow.testing import FakeKlarna, serve_fake
from tests.conftest import PG_URL

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_four_processes_race_through_200_payments(pg_schema: str) -> None:
    assert PG_URL is not None
    fake = FakeKlarna()
    with serve_fake(fake) as server:
        config = WorkerConfig(
            database_url=PG_URL,
            klarna_base_url=server.base_url,
            api_key=fake.api_key,
            cipher_key=generate_key(),
            partner_account_id=fake.partner_account_id,
            schema=pg_schema,
        )
        payments = open_payments(config)
        ids = completed_payments(payments, fake, 200)

        wins = run_workers(config, ids, processes=4)

        assert sum(wins) == 200
        assert len([w for w in wins if w > 0]) >= 2, wins  # the work was shared
        # Every payment is final, authorized once, with one transaction at Klarna.
        states = Counter(payments.get(i).state for i in ids)
        assert states == {PaymentState.AUTHORIZED: 200}
        by_reference = Counter(t.reference for t in fake.transactions)
        assert len(by_reference) == 200
        assert set(by_reference.values()) == {1}
        authorize_calls = [r for r in fake.requests if r.url.path.endswith("/authorize")]
        assert len(authorize_calls) == 200
        # No event is missing from the notification log: 4 events per payment.
        notifications = payments._store.recorder.select_notifications(start=1, limit=10_000)
        per_payment = Counter(n.originator_id for n in notifications)
        assert set(per_payment) == set(ids)
        assert set(per_payment.values()) == {4}
        # The read model saw every event exactly once.
        assert payments.counts_by_state() == {"AUTHORIZED": 200}
        assert payments._store.index.store.position() == notifications[-1].id
        # And the hash chain of every payment checks out.
        report = payments.verify()
        assert report.ok, report
        assert report.events_checked == 800
        payments.close()
