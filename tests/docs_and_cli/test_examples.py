"""The examples the docs include run, and do what the docs say they do.

``examples/quickstart.py``: a first payment end to end against FakeKlarna.
``examples/audit_from_database.py``: an auditor with an SQLite file and no
key reads the trail and checks the chain (and sees where it was tampered with).
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import pytest

from examples import audit_from_database, quickstart
from klarna_flow import generate_key

ROOT = Path(__file__).resolve().parents[2]
KEY_ENV = ("KLARNA_FLOW_CIPHER_KEY", "KLARNA_FLOW_OLD_CIPHER_KEYS", "KLARNA_FLOW_ALLOW_PLAINTEXT")


def _run(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in KEY_ENV}
    env.pop("PERSISTENCE_MODULE", None)
    return {**env, **extra}


def _payment_id(output: str) -> UUID:
    match = re.search(r"^payment ([0-9a-f-]{36}):$", output, re.MULTILINE)
    assert match, output
    return UUID(match[1])


@pytest.fixture
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*KEY_ENV, "PERSISTENCE_MODULE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def database(tmp_path: Path, no_key: None, capsys: pytest.CaptureFixture[str]) -> tuple[Path, UUID]:
    """An SQLite file holding one authorized payment, made by the quickstart."""
    db = tmp_path / "payments.sqlite"
    assert quickstart.main(["--db", str(db)]) == 0
    return db, _payment_id(capsys.readouterr().out)


def test_quickstart_authorizes_a_first_payment(
    no_key: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert quickstart.main(["--reference", "order-1234"]) == 0
    out = capsys.readouterr().out
    assert "notification: HTTP 200 (applied)" in out
    assert "authorize: APPROVED -> AUTHORIZED" in out
    assert re.search(r"payment transaction: krn:payment:eu1:transaction:\S+", out)
    events = re.findall(r"^  v(\d) \S+ (\w+)", out, re.MULTILINE)
    assert events == [
        ("1", "PaymentCreated"),
        ("2", "AuthorizationRequested"),
        ("3", "StepUpRequired"),
        ("4", "PurchaseCompleted"),
        ("5", "AuthorizationRequested"),
        ("6", "AuthorizationApproved"),
    ]
    assert "initiate: STEP_UP_REQUIRED" in out
    assert "notification:" in out.split("PurchaseCompleted")[1].splitlines()[0]


def test_quickstart_runs_as_a_script_on_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "payments.sqlite"
    first = _run("quickstart.py", "--db", str(db), env=_env())
    second = _run("quickstart.py", "--db", str(db), env=_env())  # a new reference each run
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert _payment_id(first.stdout) != _payment_id(second.stdout)


def test_audit_reads_the_trail_and_verifies_the_chain(
    database: tuple[Path, UUID], capsys: pytest.CaptureFixture[str]
) -> None:
    db, payment_id = database
    assert audit_from_database.main([str(db), str(payment_id)]) == 0
    out = capsys.readouterr().out
    assert re.findall(r"^v(\d) \S+ (\w+): (\S+) -> (\S+)", out, re.MULTILINE) == [
        ("1", "PaymentCreated", "-", "CREATED"),
        ("2", "AuthorizationRequested", "CREATED", "AUTHORIZING"),
        ("3", "StepUpRequired", "AUTHORIZING", "CREATED"),
        ("4", "PurchaseCompleted", "CREATED", "COMPLETED"),
        ("5", "AuthorizationRequested", "COMPLETED", "AUTHORIZING"),
        ("6", "AuthorizationApproved", "AUTHORIZING", "AUTHORIZED"),
    ]
    assert "after v4: COMPLETED (attempts 1)" in out
    assert "after v6: AUTHORIZED (attempts 2)" in out
    assert "chain ok: 6 events verified" in out
    assert re.search(r'"session_token": "\*\*\*\* \(key k-[0-9a-f]+\)"', out)
    assert "klarna-network-session-token" not in out


def test_audit_needs_no_key_as_a_script(tmp_path: Path) -> None:
    db = tmp_path / "payments.sqlite"
    made = _run("quickstart.py", "--db", str(db), env=_env(KLARNA_FLOW_CIPHER_KEY=generate_key()))
    assert made.returncode == 0, made.stderr
    audit = _run("audit_from_database.py", str(db), str(_payment_id(made.stdout)), env=_env())
    assert audit.returncode == 0, audit.stderr
    assert "chain ok: 6 events verified" in audit.stdout


def test_audit_names_the_version_that_was_tampered_with(
    database: tuple[Path, UUID], capsys: pytest.CaptureFixture[str]
) -> None:
    db, payment_id = database
    with sqlite3.connect(db) as conn:
        (state,) = conn.execute(
            "SELECT state FROM stored_events WHERE originator_id = ? AND originator_version = 1",
            (payment_id.hex,),  # eventsourcing stores the id as hex
        ).fetchone()
        assert b'"amount":11800' in state
        conn.execute(
            "UPDATE stored_events SET state = ? WHERE originator_id = ? AND originator_version = 1",
            (state.replace(b'"amount":11800', b'"amount":1'), payment_id.hex),
        )
    conn.close()
    assert audit_from_database.main([str(db), str(payment_id)]) == 1
    out = capsys.readouterr().out
    assert '"amount": 1,' in out  # the trail shows what is stored now...
    assert "chain BROKEN at v1: altered" in out  # ...and the chain says it was changed


def test_audit_of_an_unknown_payment_or_database(
    database: tuple[Path, UUID], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, _ = database
    unknown = "00000000-0000-4000-8000-000000000000"
    assert audit_from_database.main([str(db), unknown]) == 1
    assert f"payment {unknown} not found" in capsys.readouterr().err
    assert audit_from_database.main([str(tmp_path / "nowhere.sqlite"), unknown]) == 2
    assert "no event store" in capsys.readouterr().err


def test_audit_of_a_file_that_holds_no_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = tmp_path / "crm.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE customers (id)")

    assert audit_from_database.main([str(foreign), "00000000-0000-4000-8000-000000000000"]) == 2
    assert "holds no klarna_flow store" in capsys.readouterr().err
