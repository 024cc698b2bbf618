"""The ``klarna-flow`` command, driven the way a person (or a script) drives it.

Every subcommand runs through Typer's ``CliRunner`` (``fake-server`` and the
module entry point also as real processes): outputs, ``--json``, exit codes
(0 success, 1 a finding or failure, 2 a usage error) and one-line errors.
The read-only commands run with no cipher key anywhere: not in the
environment, not beside the database.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shlex
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner, Result

from klarna_flow import (
    AuditLog,
    ConfigurationError,
    Flow,
    Payment,
    Payments,
    PaymentState,
    TokenCipher,
    generate_key,
)
from klarna_flow.cli import app, main
from klarna_flow.cli.demo import run_demo
from klarna_flow.cli.demo_render import demo_view, print_demo
from klarna_flow.cli.render import progress_bar
from klarna_flow.klarna import KlarnaClient, RetryPolicy
from klarna_flow.testing import FakeKlarna, ManualClock, serve_fake

NO_SECRETS_ENV: dict[str, str | None] = {
    "KLARNA_FLOW_CIPHER_KEY": None,
    "KLARNA_FLOW_OLD_CIPHER_KEYS": None,
    "KLARNA_FLOW_ALLOW_PLAINTEXT": None,
    "KLARNA_FLOW_DB": None,
    "KLARNA_API_KEY": None,
}
COMMANDS = [
    "demo",
    "audit",
    "history",
    "export",
    "verify",
    "replay",
    "expire",
    "reconcile",
    "diagram",
    "fake-server",
    "payments",
    "show",
    "worker",
]
WITH_DB = [c for c in COMMANDS if c not in {"diagram", "fake-server"}]
UNMASKED_TOKEN = re.compile(r"token:(?!\*\*\*\*)")


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=NO_SECRETS_ENV)


def ok(*args: str) -> Result:
    result = run(*args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def as_json(*args: str) -> Any:
    return json.loads(ok(*args, "--json").stdout)


def assert_one_line_error(result: Result, code: int, *needles: str) -> None:
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert result.stderr.startswith("klarna-flow: error: ")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.stderr


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """A demo database whose key was taken away: read-only commands need none."""
    folder = tmp_path_factory.mktemp("demo")
    db = str(folder / "demo.sqlite")
    result = json.loads(ok("demo", "--db", db, "--json").stdout)
    Path(f"{db}.key").rename(folder / "key.moved-away")
    return db, result


def by_path(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["path"]: p for p in result["payments"]}


# -- help ---------------------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    result = ok("--help")
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = ok(command, "--help")
    assert "Usage" in result.stdout
    assert ("--db" in result.stdout) == (command in WITH_DB)


def test_no_command_shows_the_help() -> None:
    result = run()
    assert result.exit_code == 2
    assert "Usage" in result.output


def test_an_unknown_command_is_a_usage_error() -> None:
    assert run("frobnicate").exit_code == 2


# -- demo ---------------------------------------------------------------------------------

#: Every scenario of the demo and the state its payment ends in.
SCENARIOS = {
    "step-up": "AUTHORIZED",
    "express": "AUTHORIZED",
    "tokenization": "COMPLETED",
    "token-charge": "AUTHORIZED",
    "pay-and-tokenize": "AUTHORIZED",
    "declined": "DECLINED",
    "declined-by-webhook": "DECLINED",
    "canceled": "CANCELED",
    "lost-answer": "AUTHORIZED",
    "tokenization-guard": "COMPLETED",
    "expired-at-klarna": "EXPIRED",
    "window-elapsed": "EXPIRED",
}
#: What each scenario's payment recorded, event by event.
TRAILS = {
    "step-up": ["PaymentCreated", "AuthorizationRequested", "StepUpRequired",
                "PurchaseCompleted", "AuthorizationRequested", "AuthorizationApproved"],
    "express": ["PaymentCreated", "AuthorizationRequested", "AuthorizationApproved"],
    "tokenization": ["PaymentCreated", "AuthorizationRequested", "StepUpRequired",
                     "PurchaseCompleted"],
    "token-charge": ["PaymentCreated", "AuthorizationRequested", "AuthorizationApproved"],
    "pay-and-tokenize": ["PaymentCreated", "AuthorizationRequested", "StepUpRequired",
                         "PurchaseCompleted", "AuthorizationRequested", "AuthorizationApproved"],
    "declined": ["PaymentCreated", "AuthorizationRequested", "AuthorizationDeclined"],
    "declined-by-webhook": ["PaymentCreated", "AuthorizationRequested", "StepUpRequired",
                            "PaymentRequestDeclined"],
    "canceled": ["PaymentCreated", "AuthorizationRequested", "StepUpRequired", "PaymentCanceled"],
    "lost-answer": ["PaymentCreated", "AuthorizationRequested", "StepUpRequired",
                    "PurchaseCompleted", "AuthorizationRequested", "AuthorizationApproved"],
    "tokenization-guard": ["PaymentCreated", "AuthorizationRequested", "StepUpRequired",
                           "PurchaseCompleted"],
    "expired-at-klarna": ["PaymentCreated", "AuthorizationRequested", "StepUpRequired",
                          "PaymentExpired"],
    "window-elapsed": ["PaymentCreated", "AuthorizationRequested", "StepUpRequired",
                       "PurchaseCompleted", "PaymentExpired"],
}  # fmt: skip
#: A session or customer token as FakeKlarna makes them, not masked.
CLEAR_TOKEN = re.compile(r"(klarna-network-session-token|krn:customer-token):(?!\*\*\*\*)")


def stored_payments(db: str, payment_ids: list[str]) -> dict[str, Payment]:
    """The payments as the store holds them, read with the library and no key."""
    with AuditLog.open(db) as log:
        return {pid: log.get(UUID(pid)) for pid in payment_ids}


def test_demo_runs_twice_on_the_default_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = ok("demo")
    key_file = tmp_path / "klarna_flow_demo.sqlite.key"
    key = key_file.read_text()
    second = json.loads(ok("demo", "--json").stdout)

    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text() == key  # reused, not replaced
    for scenario, state in SCENARIOS.items():
        assert re.search(rf"(?<![\w-]){re.escape(scenario)}(?![\w-])", first.stdout), scenario
        assert state in first.stdout
    assert "StepUpRequired" in first.stdout  # the step-up payment's audit trail
    assert "next: klarna-flow verify --db klarna_flow_demo.sqlite" in first.stdout
    assert CLEAR_TOKEN.search(first.stdout + first.stderr) is None
    # A second run plays every scenario again with payments of its own, and
    # leaves the first run's as they were.
    with AuditLog.open("klarna_flow_demo.sqlite") as log:
        rows = {str(row.payment_id): row for row in log.read_model()}
    again = {p["payment_id"]: p for p in second["payments"]}
    earlier = {pid: row for pid, row in rows.items() if pid not in again}
    assert len(rows) == 2 * len(SCENARIOS)
    assert len(again) == len(earlier) == len(SCENARIOS)
    assert all(pid in first.stdout for pid in earlier)
    assert all(pid not in first.stdout for pid in again)
    for row in earlier.values():
        assert row.reference is not None
        _, stamp, suffix, scenario = row.reference.split("-", 3)  # demo-<run>-<scenario>
        assert f"{stamp}-{suffix}" != second["run"]
        assert row.state == SCENARIOS[scenario], scenario
    report = as_json("verify")
    assert (report["ok"], report["payments_checked"]) == (True, 2 * len(SCENARIOS))


def test_demo_plays_every_scenario_to_its_final_state(
    demo_db: tuple[str, dict[str, Any]],
) -> None:
    db, result = demo_db
    payments = by_path(result)
    stored = stored_payments(db, [p["payment_id"] for p in result["payments"]])

    assert [p["path"] for p in result["payments"]] == list(SCENARIOS)
    assert {path: p["state"] for path, p in payments.items()} == SCENARIOS
    for path, p in payments.items():
        payment = stored[p["payment_id"]]
        assert payment.state.value == SCENARIOS[path], path
        assert payment.flow.value == p["flow"], path
        assert payment.reference == p["reference"] == f"demo-{result['run']}-{path}"
        assert payment.payment_transaction_id == p["payment_transaction_id"], path
        assert (payment.payment_transaction_id is not None) == (SCENARIOS[path] == "AUTHORIZED")
    flows = {path: p["flow"] for path, p in payments.items()}
    assert flows["tokenization"] == flows["tokenization-guard"] == "TOKENIZATION"
    assert flows["pay-and-tokenize"] == "AUTHORIZATION_AND_TOKENIZATION"
    assert {f for path, f in flows.items() if "tokeniz" not in path} == {"AUTHORIZATION"}


def test_demo_records_each_journey_as_klarna_runs_it(demo_db: tuple[str, dict[str, Any]]) -> None:
    db, result = demo_db
    ids = {path: UUID(p["payment_id"]) for path, p in by_path(result).items()}
    with AuditLog.open(db) as log:
        trails = {path: log.trail(pid) for path, pid in ids.items()}
        payment = {path: log.get(pid) for path, pid in ids.items()}

    assert {path: [e.event for e in trail] for path, trail in trails.items()} == TRAILS
    # Tokens are held sealed where the flow leaves them.
    for path in ("tokenization", "pay-and-tokenize", "tokenization-guard"):
        assert payment[path].customer_token is not None, path
    assert payment["express"].session_token is not None  # the token obtained earlier
    assert payment["token-charge"].is_token_charge
    assert trails["token-charge"][1].details["call"] == "INITIAL"
    # Canceled at Klarna first; the lost answer settled by Klarna's notification.
    assert trails["canceled"][-1].details["at_klarna"] is True
    assert trails["lost-answer"][-1].cause_kind == "notification"
    assert trails["step-up"][-1].cause_kind == "command"
    # Klarna's own expires_at (20 minutes), not the 3-hour default, expired the request.
    expiring = payment["expired-at-klarna"]
    assert expiring.request_expires_at - expiring.created_on == timedelta(minutes=20)
    assert expiring.expiry_reason == "REQUEST_LIFETIME"
    assert trails["expired-at-klarna"][-1].cause == "expire_overdue"
    # The window guard: the late authorize recorded the expiry, no call.
    window = payment["window-elapsed"]
    assert window.expiry_reason == "AUTHORIZATION_WINDOW"
    assert window.completed_at is not None
    assert trails["window-elapsed"][-1].recorded_at > window.completed_at + timedelta(minutes=60)
    assert result["audit_trail"] == [e.as_dict() for e in trails["step-up"]]


def test_demo_json_says_what_happened_and_what_to_do_next(
    demo_db: tuple[str, dict[str, Any]],
) -> None:
    db, result = demo_db
    payments = by_path(result)

    for path, p in payments.items():
        assert p["happened"][0] == f"create ({p['flow']}) -> CREATED", path
        assert p["happened"][-1].endswith(f" -> {SCENARIOS[path]}"), path
        assert p["next_steps"] == [
            f"klarna-flow audit {p['payment_id']} --db {db}",
            f"klarna-flow verify --payment {p['payment_id']} --db {db}",
        ]
    assert result["next_steps"] == [f"klarna-flow verify --db {db}"]
    step_up = payments["step-up"]["happened"]
    assert "STEP_UP_REQUIRED, customer sent to https://pay.test.klarna.com/" in step_up[1]
    assert step_up[2].endswith("-> COMPLETED")
    assert payments["step-up"]["payment_transaction_id"] in step_up[3]
    assert "PENDING" in payments["lost-answer"]["happened"][3]
    assert payments["lost-answer"]["happened"][3].endswith("-> AUTHORIZING")
    assert "(WrongFlow)" in payments["tokenization-guard"]["happened"][-1]
    assert "(AuthorizationWindowElapsed)" in payments["window-elapsed"]["happened"][-1]
    # The next steps are commands that run.
    audit_args = shlex.split(payments["canceled"]["next_steps"][0])[1:]
    assert [e["event"] for e in as_json(*audit_args)] == TRAILS["canceled"]
    for command in (payments["canceled"]["next_steps"][1], result["next_steps"][0]):
        assert as_json(*shlex.split(command)[1:])["ok"] is True


def test_demo_shows_and_stores_no_secret(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The API key and every token the fake handed out: in no output, log or stored byte."""
    db = tmp_path / "demo.sqlite"
    fake = FakeKlarna(api_key="sk-demo-a1b2c3d4e5f6", clock=ManualClock(datetime.now(UTC)))
    with caplog.at_level(logging.DEBUG):
        result = run_demo(db, fake=fake)
    table = io.StringIO()
    print_demo(Console(file=table, width=200), result)
    shown = json.dumps(demo_view(result)) + table.getvalue() + caplog.text

    sent = [r.headers for r in fake.requests]
    sessions = {
        h["Klarna-Network-Session-Token"] for h in sent if "Klarna-Network-Session-Token" in h
    } | set(_session_tokens_handed_out(fake, db, demo_view(result)))
    customers = {t.customer_token for t in fake.customer_tokens}
    secrets = {fake.api_key, *sessions, *customers}
    assert len(sessions) == 5  # four completed requests, one token from earlier (Express)
    assert len(customers) == 3  # two tokenizations and a pay-and-tokenize
    assert any(fake.api_key in h["Authorization"] for h in sent)
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    for secret in secrets:
        assert secret not in shown
        assert secret.encode() not in stored
    assert CLEAR_TOKEN.search(shown) is None
    assert {p["path"]: p["state"] for p in demo_view(result)["payments"]} == SCENARIOS


