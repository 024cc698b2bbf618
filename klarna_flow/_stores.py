"""Where events live: eventsourcing environment settings for each store."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from klarna_flow._errors import InvalidInput

__all__ = ["postgres_env"]


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
