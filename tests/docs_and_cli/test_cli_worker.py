"""``klarna-flow worker``, run as real processes on an SQLite store, and its loop in-process.

- A worker expires the payments whose time ran out and re-sends the
  authorizations left pending, logs each round, and exits 0 on SIGTERM or
  SIGINT; its log holds no secret.
- A SIGTERM that arrives while a step waits on Klarna lets the step finish.
- Two workers at once: every effect once (one expiry event, one approval,
  one transaction at Klarna).
- ``--once`` runs one round; a store or configuration that cannot work ends
  the process at start with one line and status 1 or 2, creating nothing.
- The loop's back-off doubles up to its bound and starts again after a good
  round; a store that fails is closed and opened again.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from klarna_flow import (
    ConfigurationError,
    Payments,
    PaymentState,
    StorageError,
    TokenCipher,
    generate_key,
)
from klarna_flow.cli.worker import Backoff, Settings, Worker
from klarna_flow.klarna import KlarnaClient
from klarna_flow.testing import FakeKlarna

from .worker_support import (
    SECRET_ENV,
    all_done,
    assert_each_effect_once,
    assert_no_secret,
    read_log,
    start_worker,
    states,
    stop,
    store_with_work,
    wait_until,
)

FAST = ("--interval", "0.2", "--reconcile-older-than", "0s", "--max-backoff", "0.5")

# -- real processes -----------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_worker_does_the_work_and_stops_cleanly_on_a_signal(tmp_path: Path, sig: int) -> None:
    log = tmp_path / "worker.log"
    with store_with_work(str(tmp_path / "p.sqlite"), due=4, stuck=2) as work:
        proc = start_worker(work, log, *FAST)
        try:
            wait_until(lambda: all_done(work), what="the worker to do the work")
            wait_until(lambda: "round 2:" in read_log(log), what="a second round")
        finally:
            code = stop(proc, sig)

        assert code == 0, read_log(log)
        assert_each_effect_once(work)
    text = read_log(log)
    assert "worker starting on" in text
    assert "round 1: expired 4, reconciled 2 (APPROVED 2), unresolved 0" in text
    assert f"{signal.Signals(sig).name} received: stopping after the step in hand" in text
    assert "stopped after" in text
    assert_no_secret(text, work)


def test_a_signal_during_a_step_lets_the_step_finish(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    with store_with_work(str(tmp_path / "p.sqlite"), due=0, stuck=1) as work:
        work.fake.latency = 1.5  # Klarna takes its time to answer the re-send
        before = len(work.fake.requests)
        proc = start_worker(work, log, *FAST)
        try:
            wait_until(lambda: len(work.fake.requests) > before, what="the re-send to start")
        finally:
            code = stop(proc)

        assert code == 0, read_log(log)
        assert states(work, work.stuck) == {work.stuck[0]: PaymentState.AUTHORIZED}
        assert_each_effect_once(work)
    text = read_log(log)
    assert "round 1: expired 0, reconciled 1 (APPROVED 1)" in text
    assert "stopped before the last step" in text  # the unresolved report did not start
    assert "round 2" not in text


def test_two_workers_at_once_do_each_thing_once(tmp_path: Path) -> None:
    logs = [tmp_path / "worker-1.log", tmp_path / "worker-2.log"]
    with store_with_work(str(tmp_path / "p.sqlite"), due=20, stuck=6) as work:
        procs = [start_worker(work, log, *FAST, "--interval", "0.05") for log in logs]
        try:
            wait_until(lambda: all_done(work), what="the workers to do the work")
            wait_until(
                lambda: all("round 2:" in read_log(log) for log in logs), what="rounds of both"
            )
        finally:
            codes = [stop(p) for p in procs]

        assert codes == [0, 0], [read_log(log) for log in logs]
        assert_each_effect_once(work)
        for log in logs:
            assert_no_secret(read_log(log), work)


def test_once_runs_one_round_and_exits(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    with store_with_work(str(tmp_path / "p.sqlite"), due=2, stuck=1) as work:
        proc = start_worker(work, log, *FAST, "--once")
        code = proc.wait(30)
        assert code == 0, read_log(log)
        assert_each_effect_once(work)
    assert "round 1:" in read_log(log)
    assert "round 2:" not in read_log(log)


def _worker(tmp_path: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    return subprocess.run(
        [sys.executable, "-m", "klarna_flow.cli", "worker", *args],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=60,
        cwd=tmp_path,
        check=False,
    )


def _assert_one_line(result: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    lines = [line for line in result.stderr.splitlines() if "klarna-flow: " in line]
    assert result.returncode == code, result.stderr
    assert len(lines) == 1, result.stderr
    assert needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_store_is_refused_and_not_created(tmp_path: Path) -> None:
    result = _worker(tmp_path, "--db", "absent.sqlite", env={"KLARNA_API_KEY": "k"})
    _assert_one_line(result, 2, "no event store at absent.sqlite")
    assert not (tmp_path / "absent.sqlite").exists()


def test_a_foreign_file_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    foreign = tmp_path / "crm.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    before = foreign.read_bytes()
    result = _worker(tmp_path, "--db", str(foreign), env={"KLARNA_API_KEY": "k"})
    _assert_one_line(result, 2, "holds no klarna_flow store")
    assert foreign.read_bytes() == before


@pytest.mark.parametrize(
    ("missing", "needle"),
    [("KLARNA_API_KEY", "no Klarna API key"), ("KLARNA_FLOW_CIPHER_KEY", "cipher key")],
)
def test_a_missing_key_stops_the_start(tmp_path: Path, missing: str, needle: str) -> None:
    db = tmp_path / "p.sqlite"
    with Payments.sqlite(db, cipher=TokenCipher.ephemeral()):
        pass
    env = {"KLARNA_API_KEY": "k", "KLARNA_FLOW_CIPHER_KEY": generate_key()}
    del env[missing]
    result = _worker(tmp_path, "--db", str(db), "--once", env=env)
    _assert_one_line(result, 2, needle)


def test_an_unreachable_database_stops_the_start(tmp_path: Path) -> None:
    url = "postgresql://nobody:secret-pw@127.0.0.1:9/nothing"  # port 9: nothing listens
    env = {
        "KLARNA_API_KEY": "k",
        "KLARNA_FLOW_CIPHER_KEY": generate_key(),
        "POSTGRES_CONNECT_TIMEOUT": "1",
    }
    result = _worker(tmp_path, "--db", url, "--once", "--start-timeout", "0", env=env)
    _assert_one_line(result, 1, "cannot open the event store")
    assert "secret-pw" not in result.stderr


# -- the loop, in-process -------------------------------------------------------------------


def test_the_backoff_doubles_up_to_its_bound_and_starts_again() -> None:
    backoff = Backoff(1.0, 8.0, jitter=0.0)
    assert [backoff.next() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    backoff.reset()
    assert backoff.next() == 1.0


def test_the_jitter_only_shortens_a_delay() -> None:
    assert Backoff(4.0, 60.0, jitter=0.25, rand=lambda: 1.0).next() == 3.0
    assert Backoff(4.0, 60.0, jitter=0.25, rand=lambda: 0.0).next() == 4.0


def _payments(db: Path, *, closed: bool = False) -> Payments:
    """Payments on ``db``; a ``closed`` one fails as a store that went away does."""
    fake = FakeKlarna()
    client = KlarnaClient(fake.api_key, transport=httpx.MockTransport(fake))
    payments = Payments.sqlite(db, cipher=TokenCipher.ephemeral(), klarna=client)
    if closed:
        payments.close()
    return payments


def test_a_failed_store_is_closed_and_opened_again_after_a_growing_wait(tmp_path: Path) -> None:
    opens: list[str] = []
    script = iter(["dead", "refused", "refused", "good"])

    def opener() -> Payments:
        what = next(script)
        opens.append(what)
        if what == "refused":
            raise StorageError("the database is restarting")
        return _payments(tmp_path / "p.sqlite", closed=what == "dead")

    waits: list[float] = []
    stop = threading.Event()

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        if opens[-1] == "good" and worker.rounds:  # the store is back and a round went through
            stop.set()
        return stop.is_set()

    worker = Worker(opener, Settings(interval=5.0), stop=stop, wait=wait)
    worker.backoff.jitter = 0.0
    worker.run()

    assert opens == ["dead", "refused", "refused", "good"]
    assert worker.rounds == 1  # the round on the store that came back
    assert waits[:3] == [1.0, 2.0, 4.0]  # after the failed round, then the two failed opens
    assert 4.0 < waits[3] <= 5.0  # then the interval, less the round's own time
    assert worker.backoff.failures == 0


def test_once_with_a_failing_store_raises_instead_of_waiting(tmp_path: Path) -> None:
    worker = Worker(
        lambda: _payments(tmp_path / "p.sqlite", closed=True),
        Settings(once=True),
        wait=lambda _: pytest.fail("no wait"),
    )
    with pytest.raises(StorageError):
        worker.run()


def test_a_stop_before_a_round_runs_no_step(tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    worker = Worker(lambda: _payments(tmp_path / "p.sqlite"), Settings(), stop=stop)
    started = time.monotonic()
    worker.run()
    assert worker.rounds == 0
    assert time.monotonic() - started < 5


def test_a_store_locked_at_start_is_tried_again_then_the_worker_runs(tmp_path: Path) -> None:
    script = iter(["locked", "locked", "good"])

    def opener() -> Payments:
        if next(script) == "locked":
            raise StorageError("cannot open the event store: database is locked")
        return _payments(tmp_path / "p.sqlite")

    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return False

    worker = Worker(opener, Settings(once=True), wait=wait)
    worker.backoff.jitter = 0.0
    worker.run()

    assert waits == [1.0, 2.0]
    assert worker.rounds == 1


def test_what_does_not_heal_ends_the_start_at_once(tmp_path: Path) -> None:
    def opener() -> Payments:
        raise ConfigurationError(f"{tmp_path} holds no klarna_flow store")

    worker = Worker(opener, Settings(), wait=lambda _: pytest.fail("no wait"))
    with pytest.raises(ConfigurationError):
        worker.run()