def _session_tokens_handed_out(fake: FakeKlarna, db: Path, result: dict[str, Any]) -> Iterator[str]:
    """The session tokens of the demo's completed payment requests, as Klarna holds them."""
    stored = stored_payments(str(db), [p["payment_id"] for p in result["payments"]])
    for payment in stored.values():
        if payment.payment_request_id is not None:
            context = fake.payment_request(payment.payment_request_id)["state_context"]
            if "klarna_network_session_token" in context:
                yield context["klarna_network_session_token"]


def test_demo_shows_a_path_in_square_brackets_as_it_is(tmp_path: Path) -> None:
    folder = tmp_path / "[bold]runs"
    folder.mkdir()
    db = str(folder / "demo.sqlite")

    out = ok("demo", "--db", db).stdout

    assert f" on {db}: 12 scenarios" in out
    assert f"next: klarna-flow verify --db {shlex.quote(db)}" in out


def test_the_demo_needs_a_fake_with_a_manual_clock(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="ManualClock"):
        run_demo(tmp_path / "demo.sqlite", fake=FakeKlarna())
    assert list(tmp_path.iterdir()) == []


def test_demo_on_postgres_needs_a_key_from_the_environment() -> None:
    result = run("demo", "--db", "postgresql://u:secret-pw@127.0.0.1:1/none")
    assert_one_line_error(result, 2, "KLARNA_FLOW_CIPHER_KEY")
    assert "secret-pw" not in result.output


