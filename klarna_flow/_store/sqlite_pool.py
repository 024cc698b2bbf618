"""SQLite connections that keep their prepared statements.

eventsourcing (9.5) opens every SQLite connection with a statement cache of
one (``cached_statements=True``). A save runs ``BEGIN``, the events insert and
the chain-head upsert, so each of them was parsed and planned again on every
save, and every load re-prepared its ``SELECT``: about a fifth of a command's
time on a file store. The pool here opens the same connections (same URI,
autocommit, lock timeout, row factory, and WAL through eventsourcing's own
first connection) with a cache that holds every statement the store runs.

The pool is eventsourcing's; only the connection's cache size differs. It is
put in place before the store opens its first connection.
"""

from __future__ import annotations

import sqlite3

from eventsourcing.persistence import InterfaceError
from eventsourcing.sqlite import (
    SQLITE3_DEFAULT_LOCK_TIMEOUT,
    SQLiteConnection,
    SQLiteConnectionPool,
    SQLiteDatastore,
)

__all__ = ["STATEMENT_CACHE", "StatementCachingPool", "cache_statements"]

STATEMENT_CACHE = 64
"""Prepared statements kept per connection (the store runs about twenty)."""


class StatementCachingPool(SQLiteConnectionPool):
    """eventsourcing's SQLite pool, whose connections keep their statements."""

    def _create_connection(self) -> SQLiteConnection:
        if not self.is_sqlite_memory_mode and not self.is_journal_mode_wal:
            # eventsourcing's own first connection switches the file to WAL.
            super()._create_connection().close()
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
        connection.row_factory = sqlite3.Row
        return SQLiteConnection(sqlite_conn=connection, max_age=self.max_age)


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
