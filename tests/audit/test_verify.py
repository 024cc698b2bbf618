"""Tamper evidence: edit, delete and swap stored rows, and ``verify`` names the record.

The tampering is done the way an intruder with database access would do it:
with SQL on the events table (``sqlite3`` on the SQLite file, ``psycopg`` on
PostgreSQL), never through the library. Each case checks the library API and
the command line (exit code 1, payment and version in the output).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from typer.testing import CliRunner

from klarna_flow import Flow, Payments, StorageError, TokenCipher
from klarna_flow._audit import verify as verify_module
from klarna_flow._audit.log import AuditLog
from klarna_flow._audit.verify import VerificationReport, check_records
from klarna_flow._store.chain import genesis, link
from klarna_flow.cli import app as cli
from klarna_flow.testing import ManualClock
from tests._flow_helpers import Kit, MakePayments, open_kit
from tests.conftest import PG_URL

Tamper = Callable[[str, Sequence[Any]], None]


def workload(kit: Kit) -> list[UUID]:
    """Five payments of four events each, and one of two (in that order)."""
    ids = []
    for _ in range(5):
        created = kit.completed(Flow.AUTHORIZATION)
        kit.payments.authorize(created.payment_id)
        ids.append(created.payment_id)
    short = kit.completed(Flow.TOKENIZATION)
    ids.append(short.payment_id)
    kit.payments.counts_by_state()  # the payment index has seen every event
    return ids


@pytest.fixture
def db(tmp_path: Path, clock: ManualClock, cipher: TokenCipher) -> tuple[Path, list[UUID]]:
    path = tmp_path / "payments.sqlite"

    def make(**kwargs: Any) -> Payments:
        return Payments.sqlite(path, clock=clock, cipher=cipher, **kwargs)

    with open_kit(make, clock) as kit:
        ids = workload(kit)
        kit.payments.close()
    return path, ids


def sql(path: Path) -> Tamper:
    def run(statement: str, params: Sequence[Any] = ()) -> None:
        with sqlite3.connect(path) as conn:
            conn.execute(statement, params)

    return run


def verify_file(path: Path, payment_id: UUID | None = None) -> VerificationReport:
    with AuditLog.open(path) as log:
        return log.verify(payment_id)


def cli_verify(path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["verify", "--db", str(path), *args])
    return result.exit_code, result.stdout


def assert_found(path: Path, payment_id: UUID, version: int, problem: str) -> None:
    """The library, per payment and for the whole log, and the CLI agree."""
    report = verify_file(path)
    assert not report.ok
    assert (report.payment_id, report.version, report.problem) == (payment_id, version, problem)
    one = verify_file(path, payment_id)
    assert (one.payment_id, one.version, one.problem) == (payment_id, version, problem)
    code, out = cli_verify(path)
    assert code == 1
    assert f"payment {payment_id} version {version}: {problem}" in out
    code, _ = cli_verify(path, "--payment", str(payment_id))
    assert code == 1


# -- a clean log -------------------------------------------------------------------------


def test_a_clean_log_verifies(db: tuple[Path, list[UUID]]) -> None:
    path, ids = db

    report = verify_file(path)

    assert report.ok
    assert report.findings == ()
    assert (report.payment_id, report.version, report.problem) == (None, None, None)
    assert (report.events_checked, report.payments_checked) == (22, 6)
    assert verify_file(path, ids[0]).events_checked == 4
    code, out = cli_verify(path)
    assert code == 0
    assert "OK: 22 events of 6 payments checked" in out


def test_verify_reads_the_log_in_pages(
    db: tuple[Path, list[UUID]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, ids = db
    monkeypatch.setattr(verify_module, "PAGE_SIZE", 3)
    calls: list[tuple[int, int]] = []
    with AuditLog.open(path) as log:
        assert log.verify(progress=lambda done, total: calls.append((done, total))).ok
    assert len(calls) == 8
    assert calls[-1] == (22, 22)
    sql(path)(
        "DELETE FROM stored_events WHERE originator_id = ? AND originator_version = 3",
        (ids[2].hex,),
    )
    assert verify_file(path).finding is not None


@pytest.fixture
def kit(make_payments: MakePayments, clock: ManualClock) -> Iterator[Kit]:
    with open_kit(make_payments, clock) as kit:
        yield kit


def test_verify_on_every_store(kit: Kit) -> None:
    ids = workload(kit)
    expired = kit.completed()
    kit.clock.advance(timedelta(hours=2))
    assert kit.payments.expire_overdue() == [expired.payment_id]

    report = kit.payments.verify()

    assert report.ok, report.findings
    assert (report.events_checked, report.payments_checked) == (25, 7)
    for payment_id in ids:
        assert kit.payments.verify(payment_id).ok


# -- tampering on SQLite -----------------------------------------------------------------


def test_an_edited_payload_is_altered(db: tuple[Path, list[UUID]]) -> None:
    path, ids = db
    with sqlite3.connect(path) as conn:
        (state,) = conn.execute(
            "SELECT state FROM stored_events WHERE originator_id = ? AND originator_version = 1",
            (ids[1].hex,),
        ).fetchone()
        edited = state.replace(b'"amount":11800', b'"amount":1')
        assert edited != state
        conn.execute(
            "UPDATE stored_events SET state = ? WHERE originator_id = ? AND originator_version = 1",
            (edited, ids[1].hex),
        )

    assert_found(path, ids[1], 1, "altered")
    assert verify_file(path, ids[0]).ok  # the others still check out


def test_an_edited_topic_is_altered(db: tuple[Path, list[UUID]]) -> None:
    path, ids = db
    sql(path)(
        "UPDATE stored_events SET topic = replace(topic, 'Approved', 'Declined') "
        "WHERE originator_id = ? AND originator_version = 4",
        (ids[3].hex,),
    )
    assert_found(path, ids[3], 4, "altered")


def test_a_deleted_middle_event_is_missing(db: tuple[Path, list[UUID]]) -> None:
    path, ids = db
    sql(path)(
        "DELETE FROM stored_events WHERE originator_id = ? AND originator_version = 2",
        (ids[2].hex,),
    )
    assert_found(path, ids[2], 2, "missing")


def test_a_deleted_first_event_is_missing(db: tuple[Path, list[UUID]]) -> None:
    path, ids = db
    sql(path)(
        "DELETE FROM stored_events WHERE originator_id = ? AND originator_version = 1",
        (ids[0].hex,),
    )
    assert_found(path, ids[0], 1, "missing")


def test_a_deleted_last_event_is_truncated(db: tuple[Path, list[UUID]]) -> None:
    path, ids = db
    sql(path)(
        "DELETE FROM stored_events WHERE originator_id = ? AND originator_version = 4",
        (ids[4].hex,),
    )
    assert_found(path, ids[4], 4, "truncated")


def _authorized_unseen_by_the_index(path: Path, clock: ManualClock, cipher: TokenCipher) -> UUID:
    """Complete by notification, authorize, close: the index never saw version 4."""

    def make(**kwargs: Any) -> Payments:
        return Payments.sqlite(path, clock=clock, cipher=cipher, **kwargs)

    with open_kit(make, clock) as kit:
        created = kit.completed(Flow.AUTHORIZATION)
        kit.payments.authorize(created.payment_id)
        kit.payments.close()
    return created.payment_id


def test_a_deleted_last_event_is_truncated_though_no_read_model_saw_it(
    tmp_path: Path, clock: ManualClock, cipher: TokenCipher
) -> None:
    path = tmp_path / "payments.sqlite"
    payment_id = _authorized_unseen_by_the_index(path, clock, cipher)
    sql(path)(
        "DELETE FROM stored_events WHERE originator_id = ? AND originator_version = 4",
        (payment_id.hex,),
    )

    assert_found(path, payment_id, 4, "truncated")


def test_a_store_written_before_chain_heads_takes_them_from_its_log(
    tmp_path: Path, clock: ManualClock, cipher: TokenCipher
) -> None:
    path = tmp_path / "payments.sqlite"
    payment_id = _authorized_unseen_by_the_index(path, clock, cipher)
    sql(path)("DROP TABLE stored_events_heads", ())  # as a store written by 0.1.0 is
    Payments.sqlite(path, clock=clock, cipher=cipher).close()  # a writer opens it
    sql(path)(
        "DELETE FROM stored_events WHERE originator_id = ? AND originator_version = 4",
        (payment_id.hex,),
    )

    assert_found(path, payment_id, 4, "truncated")


def test_a_payment_deleted_entirely_is_truncated(db: tuple[Path, list[UUID]]) -> None:
    path, ids = db
    sql(path)("DELETE FROM stored_events WHERE originator_id = ?", (ids[5].hex,))
    assert_found(path, ids[5], 1, "truncated")


def test_swapped_contents_are_reordered(db: tuple[Path, list[UUID]]) -> None:
    path, ids = db
    with sqlite3.connect(path) as conn:
        rows = dict(
            conn.execute(
                "SELECT originator_version, topic || char(0) || hex(state) FROM stored_events "
                "WHERE originator_id = ? AND originator_version IN (2, 3)",
                (ids[1].hex,),
            ).fetchall()
        )
        for version, other in ((2, 3), (3, 2)):
            topic, state = rows[other].split("\x00")
            conn.execute(
                "UPDATE stored_events SET topic = ?, state = ? "
                "WHERE originator_id = ? AND originator_version = ?",
                (topic, bytes.fromhex(state), ids[1].hex, version),
            )
    assert_found(path, ids[1], 2, "reordered")


def test_swapped_versions_are_reordered(db: tuple[Path, list[UUID]]) -> None:
    path, ids = db
    move = (
        "UPDATE stored_events SET originator_version = ? "
        "WHERE originator_id = ? AND originator_version = ?"
    )
    for new, old in ((-1, 3), (3, 4), (4, -1)):
        sql(path)(move, (new, ids[3].hex, old))
    assert_found(path, ids[3], 3, "reordered")


def test_a_row_moved_to_another_payment_is_found(db: tuple[Path, list[UUID]]) -> None:
    path, ids = db
    sql(path)(
        "UPDATE stored_events SET originator_id = ?, originator_version = 3 "
        "WHERE originator_id = ? AND originator_version = 2",
        (ids[5].hex, ids[4].hex),
    )
    report = verify_file(path)
    # In log order: the moved row sits where payment 4's version 2 was written.
    assert [(f.payment_id, f.version, f.problem) for f in report.findings] == [
        (ids[5], 3, "altered"),
        (ids[4], 2, "missing"),
    ]


def test_an_unreadable_record(db: tuple[Path, list[UUID]]) -> None:
    path, ids = db
    sql(path)(
        "UPDATE stored_events SET state = x'0102' "
        "WHERE originator_id = ? AND originator_version = 2",
        (ids[0].hex,),
    )
    assert_found(path, ids[0], 2, "unreadable")


def test_every_tampered_payment_is_listed_first_one_first(db: tuple[Path, list[UUID]]) -> None:
    path, ids = db
    run = sql(path)
    run(
        "DELETE FROM stored_events WHERE originator_id = ? AND originator_version = 4",
        (ids[0].hex,),
    )
    run(
        "DELETE FROM stored_events WHERE originator_id = ? AND originator_version = 2",
        (ids[3].hex,),
    )
    run(
        "UPDATE stored_events SET state = CAST(state || x'00' AS BLOB) "
        "WHERE originator_id = ? AND originator_version = 3",
        (ids[1].hex,),
    )

    report = verify_file(path)

    # Chain findings in log order, then the deleted tail the index reveals.
    assert [(f.payment_id, f.version, f.problem) for f in report.findings] == [
        (ids[1], 3, "altered"),
        (ids[3], 2, "missing"),
        (ids[0], 4, "truncated"),
    ]
    assert report.finding == report.findings[0]
    assert report.as_dict()["ok"] is False
    assert verify_file(path, ids[2]).ok


# -- tampering on PostgreSQL ---------------------------------------------------------------


@pytest.mark.postgres
def test_an_edited_record_on_postgres(
    clock: ManualClock, cipher: TokenCipher, pg_schema: str
) -> None:
    import psycopg

    from klarna_flow._store.locations import postgres_env

    assert PG_URL is not None
    env = {**postgres_env(PG_URL), "POSTGRES_SCHEMA": pg_schema}
    table = f"{pg_schema}.payments_events"

    def make(**kwargs: Any) -> Payments:
        return Payments(env, clock=clock, cipher=cipher, **kwargs)

    with open_kit(make, clock) as kit:
        ids = workload(kit)
        assert kit.payments.verify().ok
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
        report = kit.payments.verify()
        kit.payments.close()
    assert [(f.payment_id, f.version, f.problem) for f in report.findings] == [
        (ids[2], 2, "altered"),
        (ids[4], 4, "truncated"),
    ]


@pytest.mark.postgres
def test_a_deleted_last_event_on_postgres_is_truncated_though_no_read_model_saw_it(
    clock: ManualClock, cipher: TokenCipher, pg_schema: str
) -> None:
    import psycopg

    from klarna_flow._store.locations import postgres_env

    assert PG_URL is not None
    env = {**postgres_env(PG_URL), "POSTGRES_SCHEMA": pg_schema}

    def make(**kwargs: Any) -> Payments:
        return Payments(env, clock=clock, cipher=cipher, **kwargs)

    with open_kit(make, clock) as kit:
        created = kit.completed(Flow.AUTHORIZATION)
        kit.payments.authorize(created.payment_id)
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(
                f"DELETE FROM {pg_schema}.payments_events "  # noqa: S608
                "WHERE originator_id = %s AND originator_version = 4",
                (created.payment_id,),
            )
        whole, one = kit.payments.verify(), kit.payments.verify(created.payment_id)
        kit.payments.close()
    for report in (whole, one):
        assert (report.payment_id, report.version, report.problem) == (
            created.payment_id,
            4,
            "truncated",
        )


# -- the checks themselves ---------------------------------------------------------------


class Rec:
    def __init__(self, version: int, topic: str, state: Any) -> None:
        self.originator_version = version
        self.topic = topic
        self.state = state


def chain(payment_id: UUID, n: int) -> list[Rec]:
    records, previous = [], genesis("Payments")
    for version in range(1, n + 1):
        payload = f'{{"n":{version}}}'.encode()
        digest = link(previous, payment_id, version, f"t{version}", payload)
        records.append(Rec(version, f"t{version}", digest + payload))
        previous = digest
    return records


def test_check_records_names_each_problem() -> None:
    pid = UUID(int=7)
    g = genesis("Payments")
    good = chain(pid, 4)
    assert check_records(g, pid, good) is None
    assert check_records(g, pid, good, indexed_version=4) is None

    def problem(records: list[Rec], indexed: int | None = None) -> tuple[int, str] | None:
        finding = check_records(g, pid, records, indexed)
        return None if finding is None else (finding.version, finding.problem)

    assert problem(good[:3], indexed=4) == (4, "truncated")
    assert problem([good[0], good[2], good[3]]) == (2, "missing")
    assert problem(good[1:]) == (1, "missing")
    swapped = [good[0], Rec(2, good[2].topic, good[2].state), Rec(3, good[1].topic, good[1].state)]
    assert problem(swapped) == (2, "reordered")
    assert problem([good[0], Rec(2, "t2", b"short")]) == (2, "unreadable")
    assert problem([good[0], Rec(2, "t2", None)]) == (2, "unreadable")
    assert problem([good[0], Rec(2, "t2", good[1].state + b" ")]) == (2, "altered")
    assert problem(good, indexed=4) is None
    assert check_records(genesis("Other"), pid, good) is not None  # another application's chain


def test_a_record_the_driver_cannot_read_is_a_storage_error_that_quotes_nothing(
    db: tuple[Path, list[UUID]],
) -> None:
    path, ids = db
    # Concatenating in SQL turns the blob into text that is not UTF-8: sqlite3
    # then fails the whole read, quoting the stored bytes in its message.
    sql(path)(
        "UPDATE stored_events SET state = state || x'00' "
        "WHERE originator_id = ? AND originator_version = 3",
        (ids[1].hex,),
    )
    with pytest.raises(StorageError, match="tampered") as info:
        verify_file(path)
    assert "timestamp" not in str(info.value)

    result = CliRunner().invoke(cli, ["verify", "--db", str(path)])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert "tampered" in result.stderr
    assert "timestamp" not in result.stderr
    assert "Traceback" not in result.output
