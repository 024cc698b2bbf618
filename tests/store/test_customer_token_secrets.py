"""Customer tokens of token charges: sealed at rest; never in a repr, log, error, audit or export.

design.md ("Secrets"): the API key, session tokens and customer tokens never
appear in ``repr``, log lines, exception messages, audit output or exports,
and are encrypted at rest. ``test_secrets_at_rest.py`` checks the tokens of a
pay-and-tokenize journey; this module checks the customer tokens that token
charges carry (klarna-api.md §7): a token given as is (``customer_token=``),
one taken from a tokenization (``customer_token_of=``), one issued with a
pay-and-tokenize approval, through approvals, a step-up and final call, lost
answers and ``reconcile`` (inside Klarna's key window and past it), a
revoked, an unknown and a malformed token.

Checked: the raw bytes of the SQLite file and its WAL (while open and after
close) and of every PostgreSQL row, in clear, hex and base64; and the reprs of
``Payments``, payments, events, outcomes and errors, every log record at
DEBUG, ``export_audit``, ``audit_trail``, ``verify``, the read models, and
the ``klarna-flow`` commands ``export``, ``audit``, ``show``, ``history`` and
``payments``.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import attrs
import httpx
import pytest
from typer.testing import CliRunner

from klarna_flow import (
    AuthorizationOutcome,
    CustomerTokenScope,
    Flow,
    InvalidInput,
    KlarnaClient,
    OutcomeResult,
    Payments,
    PaymentState,
    RetryPolicy,
    StepUpConfig,
    TokenCipher,
    generate_key,
)
from klarna_flow.cli import app
from klarna_flow.testing import FakeKlarna, ManualClock
from tests.conftest import PG_URL

AMOUNT = 4200
CURRENCY = "EUR"
RETURN_URL = "https://shop.example/klarna/return"
RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.001)
BOTH_SCOPES = [CustomerTokenScope.CUSTOMER_NOT_PRESENT, CustomerTokenScope.CUSTOMER_PRESENT]
UNKNOWN_TOKEN = "krn:customer-token:unknown-4b1f0c9e2d7a"
MALFORMED_TOKEN = "krn:customer-token:malformed 9c3e71d0b5a2"
MASKED = "krn:customer-token:****"
NO_SECRETS_ENV: dict[str, str | None] = {
    "KLARNA_FLOW_CIPHER_KEY": None,
    "KLARNA_FLOW_OLD_CIPHER_KEYS": None,
    "KLARNA_FLOW_ALLOW_PLAINTEXT": None,
    "KLARNA_FLOW_DB": None,
    "KLARNA_API_KEY": None,
}


@attrs.define
class Played:
    """What the token charges left behind, for the checks."""

    tokens: list[str] = attrs.field(factory=list)
    payment_ids: list[UUID] = attrs.field(factory=list)
    outcomes: list[AuthorizationOutcome] = attrs.field(factory=list)
    errors: list[BaseException] = attrs.field(factory=list)


class Charges:
    """Token charges on one ``Payments`` against one fake, every path a token takes."""

    def __init__(self, payments: Payments, fake: FakeKlarna, clock: ManualClock) -> None:
        self.payments = payments
        self.fake = fake
        self.clock = clock
        self.played = Played()
        self._refs = 0

    def reference(self) -> str:
        self._refs += 1
        return f"token-charge-{self._refs}"

    def notify(self, notification: Any) -> None:
        result = self.payments.handle_notification(notification.body, notification.headers)
        assert result.status_code == 200, result

    def new(self, flow: Flow = Flow.AUTHORIZATION, **kwargs: Any) -> UUID:
        payment_id = self.payments.create(
            flow=flow, amount=AMOUNT, currency=CURRENCY, reference=self.reference(), **kwargs
        )
        self.played.payment_ids.append(payment_id)
        return payment_id

    def issued(self) -> str:
        token = self.fake.issue_customer_token(scopes=[s.value for s in BOTH_SCOPES])
        self.played.tokens.append(token)
        return token

    def outcome(self, outcome: AuthorizationOutcome) -> AuthorizationOutcome:
        self.played.outcomes.append(outcome)
        if outcome.error is not None:
            self.played.errors.append(outcome.error)
        return outcome

    def lost(self, payment_id: UUID) -> AuthorizationOutcome:
        for _ in range(RETRY.max_attempts):
            self.fake.drop_next(after_processing=True)
        outcome = self.outcome(self.payments.initiate(payment_id))
        assert outcome.result is OutcomeResult.PENDING
        return outcome

    def play(self) -> Played:
        # A tokenization: the customer token arrives with Klarna's completion notification.
        source = self.new(Flow.TOKENIZATION)
        stepped = self.outcome(
            self.payments.initiate(
                source,
                step_up=StepUpConfig(return_url=RETURN_URL),
                customer_token_scopes=BOTH_SCOPES,
            )
        )
        assert stepped.payment_request_id is not None
        done = self.fake.complete_payment_request(stepped.payment_request_id)
        assert done.customer_token is not None
        self.played.tokens.append(done.customer_token)
        self.notify(done.notification)

        # Its token charged with the customer not present.
        taken = self.new(customer_token_of=source)
        assert self.outcome(self.payments.initiate(taken)).result is OutcomeResult.APPROVED

        # A token given as is, customer present: a step-up, then the final call.
        present = self.new(customer_token=self.issued(), customer_present=True)
        self.fake.step_up_next()
        stepped = self.outcome(
            self.payments.initiate(present, step_up=StepUpConfig(return_url=RETURN_URL))
        )
        assert stepped.result is OutcomeResult.STEP_UP_REQUIRED
        assert stepped.payment_request_id is not None
        self.notify(self.fake.complete_payment_request(stepped.payment_request_id).notification)
        assert self.outcome(self.payments.authorize(present)).result is OutcomeResult.APPROVED

        # A pay-and-tokenize approval issues a token; a charge takes it.
        both = self.new(Flow.AUTHORIZATION_AND_TOKENIZATION)
        stepped = self.outcome(
            self.payments.initiate(
                both,
                step_up=StepUpConfig(return_url=RETURN_URL),
                customer_token_scopes=BOTH_SCOPES,
            )
        )
        assert stepped.payment_request_id is not None
        done = self.fake.complete_payment_request(stepped.payment_request_id)
        assert done.customer_token is not None
        self.played.tokens.append(done.customer_token)
        self.notify(done.notification)
        assert self.outcome(self.payments.authorize(both)).result is OutcomeResult.APPROVED
        again = self.new(customer_token_of=both)
        assert self.outcome(self.payments.initiate(again)).result is OutcomeResult.APPROVED

        # Lost answers: re-sent inside the key window; past it, resolved by notification.
        resent = self.new(customer_token=self.issued())
        self.lost(resent)
        self.clock.advance(timedelta(minutes=6))
        [approved] = self.payments.reconcile()
        assert self.outcome(approved).result is OutcomeResult.APPROVED
        late = self.new(customer_token=self.issued())
        self.lost(late)
        self.clock.advance(timedelta(hours=25))
        [unresolved] = self.payments.reconcile()
        assert self.outcome(unresolved).result is OutcomeResult.UNRESOLVED
        [transaction] = self.fake.transactions_for(self.payments.get(late).reference)
        self.notify(self.fake.transaction_notification(transaction.payment_transaction_id))
        assert self.payments.get(late).state is PaymentState.AUTHORIZED

        # Refused by Klarna: a revoked token, an unknown one.
        revoked = self.new(customer_token=self.issued())
        self.fake.revoke_customer_token(self.played.tokens[-1])
        assert self.outcome(self.payments.initiate(revoked)).result is OutcomeResult.FAILED
        unknown = self.new(customer_token=UNKNOWN_TOKEN)
        self.played.tokens.append(UNKNOWN_TOKEN)
        assert self.outcome(self.payments.initiate(unknown)).result is OutcomeResult.FAILED

        # Refused here: a malformed token.
        self.played.tokens.append(MALFORMED_TOKEN)
        with pytest.raises(InvalidInput) as malformed:
            self.new(customer_token=MALFORMED_TOKEN)
        self.played.errors.append(malformed.value)
        self.check_the_tokens_reached_klarna()
        return self.played

    def check_the_tokens_reached_klarna(self) -> None:
        """The tokens are real: each but the malformed one went out as Klarna-Customer-Token."""
        sent = {r.headers.get("Klarna-Customer-Token") for r in self.fake.requests}
        charged = [t for t in self.played.tokens if t != MALFORMED_TOKEN]
        first = self.played.tokens[0]  # the tokenization's: charged by its first charge
        assert first in sent
        assert set(charged) <= sent
        assert len(self.played.errors) >= 3  # revoked, unknown, malformed


def secret_parts(tokens: list[str]) -> list[str]:
    """Each token, and its secret part (the KRN's public prefix is not secret)."""
    return [part for token in tokens for part in (token, token.rsplit(":", 1)[-1])]


def encodings(secret: str) -> list[bytes]:
    """The secret in clear, in hex, and in base64 at each of the three alignments."""
    raw = secret.encode()
    found = [raw, raw.hex().encode()]
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw)
        found.append(encoded[4:-4])  # the part that depends on the secret alone
    return found