# -- audit and history --------------------------------------------------------------------


def test_audit_shows_the_timeline(demo_db: tuple[str, dict[str, Any]]) -> None:
    db, result = demo_db
    payment_id = by_path(result)["step-up"]["payment_id"]

    table = ok("audit", payment_id, "--db", db).stdout
    entries = as_json("audit", payment_id, "--db", db)

    assert "PaymentCreated" in table
    assert "AuthorizationApproved" in table
    assert [e["event"] for e in entries] == TRAILS["step-up"]
    assert entries[3]["cause_kind"] == "notification"
    assert entries[3]["cause"] in table
    assert entries[5]["correlation_id"] in table
    assert entries[3]["details"]["session_token"].startswith("**** (key k-")
    assert UNMASKED_TOKEN.search(table) is None


def test_audit_of_an_unknown_payment(demo_db: tuple[str, dict[str, Any]]) -> None:
    db, _ = demo_db
    missing = str(uuid4())
    assert_one_line_error(run("audit", missing, "--db", db), 1, missing, "not found")


def test_a_malformed_payment_id_is_a_usage_error(demo_db: tuple[str, dict[str, Any]]) -> None:
    db, _ = demo_db
    for command in ("audit", "history"):
        assert run(command, "not-a-uuid", "--db", db, "--version", "1").exit_code == 2


