"""``klarna-flow worker`` on PostgreSQL: the database restarted under running workers.

Two worker processes run on one PostgreSQL schema; the server is stopped
(``pg_ctlcluster ... stop``) under them until both have noticed, then
started again. They log the failure, back off, reconnect, and do the work
given before and after the restart, each effect once; SIGTERM then ends them
with status 0.

Restarting the server needs a local cluster and a user allowed to restart it
(root or postgres); otherwise the test skips and says why. Other PostgreSQL
clients lose their connections for the few seconds the server is down.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import NO_PG, PG_URL

from .worker_support import (
    add_work,
    all_done,
    assert_each_effect_once,
    assert_no_secret,
    read_log,
    start_worker,
    stop,
    store_with_work,
    wait_until,
)

pytestmark = [pytest.mark.postgres]

CLUSTER = ("15", "main")
FAST = ("--interval", "0.3", "--reconcile-older-than", "0s", "--max-backoff", "1")


def _cannot_restart() -> str | None:
    """Why this test cannot restart the PostgreSQL server, or None if it can."""
    if not PG_URL:
        return NO_PG
    if urlsplit(PG_URL).hostname not in {"127.0.0.1", "localhost", "::1"}:
        return "KLARNA_FLOW_TEST_DATABASE_URL is not a local server: it cannot be restarted here"
    if shutil.which("pg_ctlcluster") is None:
        return "pg_ctlcluster is not installed: the local server cannot be restarted"
    if not Path("/etc/postgresql", *CLUSTER).is_dir():
        return f"no local PostgreSQL cluster {' '.join(CLUSTER)} to restart"
    if os.geteuid() != 0 and os.environ.get("USER") != "postgres":
        return "restarting PostgreSQL needs root or the postgres user"
    return None


def _pg_ctl(action: str) -> None:
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", *CLUSTER, action],  # noqa: S607
        check=True,
        capture_output=True,
        timeout=120,
    )


def test_workers_ride_out_a_postgres_restart(pg_schema: str, tmp_path: Path) -> None:
    reason = _cannot_restart()
    if reason:
        pytest.skip(reason)
    assert PG_URL is not None
    logs = [tmp_path / "worker-1.log", tmp_path / "worker-2.log"]
    env = {"POSTGRES_SCHEMA": pg_schema}
    with store_with_work(PG_URL, due=6, stuck=2, env=env) as work:
        procs = [start_worker(work, log, *FAST, POSTGRES_CONNECT_TIMEOUT="1") for log in logs]
        try:
            wait_until(lambda: all_done(work), what="the work given before the restart")
            wait_until(
                lambda: all("round 1:" in read_log(log) for log in logs),
                what="both workers to be running",
            )
            _pg_ctl("stop")
            try:
                wait_until(
                    lambda: all("failed (" in read_log(log) for log in logs),
                    what="both workers to notice the database is gone",
                )
            finally:
                _pg_ctl("start")
            add_work(work, due=6, stuck=2, prefix="after-")

            wait_until(lambda: all_done(work), timeout=60, what="the work given after it")
            wait_until(
                lambda: all("reconnected to the store" in read_log(log) for log in logs),
                what="both workers to reconnect",
            )
        finally:
            codes = [stop(p) for p in procs]

        assert codes == [0, 0], [read_log(log) for log in logs]
        assert_each_effect_once(work)
    for log in logs:
        text = read_log(log)
        assert "next in" in text  # the failure was logged with its back-off
        assert "round" in text.rpartition("reconnected to the store")[2]  # rounds went on
        assert_no_secret(text, work)
        assert "klarna_flow:klarna_flow@" not in text  # the database password