def assert_no_secret_in_bytes(data: bytes, tokens: list[str], where: str) -> None:
    for part in secret_parts(tokens):
        for needle in encodings(part):
            assert needle not in data, f"{where} holds a customer token ({needle[:12]!r}...)"


def assert_no_secret_in_text(text: str, tokens: list[str], where: str) -> None:
    for part in secret_parts(tokens):
        assert part not in text, f"{where} holds a customer token"


def open_payments(env: dict[str, str], fake: FakeKlarna, clock: ManualClock) -> Payments:
    client = KlarnaClient(fake.api_key, transport=httpx.MockTransport(fake), retry=RETRY)
    return Payments(
        env,
        clock=clock,
        cipher=TokenCipher(generate_key()),
        klarna=client,
        signing_keys=fake.signing_keys,
        partner_account_id=fake.partner_account_id,
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def fake(clock: ManualClock) -> FakeKlarna:
    return FakeKlarna(clock=clock)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "charges.sqlite"


@pytest.fixture
def on_sqlite(db: Path, fake: FakeKlarna, clock: ManualClock) -> Iterator[Payments]:
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(db)}
    payments = open_payments(env, fake, clock)
    yield payments
    payments.close()


def raw_files(db: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(db.parent.glob(db.name + "*"))}


# -- at rest ------------------------------------------------------------------------------


