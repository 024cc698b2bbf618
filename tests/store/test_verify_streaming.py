"""Verify streams: a whole-log check holds the chain heads of recent payments only.

On SQLite and PostgreSQL ``verify()`` reads the log a page at a time and keeps
at most two generations of ``HEADS_KEPT`` chain heads; a payment seen longer
ago takes its head back from the log. Its report must be the one of the walk
that remembers every payment (still used for the in-memory store), so each
tampering of ``tests/audit/test_verify.py`` is made on a log whose payments
interleave, and the two are compared with pages and generations down to one
record. Its Python memory does not grow with the number of payments.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from klarna_flow import Flow, Payments, TokenCipher
from klarna_flow._audit import verify as verify_module
from klarna_flow._audit.log import AuditLog
from klarna_flow._audit.verify import VerificationReport
from klarna_flow._store.read_models import EventLog
from klarna_flow.testing import ManualClock
from tests._flow_helpers import Kit, open_kit
from tests.conftest import PG_URL
from tests.store.test_replay_streaming import build_store, traced_peak

Tamper = Callable[[Callable[[str, Sequence[Any]], None], list[UUID]], None]

SIZES = [(1, 1), (2, 1), (3, 2), (7, 1), (2000, 2)]
"""(page, heads kept per generation) besides the defaults."""


def interleaved(kit: Kit) -> list[UUID]:
    """Six payments whose events interleave in the log: all created, then
    all completed, then five authorized (22 events)."""
    created = [kit.create() for _ in range(5)]
    created.append(kit.create(Flow.TOKENIZATION))
    for payment in created:
        kit.complete(payment)
    for payment in created[:5]:
        kit.payments.authorize(payment.payment_id)
    kit.payments.counts_by_state()  # the payment index has seen every event
    return [payment.payment_id for payment in created]


@pytest.fixture
def db(tmp_path: Path, clock: ManualClock, cipher: TokenCipher) -> tuple[Path, list[UUID]]:
    path = tmp_path / "payments.sqlite"

    def make(**kwargs: Any) -> Payments:
        return Payments.sqlite(path, clock=clock, cipher=cipher, **kwargs)

    with open_kit(make, clock) as kit:
        ids = interleaved(kit)
        kit.payments.close()
    return path, ids


def summary(report: VerificationReport) -> tuple[object, ...]:
    return report.events_checked, report.payments_checked, report.findings


def remembering_every_payment(
    run: Callable[[], VerificationReport], monkeypatch: pytest.MonkeyPatch
) -> VerificationReport:
    """The report of the walk that keeps every payment's head in memory."""
    with monkeypatch.context() as m:
        m.setattr(EventLog, "of", classmethod(lambda cls, recorder: None))
        return run()


def assert_streams_alike(
    run: Callable[[], VerificationReport], monkeypatch: pytest.MonkeyPatch
) -> VerificationReport:
    expected = remembering_every_payment(run, monkeypatch)
    assert summary(run()) == summary(expected)
    for page, kept in SIZES:
        with monkeypatch.context() as m:
            m.setattr(verify_module, "PAGE_SIZE", page)
            m.setattr(verify_module, "HEADS_KEPT", kept)
            assert summary(run()) == summary(expected), (page, kept)
    return expected


def _swap_rowids(run: Callable[[str, Sequence[Any]], None], payment_id: UUID) -> None:
    """Version 2 moves to the end of the log, after version 3 (its notification id)."""
    run(
        "UPDATE stored_events SET rowid = (SELECT MAX(rowid) FROM stored_events) + 1 "
        "WHERE originator_id = ? AND originator_version = 2",
        (payment_id.hex,),
    )


def _moved_rows(run: Callable[[str, Sequence[Any]], None], ids: list[UUID]) -> None:
    """Versions 3 and 4 trade their version numbers."""
    for new, old in ((-1, 3), (3, 4), (4, -1)):
        run(
            "UPDATE stored_events SET originator_version = ? "
            "WHERE originator_id = ? AND originator_version = ?",
            (new, ids[3].hex, old),
        )


def _delete(run: Callable[[str, Sequence[Any]], None], payment_id: UUID, version: int) -> None:
    run(
        "DELETE FROM stored_events WHERE originator_id = ? AND originator_version = ?",
        (payment_id.hex, version),
    )


def _update(
    run: Callable[[str, Sequence[Any]], None], setting: str, payment_id: UUID, version: int
) -> None:
    """One record's ``state`` or ``topic`` set by a fixed SQL expression (a literal)."""
    statements = {
        "amount": "UPDATE stored_events SET state = CAST(replace(state, '\"amount\":11800', "
        "'\"amount\":1') AS BLOB) WHERE originator_id = ? AND originator_version = ?",
        "topic": "UPDATE stored_events SET topic = replace(topic, 'Approved', 'Declined') "
        "WHERE originator_id = ? AND originator_version = ?",
        "short": "UPDATE stored_events SET state = x'0102' "
        "WHERE originator_id = ? AND originator_version = ?",
        "longer": "UPDATE stored_events SET state = CAST(state || x'00' AS BLOB) "
        "WHERE originator_id = ? AND originator_version = ?",
    }
    run(statements[setting], (payment_id.hex, version))


