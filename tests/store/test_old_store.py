"""A store written by an earlier release opens, reads, verifies and grows.

``tests/fixtures/old_store.sqlite`` was written by the code of the commit
that added it (the JSON payloads of eventsourcing's transcoder, before
klarna_flow's own codec), with ``tests/fixtures/old_store.key`` as its cipher
key: 14 payments through the public API against ``FakeKlarna``, covering every
event a ``Payment`` records. ``tests/fixtures/old_store_expected.json`` holds
each payment's state and audit trail as that code read them. To regenerate
all three (only ever on that commit, or the fixture stops being old)::

    .venv/bin/python -m tests.fixtures.make_old_store
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from klarna_flow import AuditLog, Payments, PaymentState, TokenCipher
from klarna_flow._domain.payment import EVENT_STATES
from klarna_flow.testing import ManualClock
from tests.fixtures.make_old_store import payment_state

FIXTURES = Path(__file__).parent.parent / "fixtures"
EXPECTED: dict[str, Any] = json.loads((FIXTURES / "old_store_expected.json").read_text())
PAYMENTS: dict[str, Any] = EXPECTED["payments"]
SESSION_TOKEN = "krn:payment:eu1:klarna-network-session-token:after-upgrade"


@pytest.fixture
def old_db(tmp_path: Path) -> Path:
    """A copy of the old store (opening it writes: never touch the fixture)."""
    copy = tmp_path / "old.sqlite"
    shutil.copyfile(FIXTURES / "old_store.sqlite", copy)
    return copy


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def payments(old_db: Path, clock: ManualClock) -> Iterator[Payments]:
    key = (FIXTURES / "old_store.key").read_text().strip()
    app = Payments.sqlite(old_db, clock=clock, cipher=TokenCipher(key))
    yield app
    app.close()


def test_the_fixture_holds_every_event_a_payment_records() -> None:
    assert set(EXPECTED["events"]) == set(EVENT_STATES)


@pytest.mark.parametrize("name", sorted(PAYMENTS))
def test_every_old_payment_loads_with_the_same_state(payments: Payments, name: str) -> None:
    payment = payments.get(UUID(PAYMENTS[name]["id"]))
    assert payment_state(payment) == PAYMENTS[name]["state"]


@pytest.mark.parametrize("name", sorted(PAYMENTS))
def test_every_old_audit_trail_is_unchanged(payments: Payments, name: str) -> None:
    trail = payments.audit_trail(UUID(PAYMENTS[name]["id"]))
    assert [e.as_dict() for e in trail] == PAYMENTS[name]["trail"]


def test_old_history_rebuilds_at_every_version(payments: Payments) -> None:
    for expected in PAYMENTS.values():
        pid = UUID(expected["id"])
        trail = expected["trail"]
        for entry in trail:
            past = payments.state_at(pid, version=entry["version"])
            assert past.version == entry["version"]
            assert past.state.value == (entry["state_after"] or entry["state_before"])


def test_the_old_store_verifies_and_rebuilds_its_index(payments: Payments, old_db: Path) -> None:
    caught_up = payments.read_model()

    assert payments.verify().ok
    assert payments.rebuild_read_models() == sum(len(p["trail"]) for p in PAYMENTS.values())
    assert payments.read_model() == caught_up
    with AuditLog.open(old_db) as log:
        assert log.verify().ok


def test_events_appended_to_old_payments_keep_the_chain(
    payments: Payments, clock: ManualClock, old_db: Path
) -> None:
    pid = UUID(PAYMENTS["identified"]["id"])
    old_trail = PAYMENTS["identified"]["trail"]

    payments.complete(pid, session_token=SESSION_TOKEN)
    clock.advance(timedelta(hours=2))
    payments.expire(pid)
    fresh = payments.create(flow="AUTHORIZATION", amount=100, currency="EUR", reference="new-1")

    assert payments.get(pid).state is PaymentState.EXPIRED
    assert payments.get(fresh).state is PaymentState.CREATED
    trail = [e.as_dict() for e in payments.audit_trail(pid)]
    assert trail[: len(old_trail)] == old_trail
    assert [e["event"] for e in trail[len(old_trail) :]] == ["PurchaseCompleted", "PaymentExpired"]
    assert payments.verify().ok
    assert payments.verify(pid).ok
    assert payments.state_at(pid, version=len(old_trail)).state is PaymentState.CREATED
    completed = payments.state_at(pid, version=len(old_trail) + 1)
    assert completed.session_token is not None
    assert (
        payments.cipher.open(completed.session_token, aad=pid.bytes + b"session_token")
        == SESSION_TOKEN
    )
    payments.close()
    with AuditLog.open(old_db) as log:
        assert log.verify().ok
        assert [e.as_dict() for e in log.trail(pid)] == trail
