"""``klarna-flow payments`` and ``klarna-flow show`` on a store with payments in every situation.

The store is recorded with a clock three days in the past, so the commands
(which read the system clock) see payments of many ages: one unresolved, one
pending, one waiting for the customer past its request's lifetime, one
authorized, one completed with its window open, one with a payment request
open. Both commands run with no key anywhere, read the store without
changing a byte of it, and never show a token.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from typer.testing import CliRunner, Result

from klarna_flow import Flow, Payments, PaymentState, TokenCipher
from klarna_flow.cli import app
from klarna_flow.klarna import KlarnaClient, RetryPolicy
from klarna_flow.testing import FakeKlarna, ManualClock

from .test_cli import NO_SECRETS_ENV, UNMASKED_TOKEN, assert_one_line_error

REQUEST_ID = "krn:payment:eu1:request:waiting-1"


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=NO_SECRETS_ENV)


def listed(db: str, *args: str) -> list[dict[str, Any]]:
    result = run("payments", "--db", db, "--json", *args)
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def refs(rows: list[dict[str, Any]]) -> list[str]:
    return [r["reference"] for r in rows]


def _advance_to(clock: ManualClock, instant: datetime) -> None:
    clock.advance(instant - clock.now())


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The store, its payments by reference, and the times they were created."""
    db = tmp_path_factory.mktemp("listing") / "p.sqlite"
    now = datetime.now(UTC)
    clock = ManualClock(now - timedelta(days=3))
    fake = FakeKlarna(clock=clock)
    client = KlarnaClient(
        fake.api_key, transport=httpx.MockTransport(fake), retry=RetryPolicy(max_attempts=1)
    )
    ids: dict[str, UUID] = {}
    with (
        client,
        Payments.sqlite(
            db,
            clock=clock,
            cipher=TokenCipher.ephemeral(),
            klarna=client,
            partner_account_id=fake.partner_account_id,
        ) as payments,
    ):

        def completed(reference: str) -> UUID:
            payment_id = payments.create(
                flow=Flow.AUTHORIZATION, amount=1000, currency="EUR", reference=reference
            )
            token = fake.issue_session_token(amount=1000, currency="EUR")
            payments.complete(payment_id, session_token=token)
            ids[reference] = payment_id
            return payment_id

        unresolved = completed("r-unresolved")  # 3 days ago
        fake.timeout_next(after_processing=True)
        payments.authorize(unresolved)
        clock.advance(timedelta(hours=25))  # past Klarna's key window
        fake.fail_next(401)
        payments.reconcile()
        ids["r-old"] = payments.create(  # 47 hours ago; its request ran out long since
            flow=Flow.AUTHORIZATION, amount=500, currency="SEK", reference="r-old"
        )
        _advance_to(clock, now - timedelta(hours=2))
        pending = completed("r-pending")
        fake.timeout_next(after_processing=True)
        payments.authorize(pending)
        _advance_to(clock, now - timedelta(minutes=30))
        payments.authorize(completed("r-authorized"))
        _advance_to(clock, now - timedelta(minutes=2))
        completed("r-completed")
        ids["r-waiting"] = payments.create(
            flow=Flow.AUTHORIZATION,
            amount=2500,
            currency="EUR",
            reference="r-waiting",
            payment_request_id=REQUEST_ID,
        )
        transaction_id = payments.get(ids["r-authorized"]).payment_transaction_id
    return {"db": str(db), "ids": ids, "transaction_id": transaction_id}


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


# -- payments ---------------------------------------------------------------------------