def test_a_missing_database_is_a_usage_error(tmp_path: Path) -> None:
    db = tmp_path / "missing.sqlite"
    for args in (["audit", str(uuid4())], ["export"], ["verify"], ["replay"], ["expire"]):
        assert_one_line_error(run(*args, "--db", str(db)), 2, "no event store", str(db))
    assert not db.exists()


def test_a_database_that_is_not_one_is_a_failure(tmp_path: Path) -> None:
    db = tmp_path / "notes.sqlite"
    db.write_text("this is not a database\n" * 100)
    key_file = tmp_path / "key"
    key_file.write_text(generate_key())
    for args in (["verify"], ["expire", "--key-file", str(key_file)]):
        assert_one_line_error(run(*args, "--db", str(db)), 1, "not a database")


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of the script's entry point."""
    with pytest.raises(SystemExit) as ended:
        main(list(args))
    out, err = capsys.readouterr()
    return int(ended.value.code or 0), out, err


@pytest.fixture
def no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NO_SECRETS_ENV:
        monkeypatch.delenv(name, raising=False)


def _store_commands(key_file: Path) -> list[list[str]]:
    payment = str(uuid4())
    return [
        ["audit", payment],
        ["history", payment, "--version", "1"],
        ["export"],
        ["export", "--out", str(key_file.parent / "out.jsonl")],
        ["verify"],
        ["replay"],
        ["expire", "--key-file", str(key_file)],
        ["reconcile", "--key-file", str(key_file), "--api-key", "k"],
    ]