def test_the_sqlite_file_and_its_wal_hold_no_customer_token(
    db: Path, on_sqlite: Payments, fake: FakeKlarna, clock: ManualClock
) -> None:
    played = Charges(on_sqlite, fake, clock).play()

    while_open = raw_files(db)
    on_sqlite.close()
    after_close = raw_files(db)

    assert f"{db.name}-wal" in while_open  # the WAL was there to read
    rows = b""
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in conn.execute(f"SELECT * FROM {table}"):  # noqa: S608
                rows += b"".join(v if isinstance(v, bytes) else str(v).encode() for v in row)
    everything = b"".join([*while_open.values(), *after_close.values(), rows])
    assert b"AuthorizationApproved" in everything  # the records were really read
    assert_no_secret_in_bytes(everything, played.tokens, "the SQLite store")


def test_the_check_finds_customer_tokens_stored_in_clear(
    db: Path, fake: FakeKlarna, clock: ManualClock
) -> None:
    """The same read of the file, on a store told to keep tokens in clear, finds them."""
    client = KlarnaClient(fake.api_key, transport=httpx.MockTransport(fake), retry=RETRY)
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(db)}
    with (
        client,
        Payments(
            env,
            clock=clock,
            cipher=TokenCipher(None, plaintext=True),
            klarna=client,
            signing_keys=fake.signing_keys,
            partner_account_id=fake.partner_account_id,
        ) as payments,
    ):
        played = Charges(payments, fake, clock).play()
        stored = b"".join(raw_files(db).values())

    for token in played.tokens[:-1]:  # all but the malformed one, refused before storing
        with pytest.raises(AssertionError, match="holds a customer token"):
            assert_no_secret_in_bytes(stored, [token], "the plaintext store")


