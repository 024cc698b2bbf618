"""Where the read models live: in memory, or in tables beside the event store.

One table, the payment index, answers every question the application asks of
its read models: open payments by deadline (the expiry sweep), payments by
state (reconcile, ``klarna-flow`` listings) and counts by state. A tracking
row records the last notification applied; an update moves it forward only
from the position it was computed from, so each event is applied exactly once
even when several workers catch up at the same time.

:class:`EventLog` reads the events table itself, leaner than eventsourcing's
recorder (plain tuples, ids as stored): a rebuild and a verification read the
whole log through it a page at a time, and look a few payments up in it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol
from uuid import UUID

import attrs
from eventsourcing.sqlite import SQLiteApplicationRecorder

from klarna_flow._store.index_schema import (
    COLUMNS,
    CREATE_COLUMNS,
    LATER_COLUMNS,
    SECONDARY,
    add_columns,
    indexed,
    selected,
    table_columns,
)

__all__ = [
    "EventLog",
    "IndexRow",
    "LogRecord",
    "MemoryIndex",
    "ReadModelStore",
    "RowValues",
    "SQLIndex",
    "as_uuid",
]

LogRecord = tuple[int, Any, int, str, bytes]
"""(notification id, originator id, version, topic, stored state) of one record."""

RowValues = tuple[
    Any,
    str,
    str,
    int,
    float,
    float | None,
    float | None,
    str | None,
    str | None,
    int | None,
    str | None,
    float | None,
    str | None,
]
"""An index row as plain values, in :class:`IndexRow` field order (the id as
stored: a UUID or its text), for bulk loads."""


def _deadline(
    state: str, request_expires_at: float | None, authorize_by: float | None
) -> float | None:
    if state == "CREATED":
        return request_expires_at
    if state == "COMPLETED":
        return authorize_by
    return None


@attrs.frozen
class IndexRow:
    """One payment as the read models see it (times are POSIX seconds, UTC).

    ``since`` is when the payment entered its state; ``created_at`` when it
    was created. The fields after ``payment_request_id`` came later: a row of
    a store not yet brought up to them (read before its first catch-up) has
    them None.
    """

    payment_id: UUID
    state: str
    flow: str
    version: int
    since: float
    request_expires_at: float | None
    authorize_by: float | None
    payment_request_id: str | None = None
    reference: str | None = None
    amount: int | None = None
    currency: str | None = None
    created_at: float | None = None
    payment_transaction_id: str | None = None

    def values(self) -> RowValues:
        """The row as plain values, in field order."""
        return (
            self.payment_id,
            self.state,
            self.flow,
            self.version,
            self.since,
            self.request_expires_at,
            self.authorize_by,
            self.payment_request_id,
            self.reference,
            self.amount,
            self.currency,
            self.created_at,
            self.payment_transaction_id,
        )

    @property
    def deadline(self) -> float | None:
        """When the expiry sweep may expire this payment, or None."""
        return _deadline(self.state, self.request_expires_at, self.authorize_by)


class ReadModelStore(Protocol):
    """The storage port of the read models."""

    def position(self) -> int: ...

    def rows(self, ids: Iterable[UUID]) -> dict[UUID, IndexRow]: ...

    def apply(self, rows: Mapping[UUID, IndexRow], *, expected: int, position: int) -> bool:
        """Write ``rows`` and move the position; False if it was not ``expected``."""
        ...

    def load(self, values: Sequence[RowValues], *, expected: int, position: int) -> bool:
        """:meth:`apply` for many rows given as plain values (a rebuild)."""
        ...

    def by_payment_request(self, payment_request_id: str) -> UUID | None: ...

    def due(self, now: float) -> list[UUID]: ...

    def in_state(self, state: str) -> list[IndexRow]: ...

    def counts(self) -> dict[str, int]: ...

    def all_rows(self) -> list[IndexRow]: ...

    def versions(self) -> list[tuple[UUID, int]]:
        """(payment id, last version seen) of every row, cheaper than all rows."""
        ...

    def clear(self) -> None: ...


class MemoryIndex:
    """Read models for the in-memory store (they live as long as it does)."""

    def __init__(self) -> None:
        self._rows: dict[UUID, IndexRow] = {}
        self._position = 0
        self._lock = threading.Lock()

    def position(self) -> int:
        return self._position

    def rows(self, ids: Iterable[UUID]) -> dict[UUID, IndexRow]:
        return {i: self._rows[i] for i in ids if i in self._rows}

    def apply(self, rows: Mapping[UUID, IndexRow], *, expected: int, position: int) -> bool:
        with self._lock:
            if self._position != expected:
                return False
            self._rows.update(rows)
            self._position = position
            return True

    def load(self, values: Sequence[RowValues], *, expected: int, position: int) -> bool:
        rows = [IndexRow(as_uuid(v[0]), *v[1:]) for v in values]
        return self.apply({r.payment_id: r for r in rows}, expected=expected, position=position)

    def by_payment_request(self, payment_request_id: str) -> UUID | None:
        for r in list(self._rows.values()):
            if r.payment_request_id == payment_request_id:
                return r.payment_id
        return None

    def due(self, now: float) -> list[UUID]:
        return [
            r.payment_id
            for r in list(self._rows.values())
            if r.deadline is not None and r.deadline <= now
        ]

    def in_state(self, state: str) -> list[IndexRow]:
        return [r for r in list(self._rows.values()) if r.state == state]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in list(self._rows.values()):
            counts[r.state] = counts.get(r.state, 0) + 1
        return counts

    def all_rows(self) -> list[IndexRow]:
        return sorted(self._rows.values(), key=lambda r: str(r.payment_id))

    def versions(self) -> list[tuple[UUID, int]]:
        return [(r.payment_id, r.version) for r in list(self._rows.values())]

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
            self._position = 0


class _Datastore(Protocol):
    def transaction(self, *, commit: bool) -> AbstractContextManager[Any]: ...


_LOOKUP_CHUNK = 500  # ids per lookup statement
REBUILD_CACHE_KIB = 16_384
"""SQLite's page cache while a rebuild writes the payment index (KiB)."""


