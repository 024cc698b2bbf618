"""Secrets at rest: no API key or token in any stored row; keys rotate."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest

from klarna_flow import (
    ConfigurationError,
    Flow,
    Payments,
    PaymentState,
    TokenCipher,
    generate_key,
)
from klarna_flow.klarna import KlarnaClient
from klarna_flow.testing import FakeKlarna, ManualClock
from tests.conftest import PG_URL

API_KEY = "sk-test-very-secret-api-key-0123456789"


def _full_flow(payments: Payments, fake: FakeKlarna) -> list[str]:
    """Run pay-and-tokenize through a notification; return the secrets used."""
    request_id = fake.create_payment_request(
        amount=2500, currency="EUR", flow=Flow.AUTHORIZATION_AND_TOKENIZATION.value
    )
    payment_id = payments.create(
        flow=Flow.AUTHORIZATION_AND_TOKENIZATION,
        amount=2500,
        currency="EUR",
        reference="secret-check-1",
        payment_request_id=request_id,
    )
    completed = fake.complete_payment_request(request_id)
    answer = payments.handle_notification(
        completed.notification.body, completed.notification.headers
    )
    assert answer.outcome == "applied"
    assert payments.authorize(payment_id).state is PaymentState.AUTHORIZED
    assert completed.session_token is not None
    assert completed.customer_token is not None
    return [API_KEY, completed.session_token, completed.customer_token]


def _app(env: dict[str, str], fake: FakeKlarna, clock: ManualClock, **kw: object) -> Payments:
    client = KlarnaClient(API_KEY, transport=httpx.MockTransport(fake))
    return Payments(
        env,
        clock=clock,
        klarna=client,
        partner_account_id=fake.partner_account_id,
        signing_keys=fake.signing_keys,
        **kw,  # type: ignore[arg-type]
    )


def _secret_parts(secrets: list[str]) -> list[bytes]:
    # The token KRNs share a public prefix; what must never be stored is the
    # unique part after the last colon (and the whole API key).
    return [s.rsplit(":", 1)[-1].encode() for s in secrets]


def test_sqlite_rows_hold_no_api_key_and_no_token(tmp_path: Path) -> None:
    clock = ManualClock()
    fake = FakeKlarna(api_key=API_KEY, clock=clock)
    db = tmp_path / "p.sqlite"
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(db)}
    payments = _app(env, fake, clock, cipher=TokenCipher(generate_key()))
    secrets = _full_flow(payments, fake)
    payments.close()

    dump = b""
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert "stored_events" in tables
        for table in tables:
            for row in conn.execute(f"SELECT * FROM {table}"):  # noqa: S608
                dump += repr(row).encode()
    raw_file = b"".join(f.read_bytes() for f in tmp_path.glob("p.sqlite*"))
    assert b"PurchaseCompleted" in dump  # the rows were really read
    for part in _secret_parts(secrets):
        assert part not in dump
        assert part not in raw_file


@pytest.mark.postgres
def test_postgres_rows_hold_no_api_key_and_no_token(pg_schema: str) -> None:
    import psycopg

    from klarna_flow._store.locations import postgres_env

    assert PG_URL is not None
    clock = ManualClock()
    fake = FakeKlarna(api_key=API_KEY, clock=clock)
    env = {**postgres_env(PG_URL), "POSTGRES_SCHEMA": pg_schema}
    payments = _app(env, fake, clock, cipher=TokenCipher(generate_key()))
    secrets = _full_flow(payments, fake)
    payments.close()

    dump = ""
    with psycopg.connect(PG_URL) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (pg_schema,),
            )
        ]
        assert tables
        for table in tables:
            for row in conn.execute(f"SELECT * FROM {pg_schema}.{table}"):  # noqa: S608
                dump += repr(row)
    assert "PurchaseCompleted" in dump
    for part in _secret_parts(secrets):
        assert part.decode() not in dump
        assert part.hex() not in dump


def test_durable_store_without_key_refuses_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KLARNA_FLOW_CIPHER_KEY", raising=False)
    monkeypatch.delenv("KLARNA_FLOW_ALLOW_PLAINTEXT", raising=False)
    with pytest.raises(ConfigurationError, match="KLARNA_FLOW_CIPHER_KEY"):
        Payments.sqlite(tmp_path / "p.sqlite")
    # Explicit opt-in for local development works, and says so in the key id.
    monkeypatch.setenv("KLARNA_FLOW_ALLOW_PLAINTEXT", "1")
    payments = Payments.sqlite(tmp_path / "p.sqlite")
    assert payments.cipher.current_key_id == "plaintext"
    payments.close()


def test_key_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = generate_key()
    monkeypatch.setenv("KLARNA_FLOW_CIPHER_KEY", key)
    payments = Payments.sqlite(tmp_path / "p.sqlite")
    assert payments.cipher.current_key_id == TokenCipher(key).current_key_id
    payments.close()


@pytest.mark.parametrize("bad", ["", "not-base64!", "c2hvcnQ="])
def test_bad_key_is_a_clear_error_without_echo(bad: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        TokenCipher(bad)
    assert "32 random bytes" in str(caught.value)
    if bad:
        assert bad not in str(caught.value)


def test_events_sealed_under_key_1_stay_readable_after_key_2(tmp_path: Path) -> None:
    clock = ManualClock()
    db = tmp_path / "rotate.sqlite"
    key1, key2 = generate_key(), generate_key()
    token = "krn:payment:eu1:klarna-network-session-token:rotate-me"

    first = Payments.sqlite(db, clock=clock, cipher=TokenCipher(key1))
    old_id = first.create(flow=Flow.AUTHORIZATION, amount=100, currency="EUR", reference="old")
    first.complete(old_id, session_token=token)
    first.close()

    second = Payments.sqlite(db, clock=clock, cipher=TokenCipher(key2, old=[key1]))
    new_id = second.create(flow=Flow.AUTHORIZATION, amount=100, currency="EUR", reference="new")
    second.complete(new_id, session_token=token)
    old, new = second.get(old_id), second.get(new_id)
    assert old.session_token is not None
    assert new.session_token is not None
    assert old.session_token.key_id == TokenCipher(key1).current_key_id
    assert new.session_token.key_id == TokenCipher(key2).current_key_id
    assert second._store.unseal(old_id, "session_token", old.session_token) == token
    assert second._store.unseal(new_id, "session_token", new.session_token) == token
    second.close()

    # Without the old key, the old token cannot be opened: a clear error.
    third = Payments.sqlite(db, clock=clock, cipher=TokenCipher(key2))
    sealed = third.get(old_id).session_token
    assert sealed is not None
    with pytest.raises(ConfigurationError, match="no cipher key"):
        third._store.unseal(old_id, "session_token", sealed)
    third.close()


def test_sealed_token_is_bound_to_its_payment(tmp_path: Path) -> None:
    payments = Payments(clock=ManualClock())
    token = "krn:payment:eu1:klarna-network-session-token:bound"
    a = payments.create(flow=Flow.AUTHORIZATION, amount=1, currency="EUR", reference="a")
    b = payments.create(flow=Flow.AUTHORIZATION, amount=1, currency="EUR", reference="b")
    sealed = payments.complete(a, session_token=token).session_token
    assert sealed is not None
    assert "bound" not in repr(sealed)
    with pytest.raises(ConfigurationError, match="does not authenticate"):
        payments._store.unseal(b, "session_token", sealed)
