"""Shared fixtures: the stores every application contract test runs on.

``store`` is parametrized over in-memory, SQLite and PostgreSQL. PostgreSQL
needs ``KLARNA_FLOW_TEST_DATABASE_URL`` (``.ci/run`` sets it); without it those
tests skip and say why. Each PostgreSQL test gets a schema of its own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from klarna_flow import Payments, TokenCipher
from klarna_flow.testing import ManualClock

PG_URL = os.environ.get("KLARNA_FLOW_TEST_DATABASE_URL")
NO_PG = "KLARNA_FLOW_TEST_DATABASE_URL is not set: no PostgreSQL to test against"

STORES = [
    "memory",
    "sqlite",
    pytest.param("postgres", marks=[pytest.mark.postgres]),
]

MakePayments = Callable[..., Payments]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def cipher() -> TokenCipher:
    return TokenCipher.ephemeral()


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema, dropped afterwards."""
    if not PG_URL:
        pytest.skip(NO_PG)
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    yield name
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {name} CASCADE")


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_env(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    """eventsourcing settings for the parametrized store."""
    if store == "memory":
        return {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    if store == "sqlite":
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(tmp_path / "payments.sqlite"),
        }
    from klarna_flow._store.locations import postgres_env

    schema = request.getfixturevalue("pg_schema")
    assert PG_URL is not None
    return {**postgres_env(PG_URL), "POSTGRES_SCHEMA": schema}


@pytest.fixture
def make_payments(
    store_env: dict[str, str], clock: ManualClock, cipher: TokenCipher
) -> Iterator[MakePayments]:
    """Build ``Payments`` on the parametrized store (several may share it)."""
    made: list[Payments] = []

    def make(**kwargs: Any) -> Payments:
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("cipher", cipher)
        app = Payments(store_env, **kwargs)
        made.append(app)
        return app

    yield make
    for app in made:
        app.close()


@pytest.fixture
def payments(make_payments: MakePayments) -> Payments:
    return make_payments(partner_account_id=ACCOUNT)


ACCOUNT = "krn:partner:global:account:test-partner"
SESSION_TOKEN = "krn:payment:eu1:klarna-network-session-token:3f0c1c9e-test"
CUSTOMER_TOKEN = "krn:payment:eu1:customer-token:77d0-test"


@pytest.fixture
def account() -> str:
    """The partner account the ``payments`` fixture creates payments under."""
    return ACCOUNT


@pytest.fixture
def session_token() -> str:
    """A session token of the right shape (a secret: never in an error or repr)."""
    return SESSION_TOKEN


@pytest.fixture
def customer_token() -> str:
    """A customer token of the right shape (a secret: never in an error or repr)."""
    return CUSTOMER_TOKEN
