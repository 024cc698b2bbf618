"""Chain heads on PostgreSQL (see :mod:`klarna_flow._store.heads`); needs the postgres extra."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from klarna_flow._store.heads import last_versions

__all__ = ["PostgresHeadsRecorder"]


class PostgresHeadsRecorder(PostgresApplicationRecorder):
    """eventsourcing's PostgreSQL recorder, recording chain heads with the events.

    The heads are written by ``_insert_events``, which eventsourcing (9.5)
    runs in the events' transaction and pipeline, before it locks the table.
    Two writers of one payment meet on its heads row; the loser's events
    insert then fails and its transaction, heads included, rolls back.
    """

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self.heads_table_name = f"{self.events_table_name}_heads"
        self.check_identifier_length(self.heads_table_name)
        names = {
            "schema": Identifier(datastore.schema),
            "heads": Identifier(self.heads_table_name),
            "events": Identifier(self.events_table_name),
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

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
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
