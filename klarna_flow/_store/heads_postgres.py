"""Chain heads on PostgreSQL (see :mod:`klarna_flow._store.heads`); needs the postgres extra.

A save is **one statement**: ``SELECT ... FROM <events>_insert(ids, versions,
topics, states, lock_timeout)``, a function created with the tables, run in
autocommit, so the statement is the transaction. In order, it:

1. upserts the heads of the payments saved (sorted by id, so two saves of
   several payments take the rows in one order);
2. locks the events table ``IN EXCLUSIVE MODE``, as eventsourcing does, so
   that notification ids are issued in commit order and a reader following
   the log never passes a gap filled in later
   (``tests/store/test_postgres_ordering.py`` races writers and readers);
3. inserts the events, returning their notification ids.

It sends no ``NOTIFY``: nothing in klarna_flow listens, and PostgreSQL makes
every committing transaction that notified, in any database of the server,
wait for the one before it (its notification queue is kept in commit order),
which would serialize stores that share a server. eventsourcing's
``subscribe`` is therefore refused on this recorder.

The table lock is held from the insert to the commit, inside the server:
eventsourcing's own transaction (``BEGIN``, the statements, a sync, then
``COMMIT``) holds it across a round trip to the client, which is what made
more workers slower. A conflicting writer of the same payment waits on the
head row before it takes the table lock, then fails on the events' primary
key; its heads roll back with it.

A store created by a release without the function (workers started with
``CREATE_TABLE=n``) is written as before, in eventsourcing's transaction with
the heads upserted first (:meth:`PostgresHeadsRecorder._insert_events`); the
next process that creates the tables adds the function.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast
from uuid import UUID

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import retry
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier, Literal

from klarna_flow._store.heads import last_versions

__all__ = ["PostgresHeadsRecorder"]

logger = logging.getLogger("klarna_flow")


class PostgresHeadsRecorder(PostgresApplicationRecorder):
    """eventsourcing's PostgreSQL recorder, recording chain heads with the events,
    each save in one statement (see the module's documentation)."""

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self.heads_table_name = f"{self.events_table_name}_heads"
        self.insert_function_name = f"{self.events_table_name}_insert"
        self.check_identifier_length(self.heads_table_name)
        self.check_identifier_length(self.insert_function_name)
        id_type = datastore.originator_id_type
        names = {
            "schema": Identifier(datastore.schema),
            "heads": Identifier(self.heads_table_name),
            "events": Identifier(self.events_table_name),
            "function": Identifier(self.insert_function_name),
            "id_type": Identifier(id_type),
        }
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.{heads} "
                "(originator_id uuid PRIMARY KEY, originator_version bigint NOT NULL)"
            ).format(**names)
        )
        self.sql_create_statements.append(  # a store written before heads existed
            SQL(
                "INSERT INTO {schema}.{heads} SELECT originator_id, MAX(originator_version) "
                "FROM {schema}.{events} WHERE NOT EXISTS (SELECT 1 FROM {schema}.{heads}) "
                "GROUP BY originator_id ON CONFLICT DO NOTHING"
            ).format(**names)
        )
        self.sql_create_statements.append(
            SQL(
                "CREATE OR REPLACE FUNCTION {schema}.{function}("
                "ids {id_type}[], versions bigint[], topics text[], states bytea[], "
                "wait text) RETURNS SETOF bigint LANGUAGE plpgsql AS $body$ "
                "BEGIN "
                "INSERT INTO {schema}.{heads} AS h (originator_id, originator_version) "
                "SELECT i, MAX(v) FROM unnest(ids, versions) AS e(i, v) GROUP BY i ORDER BY i "
                "ON CONFLICT (originator_id) DO UPDATE SET originator_version = "
                "GREATEST(h.originator_version, excluded.originator_version); "
                "PERFORM set_config('lock_timeout', wait, true); "
                "LOCK TABLE {schema}.{events} IN EXCLUSIVE MODE; "
                "RETURN QUERY INSERT INTO {schema}.{events} "
                "(originator_id, originator_version, topic, state) "
                "SELECT * FROM unnest(ids, versions, topics, states) RETURNING notification_id; "
                "END $body$"
            ).format(**names)
        )
        self._call = SQL(
            "SELECT n FROM {schema}.{function}(%b::{id_type}[], %b::bigint[], "
            "%b::text[], %b::bytea[], %b) AS n"
        ).format(**names)
        self._lock_timeout = f"{datastore.lock_timeout}s"
        self._has_function = SQL("SELECT to_regprocedure({signature}) IS NOT NULL AS found").format(
            signature=Literal(
                f'"{datastore.schema}"."{self.insert_function_name}"'
                f"({id_type}[], bigint[], text[], bytea[], text)"
            )
        )
        self._in_one_statement: bool | None = None  # None: not looked up yet
        self._upsert = SQL(
            "INSERT INTO {schema}.{heads} AS h (originator_id, originator_version) "
            "VALUES (%s, %s) ON CONFLICT (originator_id) DO UPDATE SET "
            "originator_version = GREATEST(h.originator_version, excluded.originator_version)"
        ).format(**names)
        self._select_all = SQL(
            "SELECT originator_id, originator_version FROM {schema}.{heads}"
        ).format(**names)
        self._select_one = SQL(
            "SELECT originator_version FROM {schema}.{heads} WHERE originator_id = %s"
        ).format(**names)
        self._exists = SQL("SELECT to_regclass(%s) IS NOT NULL AS found")
        self._qualified = f"{datastore.schema}.{self.heads_table_name}"

    def create_table(self) -> None:
        super().create_table()
        self._in_one_statement = True

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        if not stored_events:
            return None
        if self._in_one_statement is None:
            self._in_one_statement = self._function_exists()
            if not self._in_one_statement:
                logger.warning(
                    "%s.%s is missing (the store was created by an older release): saves "
                    "use eventsourcing's transaction, slower with many workers; open the "
                    "store once with its tables created (CREATE_TABLE, the default) to add it",
                    self.datastore.schema,
                    self.insert_function_name,
                )
        if not self._in_one_statement:
            return cast("Sequence[int] | None", super().insert_events(stored_events, **kwargs))
        return cast("list[int]", self._insert_in_one_statement(stored_events))

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def _insert_in_one_statement(self, stored_events: Sequence[StoredEvent]) -> list[int]:
        params = (
            [s.originator_id for s in stored_events],
            [s.originator_version for s in stored_events],
            [s.topic for s in stored_events],
            [s.state for s in stored_events],
            self._lock_timeout,
        )
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._call, params, prepare=True)
            return [row["n"] for row in curs.fetchall()]

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def _function_exists(self) -> bool:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._has_function)
            row = curs.fetchone()
        return bool(row and row["found"])

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> Any:
        msg = (
            "klarna_flow's PostgreSQL store sends no NOTIFY: follow the notification "
            "log with select_notifications instead"
        )
        raise NotImplementedError(msg)

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        # eventsourcing's transaction, on a store without the function: the
        # heads first, in the events' transaction and pipeline, before the lock.
        super()._insert_events(curs, stored_events, **kwargs)
        curs.executemany(self._upsert, last_versions(stored_events))

    def head_versions(self) -> list[tuple[UUID, int]] | None:
        with self.datastore.transaction(commit=False) as curs:
            if not self._has_heads(curs):
                return None
            curs.execute(self._select_all)
            return [(row["originator_id"], row["originator_version"]) for row in curs.fetchall()]

    def head_version(self, originator_id: UUID) -> int | None:
        with self.datastore.transaction(commit=False) as curs:
            if not self._has_heads(curs):
                return None
            curs.execute(self._select_one, (originator_id,))
            row = curs.fetchone()
        return None if row is None else int(row["originator_version"])

    def _has_heads(self, curs: Cursor[DictRow]) -> bool:
        curs.execute(self._exists, (self._qualified,))
        row = curs.fetchone()
        return bool(row and row["found"])