def _plain(c: Any) -> Any:
    """The DB-API cursor under eventsourcing's, set to return plain tuples
    (sqlite3.Row and psycopg's dict rows cost more than reading the rows)."""
    raw = getattr(c, "sqlite_cursor", None)  # eventsourcing's SQLite cursor wraps sqlite3's
    if isinstance(raw, sqlite3.Cursor):
        raw.row_factory = None
        return raw
    from psycopg.rows import tuple_row  # noqa: PLC0415  (the postgres extra)

    c.row_factory = tuple_row
    return c


class EventLog:
    """Lean reads of eventsourcing's events table, on SQLite or PostgreSQL.

    Rows stay tuples, and a payment id is its 32 lowercase hex digits on both
    stores (as SQLite's events table keeps it; PostgreSQL converts its uuid
    in the query): cheap to hash, compare and key a row by. Nothing is held
    between calls. Get one with :meth:`of`; None means a store read through
    its recorder (in memory).

    Args:
        datastore: eventsourcing's datastore of the events table.
        events: the events table (schema-qualified on PostgreSQL).
        position: the notification id's column (``rowid`` on SQLite).
        sqlite: True for SQLite, False for PostgreSQL.
        heads: the chain heads table beside it (see ``heads.py``), if any.
    """

    def __init__(
        self,
        datastore: _Datastore,
        *,
        events: str,
        position: str,
        sqlite: bool,
        heads: str | None = None,
    ) -> None:
        self._ds = datastore
        self._events = events
        self._position = position
        self._sqlite = sqlite
        self._heads = heads
        self._p = p = "?" if sqlite else "%s"
        self._id = "originator_id" if sqlite else "replace(originator_id::text, '-', '')"
        self._page = (
            f"SELECT {position}, {self._id}, originator_version, topic, state FROM {events} "
            f"WHERE {position} > {p} ORDER BY {position} LIMIT {p}"
        )

    @classmethod
    def of(cls, recorder: object) -> EventLog | None:
        """The events table of an SQL recorder of payments; None for another recorder."""
        heads = getattr(recorder, "heads_table_name", None)
        if isinstance(recorder, SQLiteApplicationRecorder):
            if recorder.datastore.originator_id_type != "uuid":
                return None
            table = recorder.events_table_name
            return cls(recorder.datastore, events=table, position="rowid", sqlite=True, heads=heads)
        try:
            from eventsourcing.postgres import PostgresApplicationRecorder  # noqa: PLC0415
        except ImportError:  # pragma: no cover - without the postgres extra
            return None
        if isinstance(recorder, PostgresApplicationRecorder):
            datastore = recorder.datastore
            if datastore.originator_id_type != "uuid":
                return None
            schema = datastore.schema
            return cls(
                datastore,
                events=f"{schema}.{recorder.events_table_name}",
                position="notification_id",
                sqlite=False,
                heads=None if heads is None else f"{schema}.{heads}",
            )
        return None

    def page(self, after: int, limit: int) -> list[LogRecord]:
        """The next ``limit`` records of the notification log after position ``after``."""
        with self._ds.transaction(commit=False) as c:
            cursor = _plain(c)
            cursor.execute(self._page, (after, limit))
            rows: list[LogRecord] = cursor.fetchall()
            return rows

    def _in(self, ids: Sequence[str]) -> tuple[str, list[Any]]:
        """A condition on the originator id being one of ``ids``, and its parameters."""
        if self._sqlite:
            return f"originator_id IN ({', '.join([self._p] * len(ids))})", list(ids)
        return "originator_id = ANY(%s::uuid[])", [list(ids)]

    def latest_before(self, ids: Iterable[str], before: int) -> dict[str, tuple[int, Any, int]]:
        """(version, digest as stored, position) of each payment's record that
        comes last in the log before position ``before``; payments without one
        are left out."""
        found: dict[str, tuple[int, Any, int]] = {}
        wanted = list(ids)
        for start in range(0, len(wanted), _LOOKUP_CHUNK):
            condition, params = self._in(wanted[start : start + _LOOKUP_CHUNK])
            with self._ds.transaction(commit=False) as c:
                cursor = _plain(c)
                cursor.execute(
                    f"SELECT {self._id}, originator_version, substr(state, 1, 32), "
                    f"{self._position} FROM {self._events} "
                    f"WHERE {condition} AND {self._position} < {self._p}",
                    (*params, before),
                )
                for oid, version, digest, position in cursor.fetchall():
                    known = found.get(oid)
                    if known is None or position > known[2]:
                        found[oid] = (version, digest, position)
        return found

    def last_versions(self, ids: Iterable[str]) -> dict[str, int]:
        """Each payment's highest stored version (payments with none are left out)."""
        found: dict[str, int] = {}
        wanted = list(ids)
        for start in range(0, len(wanted), _LOOKUP_CHUNK):
            condition, params = self._in(wanted[start : start + _LOOKUP_CHUNK])
            with self._ds.transaction(commit=False) as c:
                cursor = _plain(c)
                cursor.execute(
                    f"SELECT {self._id}, MAX(originator_version) FROM {self._events} "
                    f"WHERE {condition} GROUP BY originator_id",
                    params,
                )
                found.update((oid, int(version)) for oid, version in cursor.fetchall())
        return found

    def has_heads(self) -> bool:
        """True when the store keeps chain heads (a store opened read-only
        before its first writer added the table has none)."""
        if self._heads is None:
            return False
        with self._ds.transaction(commit=False) as c:
            cursor = _plain(c)
            if self._sqlite:
                cursor.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (self._heads,)
                )
            else:
                cursor.execute("SELECT 1 WHERE to_regclass(%s) IS NOT NULL", (self._heads,))
            return cursor.fetchone() is not None

    def ahead_of_log(self) -> list[tuple[str, int]]:
        """(payment, head version) of every chain head above the payment's last
        stored version (0 when none is stored): the log lost its last events.

        Heads and events are read in one statement, so a save cannot fall
        between the two; the database compares them, one index probe per head.
        """
        assert self._heads is not None, "ahead_of_log needs the heads table (see has_heads)"
        head_id = "h.originator_id" if self._sqlite else "replace(h.originator_id::text, '-', '')"
        with self._ds.transaction(commit=False) as c:
            cursor = _plain(c)
            cursor.execute(
                f"SELECT {head_id}, h.originator_version FROM {self._heads} h "
                "WHERE h.originator_version > COALESCE((SELECT MAX(e.originator_version) "
                f"FROM {self._events} e WHERE e.originator_id = h.originator_id), 0) "
                "ORDER BY h.originator_id"
            )
            return [(oid, int(version)) for oid, version in cursor.fetchall()]


