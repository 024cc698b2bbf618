"""SQLite connections that keep their prepared statements.

eventsourcing (9.5) opens every SQLite connection with a statement cache of
one (``cached_statements=True``). A save runs ``BEGIN``, the events insert and
the chain-head upsert, so each of them was parsed and planned again on every
save, and every load re-prepared its ``SELECT``: about a fifth of a command's
time on a file store. The pool here opens the same connections (same URI,
autocommit, lock timeout, row factory, WAL) with a cache that holds every statement the store runs.

The pool is eventsourcing's; its connections differ in two more ways, both
for several processes opening one file: the switch to WAL is tried again
while another process holds the file, and writing transactions begin
``IMMEDIATE`` (see :class:`_Transaction`). It is put in place before the store
opens its first connection.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

from eventsourcing.persistence import InterfaceError, OperationalError
from eventsourcing.sqlite import (
    SQLITE3_DEFAULT_LOCK_TIMEOUT,
    SQLiteConnection,
    SQLiteConnectionPool,
    SQLiteCursor,
    SQLiteDatastore,
    SQLiteTransaction,
)

__all__ = ["STATEMENT_CACHE", "StatementCachingPool", "cache_statements"]

STATEMENT_CACHE = 64
"""Prepared statements kept per connection (the store runs about twenty)."""

_WAL_RETRY_SECONDS = 0.01


class StatementCachingPool(SQLiteConnectionPool):
    """eventsourcing's SQLite pool, whose connections keep their statements."""

    def _create_connection(self) -> SQLiteConnection:
        try:
            connection = sqlite3.connect(
                database=self.db_name,
                uri=True,
                check_same_thread=False,
                isolation_level=None,  # autocommit: the datastore issues BEGIN
                cached_statements=STATEMENT_CACHE,
                timeout=self.lock_timeout or SQLITE3_DEFAULT_LOCK_TIMEOUT,
            )
        except (sqlite3.Error, TypeError) as e:
            raise InterfaceError(e) from e
        if not self.is_sqlite_memory_mode and not self.is_journal_mode_wal:
            self._use_wal(connection)
        connection.row_factory = sqlite3.Row
        return WritingConnection(sqlite_conn=connection, max_age=self.max_age)

    def _use_wal(self, connection: sqlite3.Connection) -> None:
        """Switch the file to write-ahead logging, as eventsourcing does, waiting
        out other processes switching it at the same time.

        The switch needs the file to itself, and SQLite refuses it at once
        ("database is locked") while another process opens the same new file,
        without waiting for the lock timeout: so it is tried again until then.
        """
        deadline = time.monotonic() + (self.lock_timeout or SQLITE3_DEFAULT_LOCK_TIMEOUT)
        while True:
            try:
                mode = str(connection.execute("PRAGMA journal_mode").fetchone()[0])
                if mode.lower() != "wal":
                    connection.execute("PRAGMA journal_mode=WAL")
                    self.journal_mode_was_changed_to_wal = True
                self.is_journal_mode_wal = True
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() >= deadline:
                    connection.close()
                    raise
            time.sleep(_WAL_RETRY_SECONDS)


class WritingConnection(SQLiteConnection):
    """An SQLite connection whose writing transactions take the write lock first."""

    @contextmanager
    def transaction(self, *, commit: bool) -> Iterator[SQLiteCursor]:
        with _Transaction(self, commit=commit) as cursor, cursor:
            yield cursor


class _Transaction(SQLiteTransaction):
    """eventsourcing's transaction, begun ``IMMEDIATE`` when it will write.

    A deferred ``BEGIN`` takes the write lock at the first write. If another
    process committed after this transaction's first read (two processes
    creating the tables of a new file, a read model reading its position
    before writing rows), SQLite refuses the upgrade at once with "database
    is locked", without waiting for the lock timeout. ``BEGIN IMMEDIATE``
    waits for the write lock (up to the timeout) before reading anything; a
    timeout is eventsourcing's ``OperationalError``, as a failed commit is.
    """

    def __enter__(self) -> SQLiteCursor:
        cursor = self.connection.cursor()
        try:
            cursor.execute("BEGIN IMMEDIATE" if self.commit else "BEGIN")
        except sqlite3.OperationalError as e:  # the lock timeout ran out
            cursor.sqlite_cursor.close()
            raise OperationalError(e) from e
        return cursor


def cache_statements(datastore: SQLiteDatastore) -> None:
    """Give ``datastore`` a pool of statement-caching connections.

    Called before the datastore has opened a connection; its pool settings
    (eventsourcing's defaults, as ``SQLiteFactory`` makes it) carry over.
    """
    old = datastore.pool
    datastore.pool = StatementCachingPool(
        db_name=old.db_name,
        lock_timeout=old.lock_timeout,
        pool_size=old.pool_size,
        max_overflow=old.max_overflow,
        pool_timeout=old.pool_timeout,
        max_age=old.max_age,
        pre_ping=old.pre_ping,
    )
    old.close()