@pytest.mark.usefixtures("no_secrets")
@pytest.mark.parametrize("kind", ["foreign", "empty"])
def test_a_file_without_a_klarna_flow_store_is_refused_and_left_alone(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "crm"
    folder.mkdir()
    db = folder / "crm.db"
    db.touch()
    if kind == "foreign":
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE customers (id INTEGER)")
    before = db.read_bytes()
    key_file = tmp_path / "cipher.key"
    key_file.write_text(generate_key())

    for args in _store_commands(key_file):
        code, out, err = run_main(capsys, *args, "--db", str(db))
        assert (code, out, err) == (2, "", f"klarna-flow: error: {db} holds no klarna_flow store\n")

    assert db.read_bytes() == before
    assert [p.name for p in folder.iterdir()] == ["crm.db"]  # no journal, no key, no export


@pytest.mark.usefixtures("no_secrets")
def test_the_demo_writes_no_store_into_another_application_s_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "crm.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    before = db.read_bytes()

    code, out, err = run_main(capsys, "demo", "--db", str(db))

    assert (code, out) == (2, "")
    assert (
        err == f"klarna-flow: error: {db} holds no klarna_flow store; the demo writes none there\n"
    )
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crm.db"]  # no key file either


@pytest.mark.usefixtures("no_secrets")
def test_read_only_commands_write_nothing_to_a_store(
    demo_db: tuple[str, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, result = demo_db
    db = tmp_path / "copy.sqlite"
    shutil.copy(source, db)
    with contextlib.closing(sqlite3.connect(db)) as conn:  # as a rebuild cut short leaves it
        conn.execute("DROP INDEX payments_payment_index_state")
    before = db.read_bytes()
    payment_id = by_path(result)["step-up"]["payment_id"]

    for args in (
        ["audit", payment_id],
        ["history", payment_id, "--version", "2"],
        ["export"],
        ["verify"],
    ):
        code, out, _ = run_main(capsys, *args, "--db", str(db))
        assert code == 0
        assert out

    assert db.read_bytes() == before


def test_a_store_not_in_wal_mode_is_not_opened_read_only(
    demo_db: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    source, _ = demo_db
    db = tmp_path / "copy.sqlite"
    shutil.copy(source, db)
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")

    assert_one_line_error(run("verify", "--db", str(db)), 1, "read-only", "not WAL")
    ok("replay", "--db", str(db))  # a writer sets WAL again
    ok("verify", "--db", str(db))


def test_history_by_version_and_by_time(demo_db: tuple[str, dict[str, Any]]) -> None:
    db, result = demo_db
    payment_id = by_path(result)["window-elapsed"]["payment_id"]
    trail = as_json("audit", payment_id, "--db", db)
    created = datetime.fromisoformat(trail[0]["recorded_at"])
    expired = datetime.fromisoformat(trail[-1]["recorded_at"])
    assert expired - created > timedelta(minutes=60)

    first = as_json("history", payment_id, "--version", "1", "--db", db)
    middle = as_json(
        "history", payment_id, "--at", (created + timedelta(minutes=30)).isoformat(), "--db", db
    )
    last = as_json("history", payment_id, "--at", expired.isoformat(), "--db", db)
    table = ok("history", payment_id, "--version", "4", "--db", db).stdout

    assert (first["state"], first["version"]) == ("CREATED", 1)
    assert (middle["state"], middle["version"]) == ("COMPLETED", 4)
    assert middle["session_token"].startswith("**** (key k-")
    assert middle["authorize_by"] is not None
    assert (last["state"], last["expiry_reason"]) == ("EXPIRED", "AUTHORIZATION_WINDOW")
    assert "COMPLETED" in table
    assert UNMASKED_TOKEN.search(table) is None


def test_history_at_a_utc_z_time(demo_db: tuple[str, dict[str, Any]]) -> None:
    db, result = demo_db
    payment_id = by_path(result)["step-up"]["payment_id"]
    now = datetime.now(UTC) + timedelta(days=1)
    view = as_json("history", payment_id, "--at", now.strftime("%Y-%m-%dT%H:%M:%SZ"), "--db", db)
    assert view["state"] == "AUTHORIZED"


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--version", "1", "--at", "2025-01-01T12:00:00Z"],
        ["--at", "yesterday"],
        ["--version", "0"],
    ],
)
def test_history_usage_errors(demo_db: tuple[str, dict[str, Any]], args: list[str]) -> None:
    db, result = demo_db
    payment_id = by_path(result)["step-up"]["payment_id"]
    assert run("history", payment_id, *args, "--db", db).exit_code == 2


def test_history_refusals(demo_db: tuple[str, dict[str, Any]]) -> None:
    db, result = demo_db
    payment_id = by_path(result)["step-up"]["payment_id"]
    assert_one_line_error(run("history", payment_id, "--version", "9", "--db", db), 2, "6 events")
    naive = run("history", payment_id, "--at", "2025-01-01T12:00:00", "--db", db)
    assert_one_line_error(naive, 2, "timezone")
    before = run("history", payment_id, "--at", "2000-01-01T00:00:00+00:00", "--db", db)
    assert_one_line_error(before, 1, "not found")


# -- export -------------------------------------------------------------------------------


def test_export_writes_json_lines_to_stdout(demo_db: tuple[str, dict[str, Any]]) -> None:
    db, result = demo_db

    out = ok("export", "--db", db).stdout

    lines = [json.loads(line) for line in out.splitlines()]
    assert {line["payment_id"] for line in lines} == {p["payment_id"] for p in result["payments"]}
    assert len(lines) == as_json("verify", "--db", db)["events_checked"]
    assert UNMASKED_TOKEN.search(out) is None
    assert "**** (key k-" in out


def test_export_one_payment_to_a_file(demo_db: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    db, result = demo_db
    payment_id = by_path(result)["step-up"]["payment_id"]
    target = tmp_path / "trail.jsonl"

    message = ok("export", "--payment", payment_id, "--out", str(target), "--db", db).stdout

    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert lines == result["audit_trail"]
    assert message == f"6 audit entries written to {target}\n"  # and no progress bar when piped


def test_export_to_an_unwritable_place_is_a_failure(
    demo_db: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    db, _ = demo_db
    target = tmp_path / "no" / "such" / "folder.jsonl"
    assert_one_line_error(run("export", "--out", str(target), "--db", db), 1)


# -- verify and replay -------------------------------------------------------------------


def test_verify_a_clean_log(demo_db: tuple[str, dict[str, Any]]) -> None:
    db, result = demo_db
    report = as_json("verify", "--db", db)
    assert report["ok"] is True
    assert report["findings"] == []
    assert report["payments_checked"] == len(SCENARIOS)
    assert "OK:" in ok("verify", "--db", db).stdout
    one = as_json("verify", "--payment", by_path(result)["declined"]["payment_id"], "--db", db)
    assert (one["ok"], one["events_checked"]) == (True, len(TRAILS["declined"]))


def test_verify_names_the_tampered_record(
    demo_db: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    source, result = demo_db
    db = tmp_path / "copy.sqlite"
    shutil.copy(source, db)
    target = UUID(by_path(result)["canceled"]["payment_id"])
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE stored_events SET state = CAST(replace(CAST(state AS TEXT), "
            "'CANCELED', 'AUTHORIZED') AS BLOB) WHERE originator_id = ? AND originator_version = 1",
            (target.hex,),
        )
        conn.execute(
            "UPDATE stored_events SET topic = topic || 'x' "
            "WHERE originator_id = ? AND originator_version = 2",
            (target.hex,),
        )

    result_ = run("verify", "--db", str(db))
    report = json.loads(run("verify", "--db", str(db), "--json").stdout)

    assert result_.exit_code == 1
    assert f"payment {target} version 2: altered" in result_.stdout
    assert report["ok"] is False
    assert report["findings"][0] == {
        "payment_id": str(target),
        "version": 2,
        "problem": "altered",
        "detail": report["findings"][0]["detail"],
    }
    assert run("verify", "--db", str(db), "--json").exit_code == 1
    other = by_path(result)["step-up"]["payment_id"]
    assert run("verify", "--payment", other, "--db", str(db)).exit_code == 0


def test_replay_rebuilds_and_counts(demo_db: tuple[str, dict[str, Any]]) -> None:
    db, _ = demo_db
    table = ok("replay", "--db", db).stdout
    replayed = as_json("replay", "--db", db)

    assert table.startswith("replayed ")
    assert replayed["counts"] == {
        "AUTHORIZED": 5,
        "DECLINED": 2,
        "COMPLETED": 2,
        "CANCELED": 1,
        "EXPIRED": 2,
    }
    assert replayed["events_replayed"] == as_json("verify", "--db", db)["events_checked"]


# -- expire and reconcile (these need the key) --------------------------------------------


@pytest.fixture
def keyed_db(tmp_path: Path) -> tuple[Path, Path, str]:
    """An SQLite file, a key file, and the key (not in the environment)."""
    key = generate_key()
    key_file = tmp_path / "cipher.key"
    key_file.write_text(key + "\n")
    return tmp_path / "payments.sqlite", key_file, key


def test_expire_needs_the_key(keyed_db: tuple[Path, Path, str]) -> None:
    db, key_file, key = keyed_db
    Payments.sqlite(db, cipher=TokenCipher(key)).close()

    assert_one_line_error(run("expire", "--db", str(db)), 2, "KLARNA_FLOW_CIPHER_KEY")
    assert (
        ok("expire", "--db", str(db), "--key-file", str(key_file)).stdout == "nothing to expire\n"
    )
    bad = key_file.with_suffix(".bad")
    bad.write_text("not a key")
    assert_one_line_error(run("expire", "--db", str(db), "--key-file", str(bad)), 2, str(bad))
    shutil.copy(key_file, f"{db}.key")  # the demo's convention: a key beside the file
    assert as_json("expire", "--db", str(db)) == []


def test_expire_expires_what_is_overdue(keyed_db: tuple[Path, Path, str]) -> None:
    db, key_file, key = keyed_db
    clock = ManualClock(datetime.now(UTC) - timedelta(hours=4))
    app_ = Payments.sqlite(db, cipher=TokenCipher(key), clock=clock)
    overdue = app_.create(flow=Flow.AUTHORIZATION, amount=100, currency="EUR", reference="old")
    clock.advance(timedelta(hours=3, minutes=30))
    fresh = app_.create(flow=Flow.AUTHORIZATION, amount=100, currency="EUR", reference="new")
    app_.close()

    expired = as_json("expire", "--db", str(db), "--key-file", str(key_file))

    assert expired == [str(overdue)]
    with Payments.sqlite(db, cipher=TokenCipher(key)) as after:
        assert after.get(overdue).state is PaymentState.EXPIRED
        assert after.get(fresh).state is PaymentState.CREATED


def test_reconcile_resolves_a_pending_authorization(keyed_db: tuple[Path, Path, str]) -> None:
    db, key_file, key = keyed_db
    clock = ManualClock(datetime.now(UTC) - timedelta(minutes=30))
    fake = FakeKlarna(clock=clock)
    one_attempt = RetryPolicy(max_attempts=1)
    with KlarnaClient(fake.api_key, transport=httpx.MockTransport(fake), retry=one_attempt) as c:
        app_ = Payments.sqlite(
            db,
            cipher=TokenCipher(key),
            clock=clock,
            klarna=c,
            partner_account_id=fake.partner_account_id,
        )
        request_id = fake.create_payment_request(amount=500, currency="EUR")
        payment_id = app_.create(
            flow=Flow.AUTHORIZATION,
            amount=500,
            currency="EUR",
            reference="lost-answer",
            payment_request_id=request_id,
        )
        done = fake.complete_payment_request(request_id)
        app_.complete(payment_id, session_token=done.session_token)
        fake.timeout_next(after_processing=True)
        assert app_.authorize(payment_id).result.value == "PENDING"
        app_.close()

    with serve_fake(fake) as server:
        args = ["reconcile", "--db", str(db), "--key-file", str(key_file)]
        args += ["--base-url", server.base_url, "--older-than-minutes", "1"]
        missing_key = run(*args)
        outcomes = as_json(*args, "--api-key", fake.api_key)

    assert_one_line_error(missing_key, 2, "API key")
    assert [(o["payment_id"], o["result"]) for o in outcomes] == [(str(payment_id), "APPROVED")]
    assert (
        outcomes[0]["payment_transaction_id"]
        == fake.transactions_for("lost-answer")[0].payment_transaction_id
    )
    assert len(fake.transactions_for("lost-answer")) == 1  # the same transaction, not a second


def test_reconcile_with_nothing_pending(keyed_db: tuple[Path, Path, str]) -> None:
    db, key_file, key = keyed_db
    Payments.sqlite(db, cipher=TokenCipher(key)).close()
    out = ok("reconcile", "--db", str(db), "--key-file", str(key_file), "--api-key", "k").stdout
    assert out == "nothing to reconcile\n"


# -- diagram and fake-server -------------------------------------------------------------


def test_diagram() -> None:
    assert ok("diagram").stdout.startswith("stateDiagram-v2\n")
    assert ok("diagram", "--format", "dot").stdout.startswith("digraph lifecycle {")
    assert run("diagram", "--format", "png").exit_code == 2


def test_fake_server_listens_on_loopback_only() -> None:
    assert_one_line_error(run("fake-server", "--host", "0.0.0.0"), 2, "loopback")  # noqa: S104


def test_fake_server_serves_until_interrupted() -> None:
    command = [sys.executable, "-m", "klarna_flow.cli", "fake-server", "--port", "0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            base_url = re.search(r"http://127\.0\.0\.1:\d+", line)
            assert base_url, line
            account = "krn:partner:global:account:test-partner"
            answer = httpx.post(f"{base_url[0]}/v2/accounts/{account}/payment/authorize", json={})
            assert answer.status_code == 401  # it is Klarna's API, wanting the API key
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=10) == 0
        finally:
            if process.poll() is None:
                process.kill()


def test_the_entry_point_runs_as_a_module() -> None:
    assert callable(main)
    result = subprocess.run(
        [sys.executable, "-m", "klarna_flow.cli", "diagram", "--format", "dot"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "KLARNA_FLOW_CIPHER_KEY": ""},
    )
    assert result.returncode == 0
    assert result.stdout.startswith("digraph")


def test_a_closed_pipe_ends_export_quietly(tmp_path: Path) -> None:
    """``klarna-flow export | head``: the reader goes away after one line."""
    db = tmp_path / "many.sqlite"
    payments = Payments.sqlite(db, cipher=TokenCipher.ephemeral())
    for n in range(600):  # ~250 kB of JSON Lines: more than any pipe buffers
        payments.create(flow=Flow.AUTHORIZATION, amount=100, currency="EUR", reference=f"r{n}")
    payments.close()
    command = [sys.executable, "-m", "klarna_flow.cli", "export", "--db", str(db)]

    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_subprocess_env()
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        first = process.stdout.readline()
        process.stdout.close()  # as head does once it has its lines
        err = process.stderr.read()
        code = process.wait(timeout=60)

    assert json.loads(first)["event"] == "PaymentCreated"
    assert err == b""  # no "error:", no traceback, no "Exception ignored"
    assert code == 141  # 128 + SIGPIPE, as a shell reports a Unix tool ended by a closed pipe


def _subprocess_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in NO_SECRETS_ENV}


# -- progress ---------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    with progress_bar("replaying") as update:
        assert update is None  # pytest's output is not a terminal

    err = _Terminal()
    monkeypatch.setattr(sys, "stdout", _Terminal())
    monkeypatch.setattr(sys, "stderr", err)
    with progress_bar("replaying") as update:
        assert update is not None
        update(50, 100)
        update(100, 100)
    assert "replaying" in err.getvalue()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["audit", "not-a-uuid"], "Invalid value for 'payment_id'"),
        (["history"], "Missing argument 'payment_id'"),
        (["no-such-command"], "No such command"),
    ],
)
def test_the_script_reports_a_usage_error_on_one_line_with_exit_2(
    args: list[str], message: str, tmp_path: Path
) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "klarna_flow.cli", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith("klarna-flow: usage error: ")
    assert message in lines[0]
    assert "Traceback" not in completed.stderr