class SQLIndex:
    """Read models in SQL tables, through eventsourcing's own datastore.

    Args:
        datastore: the SQLite or PostgreSQL datastore of the event store.
        prefix: table name prefix (the application name), schema-qualified
            for PostgreSQL.
        placeholder: ``?`` for SQLite, ``%s`` for PostgreSQL.
        create: create the tables if missing (eventsourcing's ``CREATE_TABLE``;
            workers that start together should leave this to one setup step).
        log: (events table, position column) of the event store in the same
            database, which :meth:`read_log` reads directly (a rebuild reads
            the log through :class:`EventLog`, from the recorder).
    """

    def __init__(
        self,
        datastore: _Datastore,
        *,
        prefix: str,
        placeholder: str,
        create: bool = True,
        log: tuple[str, str] | None = None,
    ) -> None:
        self._ds = datastore
        self._log = log
        self.reads_log = log is not None
        self._index = f"{prefix}_payment_index"
        self._tracking = f"{prefix}_read_model_tracking"
        self._p = placeholder
        self._sqlite = placeholder == "?"
        self._present: frozenset[str] | None = None  # the table's columns, once read
        self._indexed: bool | None = None  # the secondary indexes are there; None: not known
        self._cache_setting: int | None = None  # SQLite's cache size, while a rebuild raises it
        if create:
            self._create_tables()

    def _create_tables(self) -> None:
        with self._ds.transaction(commit=True) as c:
            c.execute(f"CREATE TABLE IF NOT EXISTS {self._index} ({CREATE_COLUMNS})")
            c.execute(
                f"CREATE TABLE IF NOT EXISTS {self._tracking} ("
                "name TEXT PRIMARY KEY, position BIGINT NOT NULL)"
            )
            c.execute(
                f"INSERT INTO {self._tracking} (name, position) VALUES ('index', 0) "
                "ON CONFLICT (name) DO NOTHING"
            )
        self._upgrade()
        with self._ds.transaction(commit=True) as c:
            self._create_indexes(c)

    def _create_indexes(self, c: Any) -> None:
        name = self._index.split(".")[-1]  # PostgreSQL puts an index beside its table
        for suffix, column in SECONDARY:
            c.execute(f"CREATE INDEX IF NOT EXISTS {name}_{suffix} ON {self._index} ({column})")

    def _columns(self) -> frozenset[str]:
        """The index table's columns (read once the table has them all)."""
        if self._present is None or not self._complete(self._present):
            with self._ds.transaction(commit=False) as c:
                self._present = table_columns(c, self._index, sqlite=self._sqlite)
        return self._present

    @staticmethod
    def _complete(present: frozenset[str]) -> bool:
        return all(name in present for name, _ in LATER_COLUMNS)

    def _upgrade(self) -> None:
        """Before writing: add the columns an older table lacks (see index_schema)."""
        if self._present is not None and self._complete(self._present):
            return
        with self._ds.transaction(commit=True) as c:
            add_columns(c, self._index, self._tracking, sqlite=self._sqlite)
        self._present = None
        self._columns()

    def read_log(self, after: int, limit: int) -> list[LogRecord]:
        """The next records of the notification log after position ``after``
        (see :class:`EventLog`; ids are 32 hex digits)."""
        assert self._log is not None, "read_log needs the events table (log=)"
        table, position = self._log
        return EventLog(self._ds, events=table, position=position, sqlite=self._sqlite).page(
            after, limit
        )

    def position(self) -> int:
        """The last notification applied; 0 while the table lacks later columns
        (its rows are incomplete until a catch-up from the start fills them)."""
        if not self._complete(self._columns()):
            return 0
        with self._ds.transaction(commit=False) as c:
            c.execute(f"SELECT position FROM {self._tracking} WHERE name = 'index'")
            row = c.fetchone()
        return int(row["position"]) if row else 0

    def rows(self, ids: Iterable[UUID]) -> dict[UUID, IndexRow]:
        keys = [str(i) for i in ids]
        if not keys:
            return {}
        found: dict[UUID, IndexRow] = {}
        with self._ds.transaction(commit=False) as c:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ", ".join([self._p] * len(chunk))
                c.execute(
                    f"SELECT {self._selected()} FROM {self._index} WHERE payment_id IN ({marks})",
                    chunk,
                )
                for r in c.fetchall():
                    row = _row(r)
                    found[row.payment_id] = row
        return found

    def apply(self, rows: Mapping[UUID, IndexRow], *, expected: int, position: int) -> bool:
        values = [r.values() for r in rows.values()]
        return self.load(values, expected=expected, position=position)

    def load(
        self,
        values: Sequence[RowValues],
        *,
        expected: int,
        position: int,
        last: bool | None = None,
    ) -> bool:
        """:meth:`apply` for rows given as plain values.

        ``last`` marks the loads of a rebuild: False for each but the last,
        True for the last. The secondary indexes, dropped by :meth:`clear`,
        are made again by the last: a rebuild writes every row, then indexes
        them once. Otherwise the first load of this instance makes any that
        are missing (as a rebuild stopped half way leaves them).
        """
        self._upgrade()
        p = self._p
        with self._ds.transaction(commit=True) as c:
            c.execute(
                f"UPDATE {self._tracking} SET position = {p} "
                f"WHERE name = 'index' AND position = {p} RETURNING position",
                (position, expected),
            )
            if c.fetchone() is None:
                return False
            rebuilding = self._sqlite and last is not None
            if rebuilding:
                self._raise_cache(c)
            if values:
                c.executemany(_UPSERT.format(index=self._index, p=p), map(_stored, values))
            if rebuilding and last:
                self._restore_cache(c)
            if last or (last is None and not self._indexed):
                if last or expected == 0 or not indexed(c, self._index, sqlite=self._sqlite):
                    self._create_indexes(c)
                self._indexed = True
        return True

    def _raise_cache(self, c: Any) -> None:
        """A rebuild writes rows all over the table (payment ids are random):
        SQLite keeps up to :data:`REBUILD_CACHE_KIB` of it in cache from the
        first write to the last (its default is 2 MiB).

        A rebuild writes from one thread, one transaction at a time, so the
        pool gives it the same connection each time; the cache is not shrunk
        between writes (shrinking and growing it again fragments the heap).
        """
        if self._cache_setting is None:
            c.execute("PRAGMA cache_size")
            self._cache_setting = int(c.fetchone()[0])
            c.execute(f"PRAGMA cache_size = {-REBUILD_CACHE_KIB}")

    def _restore_cache(self, c: Any) -> None:
        """SQLite's own cache size again, before the last write of a rebuild
        makes the indexes (SQLite's sorter takes memory by the cache's size)."""
        if self._cache_setting is not None:
            c.execute(f"PRAGMA cache_size = {self._cache_setting}")
            self._cache_setting = None

    def by_payment_request(self, payment_request_id: str) -> UUID | None:
        with self._ds.transaction(commit=False) as c:
            c.execute(
                f"SELECT payment_id FROM {self._index} WHERE payment_request_id = {self._p}",
                (payment_request_id,),
            )
            row = c.fetchone()
        return UUID(row["payment_id"]) if row else None

    def due(self, now: float) -> list[UUID]:
        with self._ds.transaction(commit=False) as c:
            c.execute(
                f"SELECT payment_id FROM {self._index} WHERE deadline <= {self._p} "
                "ORDER BY deadline",
                (now,),
            )
            return [UUID(r["payment_id"]) for r in c.fetchall()]

    def in_state(self, state: str) -> list[IndexRow]:
        with self._ds.transaction(commit=False) as c:
            c.execute(
                f"SELECT {self._selected()} FROM {self._index} WHERE state = {self._p} "
                "ORDER BY since",
                (state,),
            )
            return [_row(r) for r in c.fetchall()]

    def counts(self) -> dict[str, int]:
        with self._ds.transaction(commit=False) as c:
            c.execute(f"SELECT state, COUNT(*) AS n FROM {self._index} GROUP BY state")
            return {r["state"]: int(r["n"]) for r in c.fetchall()}

    def all_rows(self) -> list[IndexRow]:
        return list(self._iter_all())

    def versions(self) -> list[tuple[UUID, int]]:
        with self._ds.transaction(commit=False) as c:
            c.execute(f"SELECT payment_id, version FROM {self._index}")
            return [(as_uuid(r["payment_id"]), int(r["version"])) for r in c.fetchall()]

    def _iter_all(self) -> Iterator[IndexRow]:
        with self._ds.transaction(commit=False) as c:
            c.execute(f"SELECT {self._selected()} FROM {self._index} ORDER BY payment_id")
            for r in c.fetchall():
                yield _row(r)

    def _selected(self) -> str:
        return selected(self._columns())

    def clear(self) -> None:
        """Empty the read models; the secondary indexes go too (first, so the
        rows go without updating them), and come back with the first load, or
        the last of a rebuild (which writes every row, then indexes)."""
        self._upgrade()
        with self._ds.transaction(commit=True) as c:
            for suffix, _ in SECONDARY:
                c.execute(f"DROP INDEX IF EXISTS {self._index}_{suffix}")
            c.execute(f"DELETE FROM {self._index}")
            c.execute(f"UPDATE {self._tracking} SET position = 0 WHERE name = 'index'")
        self._indexed = False


