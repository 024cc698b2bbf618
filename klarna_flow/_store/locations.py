"""Where events live: eventsourcing environment settings for each store.

Also what an existing store must hold: read-only access (``AuditLog.open``,
the ``klarna-flow`` commands) opens a store only after finding klarna_flow's
tables in it, and never creates a table (eventsourcing's ``CREATE_TABLE=n``).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Collection
from contextlib import closing
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from eventsourcing.persistence import PersistenceError

from klarna_flow._errors import ConfigurationError, InvalidInput, StorageError

__all__ = [
    "is_postgres_url",
    "postgres_env",
    "postgres_tables",
    "require_tables",
    "require_wal",
    "shown",
    "sqlite_env",
    "sqlite_tables",
]

_SCHEMES = ("postgres://", "postgresql://")


def is_postgres_url(db: str) -> bool:
    """True for a ``postgresql://`` (or ``postgres://``) URL, False for an SQLite path."""
    return db.startswith(_SCHEMES)


def postgres_env(url: str) -> dict[str, str]:
    """eventsourcing's ``POSTGRES_*`` settings from a ``postgresql://`` URL.

    Raises:
        InvalidInput: not a PostgreSQL URL with a database name (the password,
            if any, is not echoed).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql") or not parts.path.strip("/"):
        raise InvalidInput("url", "must look like postgresql://user:password@host:port/dbname")
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": unquote(parts.path.strip("/")),
        "POSTGRES_HOST": parts.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(parts.port or 5432),
        "POSTGRES_USER": unquote(parts.username or ""),
        "POSTGRES_PASSWORD": unquote(parts.password or ""),
    }


def sqlite_env(path: str, *, read_only: bool = False) -> dict[str, str]:
    """eventsourcing's SQLite settings for ``path``.

    ``read_only`` opens the file as a ``file:...?mode=ro`` URI (eventsourcing
    connects with ``uri=True``): SQLite then writes nothing to it, and never
    creates it.
    """
    name = _read_only_uri(path) if read_only else path
    return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": name}


def _read_only_uri(path: str) -> str:
    return f"file:{quote(os.path.abspath(path))}?mode=ro"


def sqlite_tables(path: str) -> frozenset[str]:
    """The tables of an existing SQLite file, read without writing to it.

    Raises:
        InvalidInput: there is no file at ``path``.
        StorageError: the file is not an SQLite database.
    """
    if not os.path.isfile(path):
        raise InvalidInput("db", f"no event store at {path}")
    query = "SELECT name FROM sqlite_master WHERE type = 'table'"
    try:
        with closing(sqlite3.connect(_read_only_uri(path), uri=True)) as conn:
            return frozenset(row[0] for row in conn.execute(query))
    except sqlite3.Error as e:  # e.g. "file is not a database"
        raise StorageError(f"cannot open the event store at {path}: {e}") from e


def require_wal(path: str) -> None:
    """Refuse to open an SQLite store read-only unless its journal is in WAL mode.

    eventsourcing turns every SQLite file it connects to into WAL mode, which
    a read-only connection cannot do.

    Raises:
        StorageError: the file's journal mode is another.
    """
    try:
        with closing(sqlite3.connect(_read_only_uri(path), uri=True)) as conn:
            mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    except sqlite3.Error as e:
        raise StorageError(f"cannot open the event store at {path}: {e}") from e
    if mode.lower() != "wal":
        msg = (
            f"cannot open {path} read-only: its journal mode is {mode}, not WAL "
            "(a writer, e.g. klarna-flow replay, sets WAL again)"
        )
        raise StorageError(msg)


def postgres_tables(datastore: Any) -> frozenset[str]:
    """The tables in the schema of eventsourcing's PostgreSQL ``datastore``.

    Raises:
        StorageError: the database cannot be reached or read.
    """
    query = "SELECT table_name FROM information_schema.tables WHERE table_schema = %s"
    try:
        with datastore.transaction(commit=False) as c:
            c.execute(query, (datastore.schema,))
            return frozenset(row["table_name"] for row in c.fetchall())
    except PersistenceError as e:
        msg = f"cannot open the event store: {type(e).__name__}: {e}"
        raise StorageError(msg) from e


def require_tables(found: Collection[str], needed: Collection[str], db: str) -> None:
    """Refuse a store that lacks any of klarna_flow's ``needed`` tables.

    Raises:
        ConfigurationError: ``db`` holds no klarna_flow store.
    """
    if not set(needed) <= set(found):
        raise ConfigurationError(f"{shown(db)} holds no klarna_flow store")


def shown(db: str) -> str:
    """``db`` as messages show it: a URL without its password."""
    if not is_postgres_url(db):
        return db
    parts = urlsplit(db)
    if parts.password is None:
        return db
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username or ''}@{host}").geturl()