def _several(run: Callable[[str, Sequence[Any]], None], ids: list[UUID]) -> None:
    _delete(run, ids[0], 4)
    _delete(run, ids[3], 2)
    _update(run, "longer", ids[1], 3)


TAMPERINGS: dict[str, Tamper] = {
    "clean": lambda run, ids: None,
    "edited payload": lambda run, ids: _update(run, "amount", ids[1], 1),
    "edited topic": lambda run, ids: _update(run, "topic", ids[3], 4),
    "deleted middle": lambda run, ids: _delete(run, ids[2], 2),
    "deleted first": lambda run, ids: _delete(run, ids[0], 1),
    "deleted last": lambda run, ids: _delete(run, ids[4], 4),
    "deleted payment": lambda run, ids: run(
        "DELETE FROM stored_events WHERE originator_id = ?", (ids[5].hex,)
    ),
    "swapped versions": _moved_rows,
    "moved to another payment": lambda run, ids: run(
        "UPDATE stored_events SET originator_id = ?, originator_version = 3 "
        "WHERE originator_id = ? AND originator_version = 2",
        (ids[5].hex, ids[4].hex),
    ),
    "unreadable": lambda run, ids: _update(run, "short", ids[0], 2),
    "out of log order": lambda run, ids: _swap_rowids(run, ids[2]),
    "several": _several,
}


def sql(path: Path) -> Callable[[str, Sequence[Any]], None]:
    def run(statement: str, params: Sequence[Any] = ()) -> None:
        with sqlite3.connect(path) as conn:
            conn.execute(statement, params)

    return run


@pytest.mark.parametrize("tampering", TAMPERINGS)
def test_a_streaming_check_reports_what_remembering_every_payment_reports(
    db: tuple[Path, list[UUID]], monkeypatch: pytest.MonkeyPatch, tampering: str
) -> None:
    path, ids = db
    TAMPERINGS[tampering](sql(path), ids)

    def run() -> VerificationReport:
        with AuditLog.open(path) as log:
            return log.verify()

    report = assert_streams_alike(run, monkeypatch)

    assert report.ok == (tampering in {"clean", "out of log order"})
    assert report.events_checked == sql_count(path)
    if tampering == "clean":
        assert (report.events_checked, report.payments_checked) == (22, 6)


def sql_count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        (count,) = conn.execute("SELECT COUNT(*) FROM stored_events").fetchone()
    return int(count)


def test_without_chain_heads_the_index_reveals_a_deleted_tail(
    db: tuple[Path, list[UUID]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store opened read-only before any writer added the heads table."""
    path, ids = db
    run_sql = sql(path)
    run_sql("DROP TABLE stored_events_heads", ())
    _delete(run_sql, ids[4], 4)

    def run() -> VerificationReport:
        with AuditLog.open(path, read_only=True) as log:
            return log.verify()

    report = assert_streams_alike(run, monkeypatch)
    assert [(f.payment_id, f.version, f.problem) for f in report.findings] == [
        (ids[4], 4, "truncated")
    ]


@pytest.mark.postgres
def test_a_streaming_check_on_postgres(
    clock: ManualClock, cipher: TokenCipher, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    from klarna_flow._store.locations import postgres_env

    assert PG_URL is not None
    env = {**postgres_env(PG_URL), "POSTGRES_SCHEMA": pg_schema}
    table = f"{pg_schema}.payments_events"

    def make(**kwargs: Any) -> Payments:
        return Payments(env, clock=clock, cipher=cipher, **kwargs)

    with open_kit(make, clock) as kit:
        ids = interleaved(kit)
        assert summary(assert_streams_alike(kit.payments.verify, monkeypatch))[:2] == (22, 6)
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(
                f"UPDATE {table} SET state = state || '\\x00'::bytea "  # noqa: S608
                "WHERE originator_id = %s AND originator_version = 2",
                (ids[2],),
            )
            conn.execute(
                f"DELETE FROM {table} WHERE originator_id = %s AND originator_version = 4",  # noqa: S608
                (ids[4],),
            )
        report = assert_streams_alike(kit.payments.verify, monkeypatch)
        kit.payments.close()
    assert [(f.payment_id, f.version, f.problem) for f in report.findings] == [
        (ids[2], 2, "altered"),
        (ids[4], 4, "truncated"),
    ]


# -- memory ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("verify-streaming")
    return {n: build_store(folder / f"{n}.sqlite", n) for n in (2_000, 20_000)}


@pytest.mark.slow
def test_a_checks_memory_does_not_grow_with_the_payments(
    stores: dict[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify_module, "HEADS_KEPT", 250)  # both stores hold far more payments
    peaks = {}
    for payments, path in stores.items():
        with AuditLog.open(path) as log:
            assert log.verify().payments_checked == payments
            peaks[payments] = traced_peak(log.verify)
    # Ten times the payments: about the same memory (it held every head: ten times).
    assert peaks[20_000] < 1.5 * peaks[2_000], peaks
