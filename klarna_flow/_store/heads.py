"""Chain heads: each payment's last stored version, written with its events.

The hash chain shows an edited or missing record, but not a deleted *last*
one: what remains still chains. So every save also records each payment's
last version in a small ``<events table>_heads`` table, **in the same
transaction** as the events: a head can never lag behind the log (nor run
ahead of it), and ``verify`` compares the two without trusting any read model.

eventsourcing (9.5) picks the recorder class from ``APPLICATION_RECORDER_TOPIC``
(its public hook); the subclasses here extend ``_insert_events``, the step
eventsourcing's own process recorders extend to write tracking records in the
same transaction. There is no public hook for that step in eventsourcing 9.5.

Stores written before heads existed get theirs from the log the first time
the table is created (:meth:`backfill`); a read-only open without the table
has no heads, and verify falls back to the payment index.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor
from eventsourcing.utils import get_topic

__all__ = ["HeadsRecorder", "SQLiteHeadsRecorder", "last_versions", "recorder_topic"]


@runtime_checkable
class HeadsRecorder(Protocol):
    """A recorder that keeps each payment's last stored version."""

    def head_versions(self) -> list[tuple[UUID, int]] | None:
        """(payment id, last version) of every payment; None without a heads table."""
        ...

    def head_version(self, originator_id: UUID) -> int | None:
        """The last version recorded for one payment, if known."""
        ...


def last_versions(stored_events: Sequence[StoredEvent]) -> list[tuple[Any, int]]:
    """(originator id, highest version) per originator among ``stored_events``."""
    last: dict[Any, int] = {}
    for s in stored_events:
        if s.originator_version > last.get(s.originator_id, 0):
            last[s.originator_id] = s.originator_version
    return list(last.items())


def recorder_topic(persistence_module: str) -> str | None:
    """The heads recorder for eventsourcing's ``PERSISTENCE_MODULE``, if any."""
    if persistence_module == "eventsourcing.sqlite":
        return get_topic(SQLiteHeadsRecorder)
    if persistence_module == "eventsourcing.postgres":
        return "klarna_flow._store.heads_postgres:PostgresHeadsRecorder"
    return None


class SQLiteHeadsRecorder(SQLiteApplicationRecorder):
    """eventsourcing's SQLite recorder, recording chain heads with the events."""

    @property
    def heads_table_name(self) -> str:
        return f"{self.events_table_name}_heads"

    @property
    def _upsert(self) -> str:
        return (
            f"INSERT INTO {self.heads_table_name} (originator_id, originator_version) "
            "VALUES (?, ?) ON CONFLICT (originator_id) DO UPDATE SET "
            "originator_version = excluded.originator_version "
            "WHERE excluded.originator_version > originator_version"
        )

    def construct_create_table_statements(self) -> list[str]:
        heads, events = self.heads_table_name, self.events_table_name
        return [
            *super().construct_create_table_statements(),
            f"CREATE TABLE IF NOT EXISTS {heads} "
            "(originator_id TEXT PRIMARY KEY, originator_version INTEGER NOT NULL) WITHOUT ROWID",
            # A store written before heads existed: take them from the log, once.
            f"INSERT INTO {heads} SELECT originator_id, MAX(originator_version) "
            f"FROM {events} WHERE NOT EXISTS (SELECT 1 FROM {heads}) GROUP BY originator_id",
        ]

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        ids = super()._insert_events(c, stored_events, **kwargs)
        heads = [
            (oid.hex if isinstance(oid, UUID) else oid, version)
            for oid, version in last_versions(stored_events)
        ]
        if len(heads) == 1:  # one payment saved: a plain execute is cheaper
            c.execute(self._upsert, heads[0])
        else:
            c.executemany(self._upsert, heads)
        return ids

    def head_versions(self) -> list[tuple[UUID, int]] | None:
        if not self._has_heads():
            return None
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT originator_id, originator_version FROM {self.heads_table_name}")
            return [(UUID(row[0]), row[1]) for row in c.fetchall()]

    def head_version(self, originator_id: UUID) -> int | None:
        if not self._has_heads():
            return None
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT originator_version FROM {self.heads_table_name} WHERE originator_id=?",
                (originator_id.hex,),
            )
            row = c.fetchone()
        return None if row is None else int(row[0])

    def _has_heads(self) -> bool:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                (self.heads_table_name,),
            )
            return c.fetchone() is not None


def known_heads(recorder: object) -> Iterable[tuple[UUID, int]] | None:
    """The recorder's heads, or None when it keeps none."""
    if isinstance(recorder, HeadsRecorder):
        return recorder.head_versions()
    return None
