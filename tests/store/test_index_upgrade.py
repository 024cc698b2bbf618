"""A store written before the payment index had its later columns keeps working.

The later columns (reference, amount, currency, created_at, the transaction id)
are taken off a store written by the current code, which is what a store of
the first layout looks like. Then:

- a read-only audit reads it as it is, changes nothing, and still sees every
  row complete (its read models catch up in memory, from the start);
- the first ``Payments`` to open it adds the columns and fills them by catching
  up from the start, giving the rows a rebuild gives;
- several processes opening it at once add each column once.
"""

from __future__ import annotations

import hashlib
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from klarna_flow import AuditLog, Flow, Payments, TokenCipher
from klarna_flow._store.index_schema import LATER_COLUMNS
from klarna_flow._store.read_models import IndexRow
from klarna_flow.testing import ManualClock
from tests.conftest import NO_PG, PG_URL, SESSION_TOKEN

INDEX = "payments_payment_index"
LATER = [name for name, _ in LATER_COLUMNS]


def _fill(payments: Payments, clock: ManualClock) -> list[IndexRow]:
    """A few payments in several states; returns the rows of a full rebuild."""
    ids = []
    for i in range(5):
        ids.append(
            payments.create(
                flow=Flow.AUTHORIZATION, amount=100 + i, currency="EUR", reference=f"o-{i}"
            )
        )
    payments.complete(ids[0], session_token=SESSION_TOKEN)
    payments.complete(ids[1], session_token=SESSION_TOKEN)
    payments.cancel(ids[2])
    clock.advance(timedelta(minutes=61))  # the completed ones expire; two stay CREATED
    payments.expire_overdue()
    payments.rebuild_read_models()
    return payments.read_model()


def _sqlite_columns(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {r[1] for r in conn.execute(f"PRAGMA table_info({INDEX})")}


@pytest.fixture
def sqlite_store(tmp_path: Path) -> tuple[Path, TokenCipher, list[IndexRow]]:
    """An SQLite store whose index lost its later columns, and its complete rows."""
    db, cipher, clock = tmp_path / "old.sqlite", TokenCipher.ephemeral(), ManualClock()
    with Payments.sqlite(db, cipher=cipher, clock=clock, partner_account_id=ACCOUNT) as payments:
        expected = _fill(payments, clock)
    with sqlite3.connect(db) as conn:
        for name in LATER:
            conn.execute(f"ALTER TABLE {INDEX} DROP COLUMN {name}")
        # Earlier rebuilds keyed rows by the id as the events table keeps it.
        conn.execute(f"UPDATE {INDEX} SET payment_id = replace(payment_id, '-', '')")  # noqa: S608
    assert not set(LATER) & _sqlite_columns(db)
    return db, cipher, expected


ACCOUNT = "krn:partner:global:account:test-partner"


def test_a_read_only_audit_reads_an_old_index_complete_and_changes_nothing(
    sqlite_store: tuple[Path, TokenCipher, list[IndexRow]],
) -> None:
    db, _, expected = sqlite_store
    before = hashlib.sha256(db.read_bytes()).hexdigest()

    with AuditLog.open(db, read_only=True) as log:
        rows = log.read_model()

    assert rows == expected
    assert {r.reference for r in rows} == {f"o-{i}" for i in range(5)}
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert not set(LATER) & _sqlite_columns(db)


def test_the_first_writer_adds_the_columns_and_fills_them(
    sqlite_store: tuple[Path, TokenCipher, list[IndexRow]],
) -> None:
    db, cipher, expected = sqlite_store

    with Payments.sqlite(db, cipher=cipher, clock=ManualClock()) as payments:
        assert set(LATER) <= _sqlite_columns(db)
        assert payments.read_model() == expected
        # The rows are keyed as catch-up keys them: a new event of an old payment is followed.
        waiting = next(r for r in expected if r.state == "CREATED")
        payments.cancel(waiting.payment_id)
        rows = {r.payment_id: r for r in payments.read_model()}
        assert len(rows) == len(expected)
        assert rows[waiting.payment_id].state == "CANCELED"
    with sqlite3.connect(db) as conn:  # the stored rows are complete, not only those in memory
        incomplete = f"SELECT COUNT(*) FROM {INDEX} WHERE reference IS NULL"  # noqa: S608
        assert conn.execute(incomplete).fetchone() == (0,)


def test_a_replay_upgrades_an_old_index(
    sqlite_store: tuple[Path, TokenCipher, list[IndexRow]],
) -> None:
    db, _, expected = sqlite_store

    with AuditLog.open(db) as log:  # keyless, writing only the read models (klarna-flow replay)
        log.rebuild_read_models()
        assert log.read_model() == expected
    assert set(LATER) <= _sqlite_columns(db)


@pytest.mark.postgres
def test_processes_opening_an_old_postgres_index_at_once_add_each_column_once(
    pg_schema: str,
) -> None:
    if not PG_URL:
        pytest.skip(NO_PG)
    import psycopg

    env = {"POSTGRES_SCHEMA": pg_schema}
    cipher, clock = TokenCipher.ephemeral(), ManualClock()
    with Payments.postgres(
        PG_URL, env=env, cipher=cipher, clock=clock, partner_account_id=ACCOUNT
    ) as payments:
        expected = _fill(payments, clock)
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        for name in LATER:
            conn.execute(f"ALTER TABLE {pg_schema}.{INDEX} DROP COLUMN {name}")

    def open_and_read(_: int) -> list[IndexRow]:
        # Workers that start together leave creating tables to a setup step: the
        # columns are then added by the first to write the read models.
        with Payments.postgres(PG_URL, env={**env, "CREATE_TABLE": "n"}, cipher=cipher) as p:
            return p.read_model()

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(open_and_read, range(4)))

    assert all(rows == expected for rows in results)
    with psycopg.connect(PG_URL) as conn:
        columns: list[Any] = conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s",
            (pg_schema, INDEX),
        ).fetchall()
    names = [c[0] for c in columns]
    assert sorted(set(names)) == sorted(names)  # no column twice
    assert set(LATER) <= set(names)
