"""Audit trails and exports: what happened, when, why, and never a token in clear.

A trail is read from the stored records alone, so these tests also open a
SQLite file with no cipher key (``AuditLog.open``) and check that such access
can read everything and record nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit
from uuid import UUID, uuid4

import pytest

from klarna_flow import (
    ConfigurationError,
    Flow,
    InvalidInput,
    PaymentNotFound,
    Payments,
    PaymentState,
    TokenCipher,
)
from klarna_flow._audit import log as audit_module
from klarna_flow._audit.log import AuditEntry, AuditLog, read_entry
from klarna_flow.testing import CompletedRequest, ManualClock
from tests._flow_helpers import Kit, MakePayments, open_kit
from tests.conftest import PG_URL

S = PaymentState


@pytest.fixture
def kit(make_payments: MakePayments, clock: ManualClock) -> Iterator[Kit]:
    with open_kit(make_payments, clock) as kit:
        yield kit


def event_id(done: CompletedRequest) -> str:
    """The ``event_id`` of the notification that reported a completion."""
    return str(json.loads(done.notification.body)["metadata"]["event_id"])


def tokens_of(done: CompletedRequest) -> list[str]:
    return [t for t in (done.session_token, done.customer_token) if t]


# -- one payment's trail -------------------------------------------------------------


def test_the_trail_of_an_approved_payment(kit: Kit, clock: ManualClock) -> None:
    start = clock.now()
    created = kit.create(Flow.AUTHORIZATION_AND_TOKENIZATION)
    clock.advance(timedelta(minutes=2))
    done = kit.complete(created, via="notification")
    clock.advance(timedelta(minutes=3))
    outcome = kit.payments.authorize(created.payment_id)

    trail = kit.payments.audit_trail(created.payment_id)

    assert [(e.version, e.event, e.state_before, e.state_after) for e in trail] == [
        (1, "PaymentCreated", None, S.CREATED),
        (2, "PurchaseCompleted", S.CREATED, S.COMPLETED),
        (3, "AuthorizationRequested", S.COMPLETED, S.AUTHORIZING),
        (4, "AuthorizationApproved", S.AUTHORIZING, S.AUTHORIZED),
    ]
    assert [(e.cause_kind, e.cause) for e in trail] == [
        ("command", "create"),
        ("notification", event_id(done)),
        ("command", "authorize"),
        ("command", "authorize"),
    ]
    assert [e.recorded_at for e in trail] == [
        start,
        start + timedelta(minutes=2),
        start + timedelta(minutes=5),
        start + timedelta(minutes=5),
    ]
    assert {e.payment_id for e in trail} == {created.payment_id}
    assert trail[3].correlation_id == outcome.correlation_id is not None
    assert [e.correlation_id for e in trail[:3]] == [None, None, None]
    assert trail[0].details["reference"] == created.reference
    assert trail[0].details["amount"] == 11800
    assert trail[2].details["idempotency_key"] == outcome.idempotency_key
    assert trail[3].details["payment_transaction_id"] == outcome.payment_transaction_id
    assert "correlation_id" not in trail[3].details  # shown once, as its own field


def test_state_after_is_none_for_an_event_that_keeps_the_state(kit: Kit) -> None:
    created = kit.create()
    payment = kit.payments.get(created.payment_id)
    payment.identify_payment_request(
        "krn:payment:eu1:payment-request:renewed", now=kit.clock.now(), cause="command:identify"
    )
    kit.payments._store.save_payment(payment)
    kit.complete(created, via="command")

    trail = kit.payments.audit_trail(created.payment_id)

    assert [(e.event, e.state_before, e.state_after) for e in trail] == [
        ("PaymentCreated", None, S.CREATED),
        ("PaymentRequestIdentified", S.CREATED, None),
        ("PurchaseCompleted", S.CREATED, S.COMPLETED),
    ]


def test_every_path_shows_in_the_trail(kit: Kit) -> None:
    declined = kit.completed()
    kit.fake.decline_next("insufficient funds")
    kit.payments.authorize(declined.payment_id)
    stepped = kit.completed()
    kit.fake.step_up_next()
    kit.payments.authorize(stepped.payment_id)
    failed = kit.completed()
    kit.fake.fail_next(400, "VALIDATION_ERROR")
    kit.payments.authorize(failed.payment_id)

    last = {
        p.payment_id: kit.payments.audit_trail(p.payment_id)[-1]
        for p in (declined, stepped, failed)
    }

    assert (last[declined.payment_id].event, last[declined.payment_id].state_after) == (
        "AuthorizationDeclined",
        S.DECLINED,
    )
    assert last[declined.payment_id].details["reason"] == "insufficient funds"
    assert (last[stepped.payment_id].event, last[stepped.payment_id].state_after) == (
        "StepUpRequired",
        S.CREATED,
    )
    assert last[stepped.payment_id].details["payment_request_url"].startswith("https://")
    assert (last[failed.payment_id].event, last[failed.payment_id].state_after) == (
        "AuthorizationFailed",
        S.COMPLETED,
    )
    assert last[failed.payment_id].details["status_code"] == 400
    for entry in last.values():
        assert entry.correlation_id is not None
        assert entry.state_before is S.AUTHORIZING


def test_a_canceled_payment_names_the_notification(kit: Kit) -> None:
    created = kit.create()
    notification = kit.fake.cancel_payment_request(created.payment_request_id)
    kit.payments.handle_notification(notification.body, notification.headers)

    last = kit.payments.audit_trail(created.payment_id)[-1]

    assert (last.event, last.state_after, last.cause_kind) == (
        "PaymentCanceled",
        S.CANCELED,
        "notification",
    )
    assert last.cause == json.loads(notification.body)["metadata"]["event_id"]


def test_an_unknown_payment_has_no_trail(payments: Payments) -> None:
    missing = uuid4()
    with pytest.raises(PaymentNotFound) as info:
        payments.audit_trail(missing)
    assert info.value.payment_id == missing
    with pytest.raises(InvalidInput):
        payments.audit_trail("not-a-uuid")  # type: ignore[arg-type]


def test_entries_are_frozen_and_serialise_to_json(kit: Kit) -> None:
    created = kit.completed()
    entry = kit.payments.audit_trail(created.payment_id)[1]

    with pytest.raises(AttributeError):
        entry.version = 9  # type: ignore[misc]
    plain = json.loads(json.dumps(entry.as_dict()))
    assert plain["payment_id"] == str(created.payment_id)
    assert plain["version"] == 2
    assert plain["state_before"] == "CREATED"
    assert plain["state_after"] == "COMPLETED"
    assert plain["recorded_at"] == entry.recorded_at.isoformat()
    assert plain["cause_kind"] == "notification"


# -- secrets --------------------------------------------------------------------------


def test_no_token_in_clear_in_trail_or_export(kit: Kit, cipher: TokenCipher) -> None:
    created = kit.create(Flow.AUTHORIZATION_AND_TOKENIZATION)
    done = kit.complete(created, via="command")
    kit.payments.authorize(created.payment_id)
    assert len(tokens_of(done)) == 2

    trail = kit.payments.audit_trail(created.payment_id)
    out = io.StringIO()
    kit.payments.export_audit(out)
    texts = [
        json.dumps([e.as_dict() for e in trail]),
        repr(trail),
        out.getvalue(),
    ]

    for token in tokens_of(done):
        for text in texts:
            assert token not in text
    completed = trail[1].details
    assert completed["session_token"] == f"**** (key {cipher.current_key_id})"
    assert completed["customer_token"] == f"**** (key {cipher.current_key_id})"


def test_tokens_stored_unencrypted_are_still_masked(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "plain.sqlite"
    with open_kit(
        lambda **kw: Payments.sqlite(path, clock=clock, allow_plaintext=True, **kw), clock
    ) as kit:
        created = kit.create(Flow.AUTHORIZATION_AND_TOKENIZATION)
        done = kit.complete(created, via="command")
        assert done.session_token is not None
        stored = b"".join(row[3] for row in _stored(path) if isinstance(row[3], bytes))
        assert done.session_token.encode() in stored  # the opt-in did store it in clear

        out = io.StringIO()
        kit.payments.export_audit(out, created.payment_id)
        kit.payments.close()

    for token in tokens_of(done):
        assert token not in out.getvalue()
    details = json.loads(out.getvalue().splitlines()[1])["details"]
    assert details["session_token"] == "**** (stored unencrypted)"


def test_a_token_inside_free_text_is_masked() -> None:
    token = "krn:payment:eu1:klarna-network-session-token:leaked-secret"
    payload = {
        "timestamp": {"_type_": "datetime_iso", "_data_": "2025-01-01T12:00:00+00:00"},
        "cause": "command:authorize",
        "correlation_id": "c-1",
        "error": f"KlarnaValidationError: bad token {token} (retry later)",
        "status_code": 400,
        "nested": {"customer_token": "krn:payment:eu1:customer-token:other-secret", "n": 1},
        "api_token": 12345,
    }
    state = bytes(32) + json.dumps(payload).encode()

    entry = read_entry(UUID(int=1), 5, "x:Payment.AuthorizationFailed", state, S.AUTHORIZING)

    text = json.dumps(entry.as_dict())
    assert "leaked-secret" not in text
    assert "other-secret" not in text
    assert "12345" not in text
    assert entry.details["error"] == (
        "KlarnaValidationError: bad token "
        "krn:payment:eu1:klarna-network-session-token:**** (retry later)"
    )
    assert entry.details["nested"] == {
        "customer_token": "krn:payment:eu1:customer-token:****",
        "n": 1,
    }
    assert entry.details["status_code"] == 400
    assert (entry.event, entry.correlation_id, entry.state_after) == (
        "AuthorizationFailed",
        "c-1",
        S.COMPLETED,
    )


# -- the whole log, exported ------------------------------------------------------------


def _workload(kit: Kit) -> list[UUID]:
    ids = []
    for flow in Flow:
        created = kit.completed(flow)
        ids.append(created.payment_id)
        if flow.authorizes:
            kit.payments.authorize(created.payment_id)
    canceled = kit.create()
    kit.payments.cancel(canceled.payment_id)
    ids.append(canceled.payment_id)
    ids.append(kit.create().payment_id)  # left open
    return ids


def test_export_writes_every_event_as_one_json_line(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _workload(kit)
    monkeypatch.setattr(audit_module, "PAGE_SIZE", 3)  # several pages
    progress: list[tuple[int, int]] = []

    out = io.StringIO()
    written = kit.payments.export_audit(
        out, progress=lambda done, total: progress.append((done, total))
    )

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert written == len(lines) == sum(len(kit.payments.audit_trail(i)) for i in ids)
    for payment_id in ids:
        mine = [line for line in lines if line["payment_id"] == str(payment_id)]
        expected = [e.as_dict() for e in kit.payments.audit_trail(payment_id)]
        assert mine == expected  # states before/after tracked across pages and payments
    assert len(progress) == -(-len(lines) // 3)
    assert progress[-1][0] == progress[-1][1]


def test_export_of_one_payment_is_its_trail(kit: Kit) -> None:
    ids = _workload(kit)
    out = io.StringIO()

    written = kit.payments.export_audit(out, ids[0])

    trail = kit.payments.audit_trail(ids[0])
    assert written == len(trail)
    assert [json.loads(line) for line in out.getvalue().splitlines()] == [
        e.as_dict() for e in trail
    ]


def test_an_empty_log_exports_nothing(payments: Payments) -> None:
    out = io.StringIO()
    assert payments.export_audit(out) == 0
    assert out.getvalue() == ""


# -- audit access with no key -----------------------------------------------------------


@pytest.fixture
def sqlite_file(tmp_path: Path, clock: ManualClock, cipher: TokenCipher) -> Path:
    path = tmp_path / "payments.sqlite"

    def make(**kwargs: object) -> Payments:
        return Payments.sqlite(path, clock=clock, cipher=cipher, **kwargs)

    with open_kit(make, clock) as kit:
        _workload(kit)
        kit.payments.close()
    return path


def test_audit_needs_no_cipher_key(sqlite_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KLARNA_FLOW_CIPHER_KEY", raising=False)
    monkeypatch.delenv("KLARNA_FLOW_ALLOW_PLAINTEXT", raising=False)
    with pytest.raises(ConfigurationError):
        Payments.open(sqlite_file)  # a writer needs the key...

    with AuditLog.open(sqlite_file) as log:  # ...an auditor does not
        rows = log.read_model()
        trails = {r.payment_id: log.trail(r.payment_id) for r in rows}
        out = io.StringIO()
        exported = log.export(out)
        report = log.verify()
        first = log.state_at(rows[0].payment_id, version=1)

    assert len(trails) == 5
    assert exported == sum(len(t) for t in trails.values()) == report.events_checked
    assert report.ok
    assert first.state is S.CREATED
    assert all(isinstance(e, AuditEntry) for t in trails.values() for e in t)


def _stored(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return list(db.execute("SELECT * FROM stored_events ORDER BY rowid"))


def test_keyless_access_records_nothing(sqlite_file: Path) -> None:
    before = _stored(sqlite_file)
    with AuditLog.open(sqlite_file) as log:
        # An audit has no commands at all: nothing to record through.
        assert not {"create", "complete", "cancel", "expire", "authorize"} & set(dir(log))
        open_payment = log.read_model("CREATED")[0].payment_id
        assert log.get(open_payment).state is S.CREATED
        completed = log.read_model("COMPLETED")[0].payment_id
        # Underneath, its store refuses to write, seal or open a token.
        store = log._store
        with pytest.raises(ConfigurationError, match="records nothing"):
            store.save_payment(log.get(open_payment))
        with pytest.raises(ConfigurationError, match="records nothing"):
            store.seal(completed, "session_token", "krn:payment:eu1:x-token:secret")
        sealed = log.get(completed).customer_token
        assert sealed is not None
        with pytest.raises(ConfigurationError, match="records nothing"):
            store.unseal(completed, "customer_token", sealed)
    assert _stored(sqlite_file) == before


def test_auditing_a_missing_file_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.sqlite"
    with pytest.raises(InvalidInput, match="no event store"):
        AuditLog.open(path)
    assert not path.exists()


def _tables(path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return sorted(r[0] for r in db.execute("SELECT name FROM sqlite_master"))


@pytest.mark.parametrize("read_only", [True, False])
@pytest.mark.parametrize("kind", ["foreign", "empty"])
def test_auditing_a_file_without_a_klarna_flow_store_creates_nothing(
    tmp_path: Path, kind: str, read_only: bool
) -> None:
    path = tmp_path / "crm.db"
    path.touch()
    if kind == "foreign":
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("CREATE TABLE customers (id INTEGER)")
    before = path.read_bytes()

    with pytest.raises(ConfigurationError, match=f"^{path} holds no klarna_flow store$"):
        AuditLog.open(path, read_only=read_only)

    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crm.db"]


@pytest.mark.postgres
def test_auditing_a_database_without_a_klarna_flow_store_creates_nothing(pg_schema: str) -> None:
    import psycopg

    assert PG_URL is not None
    for read_only in (True, False):
        with pytest.raises(ConfigurationError, match="holds no klarna_flow store") as refused:
            AuditLog.open(PG_URL, read_only=read_only, env={"POSTGRES_SCHEMA": pg_schema})
        assert f":{urlsplit(PG_URL).password}@" not in str(refused.value)  # the URL, shown bare
    with psycopg.connect(PG_URL) as conn:
        query = "SELECT table_name FROM information_schema.tables WHERE table_schema = %s"
        assert conn.execute(query, (pg_schema,)).fetchall() == []


def test_a_read_only_log_writes_nothing_and_still_follows_the_log(
    sqlite_file: Path, clock: ManualClock, cipher: TokenCipher
) -> None:
    with AuditLog.open(sqlite_file) as log:  # the read models, caught up and stored
        assert len(log.read_model()) == 5
    writer = Payments.sqlite(sqlite_file, clock=clock, cipher=cipher)
    late = writer.create(flow=Flow.AUTHORIZATION, amount=100, currency="EUR", reference="late")
    writer.close()  # the stored read models have not seen it
    before, tables = sqlite_file.read_bytes(), _tables(sqlite_file)

    with AuditLog.open(sqlite_file, read_only=True) as log:
        assert log.read_model(S.CREATED)[-1].payment_id == late  # caught up in memory
        assert sum(log.counts_by_state().values()) == 6
        assert log.rebuild_read_models() == log.verify().events_checked
        assert len(log.read_model()) == 6

    assert sqlite_file.read_bytes() == before
    assert _tables(sqlite_file) == tables
    with AuditLog.open(sqlite_file) as log:  # the stored read models were left as they were
        assert log._store.index.store.position() == log.verify().events_checked - 1
