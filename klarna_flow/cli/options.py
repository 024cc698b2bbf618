"""What the ``klarna-flow`` commands share: options, exit codes, opening a store.

Only ``demo`` creates a store. The read-only commands open one through
:meth:`AuditLog.open` (read-only: SQLite's ``mode=ro``, nothing written, no
key); the commands that record events open ``Payments`` with the cipher key,
after checking that ``--db`` already holds a klarna_flow store.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import typer

from klarna_flow._app.payments import Payments
from klarna_flow._audit.log import AuditLog
from klarna_flow._errors import ConfigurationError, StorageError
from klarna_flow._store.cipher import CIPHER_KEY_ENV, TokenCipher
from klarna_flow.cli.demo import is_postgres, key_file_for
from klarna_flow.klarna import TEST_BASE_URL

__all__ = [
    "DEFAULT_DB",
    "EXIT_FINDING",
    "EXIT_USAGE",
    "ApiKey",
    "BaseUrl",
    "Db",
    "Json",
    "KeyFile",
    "PaymentArg",
    "audit_log",
    "cipher_for",
    "payments_at",
    "print_json",
]

DEFAULT_DB = "klarna_flow_demo.sqlite"
EXIT_FINDING = 1
EXIT_USAGE = 2

Db = Annotated[
    str,
    typer.Option(
        "--db",
        envvar="KLARNA_FLOW_DB",
        help="SQLite file or postgresql://user:password@host:port/dbname URL (or $KLARNA_FLOW_DB).",
        show_envvar=False,
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
PaymentArg = Annotated[UUID, typer.Argument(help="The payment's id (a UUID).", show_default=False)]
KeyFile = Annotated[
    Path | None,
    typer.Option(
        "--key-file",
        help=f"File holding the cipher key (default: ${CIPHER_KEY_ENV}, else <db>.key).",
        show_default=False,
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="KLARNA_API_KEY",
        help="Klarna API key (or $KLARNA_API_KEY).",
        show_default=False,
        show_envvar=False,
    ),
]
BaseUrl = Annotated[
    str,
    typer.Option(
        "--base-url",
        envvar="KLARNA_BASE_URL",
        help="Klarna API base URL (or $KLARNA_BASE_URL).",
        show_envvar=False,
    ),
]
DEFAULT_BASE_URL = TEST_BASE_URL


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


@contextmanager
def audit_log(db: str, *, read_only: bool = True) -> Iterator[AuditLog]:
    """The store at ``db``, opened with no key; it must exist and hold klarna_flow's tables."""
    log = AuditLog.open(db, read_only=read_only)
    try:
        yield log
    finally:
        log.close()


def require_store(db: str, env: dict[str, str] | None = None) -> None:
    """Refuse a ``db`` that holds no klarna_flow store; connects to it, creates nothing."""
    AuditLog.open(db, env=env).close()


def open_payments(db: str, key_file: Path | None, **kwargs: Any) -> Payments:
    """``Payments`` on an existing store, for commands that record events (they need the key)."""
    if not is_postgres(db):  # an existing klarna_flow store, and nothing else
        require_store(db)  # reads the file's list of tables; connects to nothing
    try:
        return Payments.open(db, cipher=cipher_for(db, key_file), **kwargs)
    except sqlite3.Error as e:  # e.g. "file is not a database", from Payments' constructor
        raise StorageError(f"cannot open the event store at {db}: {e}") from e


@contextmanager
def payments_at(db: str, key_file: Path | None, **kwargs: Any) -> Iterator[Payments]:
    """:func:`open_payments` for the length of a ``with`` block."""
    payments = open_payments(db, key_file, **kwargs)
    try:
        yield payments
    finally:
        payments.close()


def cipher_for(db: str, key_file: Path | None) -> TokenCipher | None:
    """The cipher of ``--key-file``, else None (``$KLARNA_FLOW_CIPHER_KEY``), else ``<db>.key``.

    Raises:
        ConfigurationError: the file holds no cipher key (the message does not quote it).
        OSError: the file cannot be read.
    """
    if key_file is None and not os.environ.get(CIPHER_KEY_ENV):
        beside = key_file_for(db)
        key_file = beside if not is_postgres(db) and beside.exists() else None
    if key_file is None:
        return None  # Payments reads $KLARNA_FLOW_CIPHER_KEY or says what is missing
    try:
        return TokenCipher(key_file.read_text(encoding="ascii").strip())
    except (ConfigurationError, UnicodeDecodeError):
        msg = f"{key_file} does not hold a cipher key (base64 of 32 random bytes)"
        raise ConfigurationError(msg) from None
