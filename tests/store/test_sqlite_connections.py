"""The SQLite store's own connections: WAL, lock timeout, threads, read-only opens.

The store opens its SQLite connections itself (to keep prepared statements,
which eventsourcing's connections do not); these tests hold it to what
eventsourcing's connections did.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path
from uuid import UUID

import pytest

from klarna_flow import Flow, Payments, PaymentState, StorageError, TokenCipher, generate_key
from klarna_flow.testing import ManualClock

ACCOUNT = "krn:partner:global:account:test"


def _payments(path: Path, cipher: TokenCipher, **kwargs: object) -> Payments:
    return Payments.sqlite(path, cipher=cipher, partner_account_id=ACCOUNT, **kwargs)


def test_a_new_file_is_switched_to_write_ahead_logging(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    payments = _payments(path, TokenCipher(generate_key()))
    payments.create(flow=Flow.AUTHORIZATION, amount=100, currency="EUR", reference="r")
    payments.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_threads_sharing_one_store_each_see_every_payment(tmp_path: Path) -> None:
    payments = _payments(tmp_path / "p.sqlite", TokenCipher(generate_key()), clock=ManualClock())
    created: list[UUID] = []
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                pid = payments.create(
                    flow=Flow.AUTHORIZATION, amount=100 + i, currency="EUR", reference=f"t{n}-{i}"
                )
                payments.complete(pid, session_token=f"krn:payment:eu1:session:{n}-{i}")
                assert payments.get(pid).state is PaymentState.COMPLETED
                created.append(pid)
        except BaseException as e:  # noqa: BLE001  (reported by the main thread)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(created) == 120
    assert {payments.get(pid).state for pid in created} == {PaymentState.COMPLETED}
    assert payments.verify().ok
    payments.close()


def test_the_lock_timeout_setting_still_bounds_a_wait_for_a_locked_file(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    cipher = TokenCipher(generate_key())
    _payments(path, cipher).close()  # tables made
    payments = _payments(path, cipher, env={"SQLITE_LOCK_TIMEOUT": "1"})
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # holds the write lock
    try:
        started = time.monotonic()
        with pytest.raises(StorageError):
            payments.create(flow=Flow.AUTHORIZATION, amount=100, currency="EUR", reference="r")
        waited = time.monotonic() - started
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert 0.9 <= waited < 4.0  # eventsourcing's default would wait 5 s
    pid = payments.create(flow=Flow.AUTHORIZATION, amount=100, currency="EUR", reference="r")
    assert payments.get(pid).state is PaymentState.CREATED
    payments.close()


def test_a_read_only_open_reads_and_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    cipher = TokenCipher(generate_key())
    writer = _payments(path, cipher)
    pid = writer.create(flow=Flow.AUTHORIZATION, amount=100, currency="EUR", reference="r")
    writer.close()
    uri = f"file:{path}?mode=ro"
    reader = Payments(
        {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": uri, "CREATE_TABLE": "n"},
        cipher=cipher,
        partner_account_id=ACCOUNT,
    )
    assert reader.get(pid).amount == 100
    with pytest.raises(StorageError):
        reader.create(flow=Flow.AUTHORIZATION, amount=100, currency="EUR", reference="s")
    reader.close()


def _open_and_create(path: str, start: float, reference: str) -> str:
    """In a child process: wait for ``start``, open the store, create one payment."""
    while time.time() < start:
        time.sleep(0.001)
    try:
        payments = Payments.sqlite(path, cipher=TokenCipher.ephemeral(), partner_account_id=ACCOUNT)
        try:
            payments.create(
                flow=Flow.AUTHORIZATION, amount=100, currency="EUR", reference=reference
            )
        finally:
            payments.close()
    except StorageError as e:
        return f"StorageError: {e}"
    return "ok"


def test_processes_opening_one_new_file_at_once_all_open_it(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Pool(6) as pool:
        for trial in range(3):
            path = str(tmp_path / f"new-{trial}.sqlite")
            start = time.time() + 1.0  # every child imported and waiting
            args = [(path, start, f"r{trial}-{n}") for n in range(6)]
            assert pool.starmap(_open_and_create, args) == ["ok"] * 6
            payments = Payments.sqlite(path, cipher=TokenCipher.ephemeral())
            assert payments.counts_by_state() == {"CREATED": 6}
            payments.close()