def test_every_payment_oldest_first_with_typed_values(store: dict[str, Any]) -> None:
    rows = listed(store["db"])

    assert refs(rows)[:4] == ["r-unresolved", "r-old", "r-pending", "r-authorized"]
    assert sorted(refs(rows)[4:]) == ["r-completed", "r-waiting"]  # created the same instant
    authorized = rows[3]
    assert authorized["payment_id"] == str(store["ids"]["r-authorized"])
    assert (authorized["state"], authorized["amount"], authorized["currency"]) == (
        "AUTHORIZED",
        1000,
        "EUR",
    )
    assert authorized["payment_transaction_id"] == store["transaction_id"]
    created = datetime.fromisoformat(authorized["created_at"])
    assert created.utcoffset() == timedelta(0)
    assert timedelta(minutes=29) < datetime.now(UTC) - created < timedelta(minutes=40)
    assert [r["unresolved"] for r in rows] == [True] + [False] * 5


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--state", "AUTHORIZING"], ["r-unresolved", "r-pending"]),
        (
            ["--state", "authorizing", "--state", "CREATED"],
            ["r-unresolved", "r-old", "r-pending", "r-waiting"],
        ),
        (["--unresolved"], ["r-unresolved"]),
        (["--older-than", "1d"], ["r-unresolved", "r-old"]),
        (["--newer-than", "1h"], ["r-authorized", "r-completed", "r-waiting"]),
        (["--older-than", "1h", "--newer-than", "3h"], ["r-pending"]),
        (["--reference", "r-completed"], ["r-completed"]),
        (["--klarna-id", REQUEST_ID], ["r-waiting"]),
        (["--reference", "nothing-like-it"], []),
    ],
)
def test_filters(store: dict[str, Any], args: list[str], expected: list[str]) -> None:
    assert sorted(refs(listed(store["db"], *args))) == sorted(expected)


def test_a_transaction_id_finds_its_payment(store: dict[str, Any]) -> None:
    assert refs(listed(store["db"], "--klarna-id", store["transaction_id"])) == ["r-authorized"]


def test_pages_follow_one_another_in_a_stable_order(store: dict[str, Any]) -> None:
    db = store["db"]
    everything = [r["payment_id"] for r in listed(db)]
    first = [r["payment_id"] for r in listed(db, "--limit", "2")]
    second = [r["payment_id"] for r in listed(db, "--limit", "2", "--after", first[-1])]
    by_offset = [r["payment_id"] for r in listed(db, "--limit", "2", "--offset", "2")]
    rest = [r["payment_id"] for r in listed(db, "--after", second[-1])]

    assert first + second + rest == everything
    assert by_offset == second


def test_a_table_says_how_to_get_the_next_page(store: dict[str, Any]) -> None:
    result = run("payments", "--db", store["db"], "--limit", "2")
    assert result.exit_code == 0, result.output
    assert "r-unresolved" in result.stdout
    assert "(unresolved)" in result.stdout
    next_id = store["ids"]["r-old"]
    assert f"more: --after {next_id}" in result.stdout


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--older-than", "5 parsecs"], 2, "not a duration"),
        (["--older-than", "5"], 2, "not a duration"),
        (["--after", "not-a-uuid"], 2, "not a payment id"),
        (["--after", str(uuid4())], 1, "not found"),
        (["--after", "00000000-0000-0000-0000-000000000000", "--offset", "1"], 2, "not both"),
    ],
)
def test_bad_arguments_are_one_line(
    store: dict[str, Any], args: list[str], code: int, needle: str
) -> None:
    assert_one_line_error(run("payments", "--db", store["db"], *args), code, needle)


def test_an_unknown_state_is_a_usage_error(store: dict[str, Any]) -> None:
    result = run("payments", "--db", store["db"], "--state", "PAID")
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_listing_and_showing_change_nothing(store: dict[str, Any]) -> None:
    folder = Path(store["db"]).parent
    before = _digests(folder)
    listed(store["db"], "--unresolved")
    assert run("show", str(store["ids"]["r-pending"]), "--db", store["db"]).exit_code == 0
    assert _digests(folder) == before


def test_a_missing_or_foreign_store_is_refused_and_left_alone(tmp_path: Path) -> None:
    foreign = tmp_path / "crm.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    content = foreign.read_bytes()

    assert_one_line_error(run("payments", "--db", str(foreign)), 2, "holds no klarna_flow store")
    assert_one_line_error(run("show", str(uuid4()), "--db", str(foreign)), 2, "no klarna_flow")
    assert_one_line_error(run("payments", "--db", str(tmp_path / "none.db")), 2, "no event store")
    assert foreign.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crm.db"]


