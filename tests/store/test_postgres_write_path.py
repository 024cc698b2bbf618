"""The PostgreSQL save: one statement that writes the events and their heads.

A store created by a release before the insert function (workers opened with
``CREATE_TABLE=n``) is still written, in eventsourcing's own transaction,
until a process that creates the tables adds the function.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import sql

from klarna_flow import (
    ConcurrentModification,
    Flow,
    Payments,
    PaymentState,
    TokenCipher,
)
from klarna_flow._store.heads_postgres import PostgresHeadsRecorder
from klarna_flow._store.locations import postgres_env
from tests.conftest import PG_URL

pytestmark = [pytest.mark.postgres]

TOKEN = "krn:payment:eu1:klarna-network-session-token:write-path"


def _open(schema: str, cipher: TokenCipher, *, create: bool = True) -> Payments:
    assert PG_URL is not None
    env = {
        **postgres_env(PG_URL),
        "POSTGRES_SCHEMA": schema,
        "CREATE_TABLE": "y" if create else "n",
    }
    return Payments(env, cipher=cipher, partner_account_id="krn:partner:global:account:w")


def _sql(query: str | sql.Composed, *params: Any) -> list[tuple[Any, ...]]:
    assert PG_URL is not None
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else []


def _head(schema: str, payment_id: UUID) -> int:
    query = sql.SQL(
        "SELECT originator_version FROM {}.payments_events_heads WHERE originator_id = %s"
    )
    rows = _sql(query.format(sql.Identifier(schema)), payment_id)
    return int(rows[0][0])


def _recorder(payments: Payments) -> PostgresHeadsRecorder:
    recorder = payments._store.recorder
    assert isinstance(recorder, PostgresHeadsRecorder)
    return recorder


def _create(payments: Payments, reference: str) -> UUID:
    return payments.create(
        flow=Flow.AUTHORIZATION, amount=1000, currency="EUR", reference=reference
    )


def test_a_save_is_one_statement_writing_the_events_and_the_head(
    pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cipher = TokenCipher.ephemeral()
    payments = _open(pg_schema, cipher)
    payment_id = _create(payments, "one-statement")
    payment = payments.get(payment_id)
    payment.cancel(now=payments.now())
    statements: list[str] = []
    execute = psycopg.Cursor.execute

    def counted(self: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        statements.append(str(query))
        return execute(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", counted)
    payments._store.save_payment(payment)
    monkeypatch.undo()

    assert len(statements) == 1, statements
    assert _head(pg_schema, payment_id) == 2
    assert payments.get(payment_id).state is PaymentState.CANCELED
    assert payments.verify().ok
    payments.close()


def test_a_lost_race_writes_neither_events_nor_head(pg_schema: str) -> None:
    cipher = TokenCipher.ephemeral()
    first, second = _open(pg_schema, cipher), _open(pg_schema, cipher, create=False)
    payment_id = _create(first, "race")
    mine, theirs = first.get(payment_id), second.get(payment_id)
    mine.cancel(now=first.now())
    first._store.save_payment(mine)
    theirs.cancel(now=second.now())
    with pytest.raises(ConcurrentModification):
        second._store.save_payment(theirs)
    assert _head(pg_schema, payment_id) == 2
    assert [type(e).__name__ for e in first._store.stored_events(payment_id)] == [
        "PaymentCreated",
        "PaymentCanceled",
    ]
    first.close()
    second.close()


def test_a_store_without_the_insert_function_is_written_as_before_until_it_is_added(
    pg_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    cipher = TokenCipher.ephemeral()
    setup = _open(pg_schema, cipher)
    setup.close()
    _sql(
        sql.SQL("DROP FUNCTION {}.payments_events_insert").format(sql.Identifier(pg_schema))
    )  # as an older release left it

    old = _open(pg_schema, cipher, create=False)  # a worker: creates nothing
    payment_id = _create(old, "before-the-function")
    old.complete(payment_id, session_token=TOKEN)
    assert _recorder(old)._in_one_statement is False
    assert "payments_events_insert is missing" in caplog.text
    assert _head(pg_schema, payment_id) == 2
    stale = old.get(payment_id)

    upgraded = _open(pg_schema, cipher)  # the next deployment creates the tables: and the function
    signature = f"{pg_schema}.payments_events_insert(uuid[], bigint[], text[], bytea[], text)"
    assert _sql("SELECT to_regprocedure(%s) IS NOT NULL", signature) == [(True,)]
    new = _open(pg_schema, cipher, create=False)
    new_payment = new.get(payment_id)
    new_payment.cancel(now=new.now(), cause="command:cancel")
    new._store.save_payment(new_payment)
    assert _recorder(new)._in_one_statement is True
    # The old worker, still without the function, loses its race on the same payment.
    stale.cancel(now=old.now(), cause="command:cancel")
    with pytest.raises(ConcurrentModification):
        old._store.save_payment(stale)
    assert _head(pg_schema, payment_id) == 3
    report = upgraded.verify()
    assert report.ok, report
    for payments in (old, upgraded, new):
        payments.close()


def _pool(payments: Payments) -> tuple[int, int]:
    pool = _recorder(payments).datastore.pool
    return pool.min_size, pool.max_size


def test_a_store_keeps_one_connection_open_unless_told_otherwise(
    pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cipher = TokenCipher.ephemeral()
    payments = _open(pg_schema, cipher)
    assert _pool(payments) == (1, 15)  # eventsourcing's default keeps 5 open, grows to 15
    payment_id = _create(payments, "pool")
    payments.complete(payment_id, session_token=TOKEN)
    assert payments.counts_by_state() == {"COMPLETED": 1}  # catching up nests a connection
    payments.close()

    monkeypatch.setenv("POSTGRES_POOL_SIZE", "3")
    configured = _open(pg_schema, cipher, create=False)
    assert _pool(configured) == (3, 13)
    configured.close()