_UPSERT = (
    f"INSERT INTO {{index}} ({', '.join(COLUMNS)}, deadline) "
    f"VALUES ({', '.join(['{p}'] * (len(COLUMNS) + 1))}) "
    "ON CONFLICT (payment_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in (*COLUMNS[1:], "deadline"))
)


def _stored(v: RowValues) -> tuple[Any, ...]:
    """A row's values as the table stores them: the id as canonical text (however
    the event store keeps it: catch-up and rebuild must key a row alike), the
    deadline added."""
    return (_canonical(v[0]), *v[1:], _deadline(v[1], v[5], v[6]))


def _canonical(payment_id: Any) -> str:
    """A payment id as the text of its UUID (SQLite's events table keeps 32 hex digits)."""
    text = str(payment_id)
    if len(text) == 32 and text.isalnum() and text == text.lower():  # UUID.hex: slice it
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
    return str(as_uuid(payment_id))


def _row(r: Any) -> IndexRow:
    """The IndexRow of a selected row (later columns None where the table lacks them)."""
    keys = r.keys()
    later = [r[name] if name in keys else None for name, _ in LATER_COLUMNS]
    amount = later[1]
    return IndexRow(
        UUID(r["payment_id"]),
        r["state"],
        r["flow"],
        int(r["version"]),
        float(r["since"]),
        r["request_expires_at"],
        r["authorize_by"],
        r["payment_request_id"],
        later[0],
        None if amount is None else int(amount),
        later[2],
        later[3],
        later[4],
    )


def as_uuid(value: Any) -> UUID:
    """A payment id as a UUID, whether a store gave it as a UUID or as text."""
    return value if isinstance(value, UUID) else UUID(str(value))