# -- show ---------------------------------------------------------------------------------


def shown(store: dict[str, Any], reference: str) -> dict[str, Any]:
    result = run("show", str(store["ids"][reference]), "--db", store["db"], "--json")
    assert result.exit_code == 0, result.output
    view: dict[str, Any] = json.loads(result.stdout)
    return view


@pytest.mark.parametrize(
    ("reference", "action", "text"),
    [
        ("r-waiting", "WAIT_FOR_CUSTOMER", "waiting for the customer until"),
        ("r-completed", "AUTHORIZE", "authorize before"),
        ("r-pending", "RECONCILE", "reconcile: authorization pending"),
        ("r-unresolved", "RESOLVE", "unresolved: resolve with evidence"),
        ("r-old", "EXPIRE", "expire: the payment request ran out"),
        ("r-authorized", "NONE", "final: AUTHORIZED"),
    ],
)
def test_show_says_what_to_do_next(
    store: dict[str, Any], reference: str, action: str, text: str
) -> None:
    step = shown(store, reference)["next_step"]
    assert step["action"] == action
    assert text in step["text"]


def test_show_gives_the_deadline_to_act_by(store: dict[str, Any]) -> None:
    completed = shown(store, "r-completed")
    assert completed["next_step"]["until"] == completed["authorize_by"]
    deadline = datetime.fromisoformat(completed["authorize_by"])
    assert timedelta(minutes=55) < deadline - datetime.now(UTC) < timedelta(minutes=59)
    waiting = shown(store, "r-waiting")
    assert waiting["next_step"]["until"] == waiting["request_expires_at"]
    assert waiting["payment_request_id"] == REQUEST_ID


def test_show_gives_the_payment_and_its_klarna_ids(store: dict[str, Any]) -> None:
    view = shown(store, "r-authorized")
    assert view["state"] == PaymentState.AUTHORIZED.value
    assert (view["flow"], view["amount"], view["currency"]) == ("AUTHORIZATION", 1000, "EUR")
    assert view["payment_transaction_id"] == store["transaction_id"]
    assert view["last_result"] == "APPROVED"
    assert shown(store, "r-unresolved")["unresolved_reason"]


def test_show_never_shows_a_token(store: dict[str, Any]) -> None:
    for reference in store["ids"]:
        for extra in ([], ["--json"]):
            result = run("show", str(store["ids"][reference]), "--db", store["db"], *extra)
            assert result.exit_code == 0, result.output
            assert not UNMASKED_TOKEN.search(result.stdout)
            assert "session_token" not in result.stdout
            assert "customer_token" not in result.stdout


def test_show_as_a_table(store: dict[str, Any]) -> None:
    result = run("show", str(store["ids"]["r-completed"]), "--db", store["db"])
    assert result.exit_code == 0, result.output
    assert "next step" in result.stdout
    assert "authorize before" in result.stdout
    assert "r-completed" in result.stdout


def test_show_of_an_unknown_payment_is_one_line(store: dict[str, Any]) -> None:
    assert_one_line_error(run("show", str(uuid4()), "--db", store["db"]), 1, "not found")


def test_a_record_no_code_can_read_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    db = tmp_path / "p.sqlite"
    with Payments.sqlite(db, cipher=TokenCipher.ephemeral()) as payments:
        payment_id = payments.create(
            flow=Flow.AUTHORIZATION, amount=100, currency="EUR", reference="r-1"
        )
    with sqlite3.connect(db) as conn:  # as if written by a version whose event class is gone
        conn.execute("UPDATE stored_events SET topic = 'gone.module:Payment.PaymentCreated'")

    result = run("show", str(payment_id), "--db", str(db))

    assert result.exit_code == 1
    assert result.stderr.startswith("klarna-flow: error: ")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