@pytest.mark.postgres
def test_postgres_rows_hold_no_customer_token(
    pg_schema: str, fake: FakeKlarna, clock: ManualClock
) -> None:
    import psycopg

    from klarna_flow._store.locations import postgres_env

    assert PG_URL is not None
    payments = open_payments({**postgres_env(PG_URL), "POSTGRES_SCHEMA": pg_schema}, fake, clock)
    try:
        played = Charges(payments, fake, clock).play()
    finally:
        payments.close()

    dump = b""
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
                dump += b"".join(
                    bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode() for v in row
                )
    assert b"AuthorizationApproved" in dump
    assert_no_secret_in_bytes(dump, played.tokens, "the PostgreSQL rows")


# -- in use -------------------------------------------------------------------------------


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), env=NO_SECRETS_ENV)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.output


def test_no_customer_token_in_a_repr_log_error_audit_or_export(
    db: Path,
    on_sqlite: Payments,
    fake: FakeKlarna,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx's included
    played = Charges(on_sqlite, fake, clock).play()
    payments = on_sqlite

    seen: dict[str, str] = {}
    seen["logs"] = caplog.text + "".join(repr(vars(r)) for r in caplog.records)
    seen["Payments"] = repr(payments)
    seen["payments"] = "".join(repr(payments.get(p)) for p in played.payment_ids)
    seen["events"] = "".join(repr(list(payments.stored_events(p))) for p in played.payment_ids)
    seen["outcomes"] = repr(played.outcomes) + "".join(
        repr(payments.outcome(p)) for p in played.payment_ids
    )
    seen["errors"] = "".join(f"{e}{e!r}{e.args!r}{vars(e)!r}{e.__cause__!r}" for e in played.errors)
    seen["audit trails"] = "".join(
        repr(payments.audit_trail(p))
        + json.dumps([e.as_dict() for e in payments.audit_trail(p)], default=str)
        for p in played.payment_ids
    )
    exported = io.StringIO()
    assert payments.export_audit(exported) > 0
    seen["export_audit"] = exported.getvalue()
    seen["verify"] = repr(payments.verify())
    seen["read models"] = repr(payments.read_model()) + repr(payments.unresolved())
    payments.close()
    some = str(played.payment_ids[1])
    seen["klarna-flow export"] = cli("export", "--db", str(db))
    seen["klarna-flow audit"] = "".join(
        cli("audit", str(p), "--db", str(db), *flag)
        for p in played.payment_ids
        for flag in ((), ("--json",))
    )
    seen["klarna-flow show"] = "".join(
        cli("show", str(p), "--db", str(db), "--json") for p in played.payment_ids
    )
    seen["klarna-flow history"] = cli("history", some, "--version", "2", "--db", str(db))
    seen["klarna-flow payments"] = cli("payments", "--db", str(db), "--json")

    assert MASKED in caplog.text  # tokens were logged, masked
    assert "AuthorizationApproved" in seen["export_audit"]
    assert "AuthorizationApproved" in seen["klarna-flow export"]
    assert some in seen["klarna-flow payments"]
    assert all(seen.values())
    for where, text in seen.items():
        assert_no_secret_in_text(text, played.tokens, where)
