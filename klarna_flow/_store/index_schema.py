"""The payment index's table: its columns, and bringing an older table up to them.

It also has secondary indexes (:data:`SECONDARY`), which :func:`indexed`
finds. Stores written before a column existed keep working: :func:`missing_columns`
says which columns a table lacks, :func:`add_columns` adds them (one writer at
a time) and moves the read model's position back to 0, so the next catch-up
replays the log and fills the new columns of every row. Until then a reader
selects only the columns the table has (:func:`selected`).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "COLUMNS",
    "CREATE_COLUMNS",
    "LATER_COLUMNS",
    "SECONDARY",
    "add_columns",
    "indexed",
    "missing_columns",
    "selected",
    "table_columns",
]

# The columns of the first layout, in IndexRow field order.
_FIRST = (
    "payment_id",
    "state",
    "flow",
    "version",
    "since",
    "request_expires_at",
    "authorize_by",
    "payment_request_id",
)
# Columns added later: (name, SQL type), in IndexRow field order after the first.
LATER_COLUMNS = (
    ("reference", "TEXT"),
    ("amount", "BIGINT"),
    ("currency", "TEXT"),
    ("created_at", "DOUBLE PRECISION"),
    ("payment_transaction_id", "TEXT"),
)
COLUMNS = (*_FIRST, *(name for name, _ in LATER_COLUMNS))
"""Every column an IndexRow is read from, in its field order."""

CREATE_COLUMNS = (
    "payment_id TEXT PRIMARY KEY, state TEXT NOT NULL, flow TEXT NOT NULL, "
    "version BIGINT NOT NULL, since DOUBLE PRECISION NOT NULL, "
    "request_expires_at DOUBLE PRECISION, authorize_by DOUBLE PRECISION, "
    "payment_request_id TEXT, deadline DOUBLE PRECISION, "
    + ", ".join(f"{name} {kind}" for name, kind in LATER_COLUMNS)
)

# (index name suffix, column) of the index's secondary indexes.
SECONDARY = (
    ("deadline", "deadline"),
    ("state", "state"),
    ("request", "payment_request_id"),
)


def indexed(c: Any, table: str, *, sqlite: bool) -> bool:
    """True when ``table`` has all its secondary indexes (a rebuild drops them
    while it writes, and one stopped half way leaves them out)."""
    schema, _, name = table.rpartition(".")
    if sqlite:
        c.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", (name,))
    else:
        c.execute(
            "SELECT indexname AS name FROM pg_indexes WHERE schemaname = %s AND tablename = %s",
            (schema or "public", name),
        )
    present = {str(r["name"]) for r in c.fetchall()}
    return all(f"{name}_{suffix}" in present for suffix, _ in SECONDARY)


def selected(present: frozenset[str]) -> str:
    """The select list of the columns a table has (a table of any layout)."""
    return ", ".join(c for c in COLUMNS if c in present)


def missing_columns(c: Any, table: str, *, sqlite: bool) -> list[tuple[str, str]]:
    """The later columns ``table`` lacks (all of them if there is no such table)."""
    present = table_columns(c, table, sqlite=sqlite)
    return [(name, kind) for name, kind in LATER_COLUMNS if name not in present]


def table_columns(c: Any, table: str, *, sqlite: bool) -> frozenset[str]:
    """The names of ``table``'s columns (none when it does not exist)."""
    if sqlite:
        c.execute(f"PRAGMA table_info({table})")
        return frozenset(str(r["name"]) for r in c.fetchall())
    schema, _, name = table.rpartition(".")
    c.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s",
        (schema or "public", name),
    )
    return frozenset(str(r["column_name"]) for r in c.fetchall())


# Table names come from the application's own name; there are no values to bind.
def add_columns(c: Any, table: str, tracking: str, *, sqlite: bool) -> bool:
    """Add the columns ``table`` lacks and replay from the start; False if none lacked.

    Runs in the caller's writing transaction, whose first statement takes the
    tracking row's lock, so of several processes upgrading at once one adds
    the columns and the others find them there.
    """
    c.execute(f"UPDATE {tracking} SET position = position WHERE name = 'index'")  # noqa: S608
    missing = missing_columns(c, table, sqlite=sqlite)
    for name, kind in missing:
        c.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
    if missing:  # the rows' new columns are empty: the next catch-up replays the whole log
        if sqlite:
            c.execute(_CANONICAL_IDS.format(table=table))
        c.execute(f"UPDATE {tracking} SET position = 0 WHERE name = 'index'")  # noqa: S608
    return bool(missing)


# An SQLite rebuild by earlier versions keyed rows by the id as the events table
# keeps it (32 hex digits), which catch-up (keying by the UUID's text) then did
# not find: such rows take the canonical form, and the replay brings them up to date.
_CANONICAL_IDS = (
    "UPDATE OR REPLACE {table} SET payment_id = lower("
    "substr(payment_id, 1, 8) || '-' || substr(payment_id, 9, 4) || '-' || "
    "substr(payment_id, 13, 4) || '-' || substr(payment_id, 17, 4) || '-' || "
    "substr(payment_id, 21, 12)) WHERE length(payment_id) = 32"
)
