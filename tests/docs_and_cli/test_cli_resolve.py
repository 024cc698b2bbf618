"""``klarna-flow unresolved`` and ``klarna-flow resolve``: the operator's rung of the ladder.

The store is recorded against a FakeKlarna with a clock two days in the past:
two authorizations whose answers were lost and whose re-sends, more than 24
hours later (past Klarna's idempotency window), were refused, so they wait
for evidence (one reached Klarna and made a transaction, one did not); one
authorization still pending; one authorized; and a tokenization whose
initial call was lost. Each test works on its own copy of that store, through
the real command, with no key in the environment.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import attrs
import httpx
import pytest
from typer.testing import CliRunner, Result

from klarna_flow import Flow, OutcomeResult, Payments, StepUpConfig, TokenCipher, generate_key
from klarna_flow.cli import app, main
from klarna_flow.cli.showing import resolve_command
from klarna_flow.klarna import KlarnaClient, RetryPolicy
from klarna_flow.testing import FakeKlarna, ManualClock

from .test_cli import NO_SECRETS_ENV, UNMASKED_TOKEN, assert_one_line_error

RETURN_URL = "https://shop.example/return"
EVIDENCE = "seen in the Klarna portal (ticket OPS-42)"


@attrs.frozen
class Built:
    folder: Path
    ids: dict[str, UUID]
    since: dict[str, datetime]
    request_id: str
    transaction_id: str
    secrets: tuple[str, ...]


@attrs.frozen
class Store:
    db: str
    key_file: str
    ids: dict[str, UUID]
    since: dict[str, datetime]
    request_id: str
    transaction_id: str
    secrets: tuple[str, ...]

    def id(self, reference: str) -> str:
        return str(self.ids[reference])


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=NO_SECRETS_ENV)


def ok(*args: str) -> Result:
    result = run(*args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def as_json(*args: str) -> Any:
    return json.loads(ok(*args, "--json").stdout)


def _record(folder: Path, key: str) -> Built:
    """Record the payments on ``folder/p.sqlite``."""
    clock = ManualClock(datetime.now(UTC) - timedelta(days=2))
    fake = FakeKlarna(clock=clock)
    client = KlarnaClient(
        fake.api_key, transport=httpx.MockTransport(fake), retry=RetryPolicy(max_attempts=1)
    )
    ids: dict[str, UUID] = {}
    since: dict[str, datetime] = {}
    secrets: list[str] = [fake.api_key]
    with (
        client,
        Payments.sqlite(
            folder / "p.sqlite",
            clock=clock,
            cipher=TokenCipher(key),
            klarna=client,
            partner_account_id=fake.partner_account_id,
            signing_keys=fake.signing_keys,
        ) as payments,
    ):

        def create(reference: str, flow: Flow, amount: int = 4200) -> UUID:
            ids[reference] = payments.create(
                flow=flow, amount=amount, currency="EUR", reference=reference
            )
            return ids[reference]

        def lost(payment_id: UUID, *, processed: bool) -> None:
            fake.timeout_next(after_processing=processed)
            since[str(payment_id)] = clock.now()
            assert payments.authorize(payment_id).result is OutcomeResult.PENDING

        # both tokens of a payment request completed in Klarna
        paid = create("r-lost", Flow.AUTHORIZATION_AND_TOKENIZATION)
        outcome = payments.initiate(paid, step_up=StepUpConfig(return_url=RETURN_URL))
        assert outcome.payment_request_id is not None
        done = fake.complete_payment_request(outcome.payment_request_id)
        payments.handle_notification(done.notification.body, done.notification.headers)
        secrets += [t for t in (done.session_token, done.customer_token) if t]
        lost(paid, processed=True)  # Klarna made the transaction; its answer was lost
        clock.advance(timedelta(minutes=1))

        nothing = create("r-nothing", Flow.AUTHORIZATION, amount=1500)
        token = fake.issue_session_token(amount=1500, currency="EUR")
        secrets.append(token)
        payments.complete(nothing, session_token=token)
        lost(nothing, processed=False)  # the call never reached Klarna

        clock.advance(timedelta(hours=25))  # past Klarna's 24-hour idempotency window
        fake.fail_next(401, times=2)
        assert {o.result for o in payments.reconcile()} == {OutcomeResult.UNRESOLVED}

        pending = create("r-pending", Flow.AUTHORIZATION)
        payments.complete(
            pending, session_token=fake.issue_session_token(amount=4200, currency="EUR")
        )
        lost(pending, processed=True)
        authorized = create("r-authorized", Flow.AUTHORIZATION)
        payments.complete(
            authorized, session_token=fake.issue_session_token(amount=4200, currency="EUR")
        )
        assert payments.authorize(authorized).result is OutcomeResult.APPROVED

        tokenization = create("r-token", Flow.TOKENIZATION)
        fake.drop_next()
        payments.initiate(tokenization, step_up=StepUpConfig(return_url=RETURN_URL))
        assert payments.get(tokenization).is_initial_call_pending

        assert [row.payment_id for row in payments.unresolved()] == [paid, nothing]
        request_id = payments.get(paid).payment_request_id
    assert request_id is not None
    [transaction] = fake.transactions_for("r-lost")
    return Built(folder, ids, since, request_id, transaction.payment_transaction_id, tuple(secrets))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Built, str]:
    key = generate_key()
    return _record(tmp_path_factory.mktemp("recorded"), key), key


@pytest.fixture
def store(built: tuple[Built, str], tmp_path: Path) -> Store:
    """A copy of the recorded store (and its key, in a file away from it) for one test."""
    recorded, key = built
    folder = tmp_path / "store"
    shutil.copytree(recorded.folder, folder)
    key_file = tmp_path / "cipher.key"
    key_file.write_text(key)
    return Store(
        str(folder / "p.sqlite"),
        str(key_file),
        recorded.ids,
        recorded.since,
        recorded.request_id,
        recorded.transaction_id,
        recorded.secrets,
    )


def events(store: Store) -> str:
    """Every stored event, as ``klarna-flow export`` writes them."""
    return ok("export", "--db", store.db).stdout


# -- unresolved --------------------------------------------------------------------------


def test_unresolved_lists_the_payments_waiting_for_evidence(store: Store) -> None:
    rows = as_json("unresolved", "--db", store.db)

    assert [r["reference"] for r in rows] == ["r-lost", "r-nothing"]  # longest waiting first
    lost, nothing = rows
    assert lost["payment_id"] == store.id("r-lost")
    assert (lost["amount"], lost["currency"], lost["flow"]) == (
        4200,
        "EUR",
        "AUTHORIZATION_AND_TOKENIZATION",
    )
    assert lost["payment_request_id"] == store.request_id
    assert (nothing["amount"], nothing["payment_request_id"]) == (1500, None)
    assert [r["authorization_attempts"] for r in rows] == [2, 1]  # r-lost's initial call counts
    for row in rows:
        since = datetime.fromisoformat(row["authorizing_since"])
        assert since.utcoffset() == timedelta(0)
        assert abs(since - store.since[row["payment_id"]]) < timedelta(seconds=1)
        assert "401" in row["reason"]
        assert row["next_step"] == (
            f"klarna-flow resolve {row['payment_id']} --db {store.db} --by WHO --evidence TEXT "
            "(--transaction-id KRN | --no-transaction)"
        )


def test_unresolved_as_a_table_ends_with_the_command_for_each(store: Store) -> None:
    out = ok("unresolved", "--db", store.db).stdout

    assert "2 unresolved payment(s)" in out
    for reference in ("r-lost", "r-nothing"):
        assert reference in out
        assert f"next: klarna-flow resolve {store.id(reference)} --db {store.db} --by WHO" in out
    assert "4200 EUR" in out
    assert store.request_id in out
    for other in ("r-pending", "r-authorized", "r-token"):
        assert other not in out
        assert store.id(other) not in out


def test_unresolved_needs_no_key_and_writes_nothing(store: Store) -> None:
    Path(store.key_file).unlink()  # no key anywhere: not in the environment, not beside the db
    db = Path(store.db)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:  # an index not caught up yet:
        conn.execute("DELETE FROM payments_payment_index")  # a writer would fill it again
        conn.execute("UPDATE payments_read_model_tracking SET position = 0")
    before = db.read_bytes()

    assert "r-nothing" in ok("unresolved", "--db", store.db).stdout
    assert len(as_json("unresolved", "--db", store.db)) == 2  # caught up in memory

    assert db.read_bytes() == before
    wal = db.with_name(db.name + "-wal")  # a WAL reader's companion file: it holds nothing
    assert not wal.exists() or wal.stat().st_size == 0


def test_with_nothing_unresolved_it_says_so(store: Store) -> None:
    ok(*_args(store, "r-lost"), "--evidence", EVIDENCE, "--no-transaction")
    ok(*_args(store, "r-nothing"), "--evidence", EVIDENCE, "--no-transaction")

    assert ok("unresolved", "--db", store.db).stdout == "no unresolved payments\n"
    assert as_json("unresolved", "--db", store.db) == []


def test_unresolved_on_a_missing_store_creates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "missing.sqlite"
    assert_one_line_error(run("unresolved", "--db", str(db)), 2, "no event store")
    assert list(tmp_path.iterdir()) == []


# -- resolve -------------------------------------------------------------------------------


def _args(store: Store, reference: str) -> list[str]:
    """``resolve`` of the payment (its reference, or an id) by ops.alice, with the key."""
    payment_id = store.id(reference) if reference in store.ids else reference
    return [
        "resolve", payment_id, "--db", store.db, "--key-file", store.key_file, "--by", "ops.alice",
    ]  # fmt: skip


def found_transaction(store: Store, reference: str, *extra: str) -> Result:
    """``resolve`` with the transaction Klarna made for r-lost."""
    args = ("--evidence", EVIDENCE, "--transaction-id", store.transaction_id, *extra)
    return ok(*_args(store, reference), *args)


def test_resolve_with_the_transaction_klarna_holds(store: Store) -> None:
    payment_id = store.id("r-lost")
    out = found_transaction(store, "r-lost").stdout

    assert f"on payment {payment_id}: AUTHORIZING -> AUTHORIZED" in out
    assert "recorded ResolvedWithTransaction" in out
    assert "cause: operator:ops.alice\n" in out
    assert f"transaction: {store.transaction_id}\n" in out
    assert f"evidence: {EVIDENCE}\n" in out
    assert out.endswith(f"next: klarna-flow audit {payment_id} --db {store.db}\n")

    last = as_json("audit", payment_id, "--db", store.db)[-1]
    assert (last["event"], last["state_before"], last["state_after"]) == (
        "ResolvedWithTransaction",
        "AUTHORIZING",
        "AUTHORIZED",
    )
    assert (last["cause_kind"], last["cause"]) == ("operator", "ops.alice")
    assert last["details"]["evidence"] == EVIDENCE
    assert last["details"]["payment_transaction_id"] == store.transaction_id
    table = ok("audit", payment_id, "--db", store.db).stdout
    assert "operator:ops.alice" in table
    assert "OPS-42" in table


def test_show_gives_the_resolved_payment_and_its_transaction(store: Store) -> None:
    payment_id = store.id("r-lost")
    found_transaction(store, "r-lost")

    view = as_json("show", payment_id, "--db", store.db)

    assert (view["state"], view["payment_transaction_id"]) == ("AUTHORIZED", store.transaction_id)
    assert view["resolution"] == f"transaction {store.transaction_id} (ops.alice)"
    assert view["transaction"]["payment_transaction_id"] == store.transaction_id
    assert view["transaction"]["captured_amount"] == 0
    assert view["next_step"]["action"] == "NONE"
    table = ok("show", payment_id, "--db", store.db).stdout
    assert "transaction" in table
    assert f"payment_transaction_id={store.transaction_id}" in table


def test_resolve_as_json_says_what_was_recorded(store: Store) -> None:
    payment_id = store.id("r-lost")
    view = json.loads(found_transaction(store, "r-lost", "--json").stdout)

    trail = as_json("audit", payment_id, "--db", store.db)
    assert view["payment_id"] == payment_id
    assert (view["event"], view["version"]) == ("ResolvedWithTransaction", len(trail))
    assert view["recorded_at"] == trail[-1]["recorded_at"]
    assert (view["state_before"], view["state"]) == ("AUTHORIZING", "AUTHORIZED")
    assert (view["cause"], view["evidence"]) == ("operator:ops.alice", EVIDENCE)
    assert view["payment_transaction_id"] == store.transaction_id
    assert view["next_step"] == f"klarna-flow audit {payment_id} --db {store.db}"
    assert view["payment_next_step"]["action"] == "NONE"


def test_resolve_with_no_transaction_goes_back_to_completed(store: Store) -> None:
    payment_id = store.id("r-nothing")
    out = ok(*_args(store, "r-nothing"), "--evidence", "nothing in the portal", "--no-transaction")

    assert f"on payment {payment_id}: AUTHORIZING -> COMPLETED" in out.stdout
    assert "transaction: none" in out.stdout
    assert "its next step: expire: the authorization window closed" in out.stdout
    last = as_json("audit", payment_id, "--db", store.db)[-1]
    assert (last["event"], last["state_after"]) == ("ResolvedWithoutTransaction", "COMPLETED")
    assert (last["cause_kind"], last["cause"]) == ("operator", "ops.alice")
    assert last["details"]["evidence"] == "nothing in the portal"
    view = as_json("show", payment_id, "--db", store.db)
    assert (view["state"], view["resolution"]) == ("COMPLETED", "no transaction (ops.alice)")


def test_a_lost_initial_call_resolved_without_transaction_goes_back_to_created(
    store: Store,
) -> None:
    view = as_json(*_args(store, "r-token"), "--evidence", "no request", "--no-transaction")

    assert (view["event"], view["state"]) == ("InitiationResolvedWithoutTransaction", "CREATED")
    assert view["payment_transaction_id"] is None


@pytest.mark.parametrize(
    ("reference", "args", "code", "needle"),
    [
        ("r-authorized", ["--no-transaction"], 1, "is AUTHORIZED: no authorize call is pending"),
        ("r-token", ["--transaction-id", "krn:payment:eu1:transaction:x"], 1, "pure tokenization"),
        (str(uuid4()), ["--no-transaction"], 1, "not found"),
        ("r-lost", ["--transaction-id", "not a krn"], 2, "transaction_id: "),
        ("r-lost", ["--no-transaction", "--by", "two words"], 2, "by: must name the operator"),
        ("r-lost", ["--no-transaction", "--evidence", " "], 2, "evidence: must be a non-empty"),
    ],
    ids=["not-authorizing", "tokenization", "unknown", "bad-krn", "bad-by", "blank-evidence"],
)
def test_a_refusal_is_one_line_and_records_nothing(
    store: Store, reference: str, args: list[str], code: int, needle: str
) -> None:
    before = events(store)
    evidence = [] if "--evidence" in args else ["--evidence", EVIDENCE]

    result = run(*_args(store, reference), *evidence, *args)

    assert_one_line_error(result, code, needle)
    assert result.stdout == ""
    assert events(store) == before


def test_a_payment_resolved_once_is_not_resolved_again(store: Store) -> None:
    ok(*_args(store, "r-nothing"), "--evidence", EVIDENCE, "--no-transaction")
    before = events(store)

    again = run(*_args(store, "r-nothing"), "--evidence", EVIDENCE, "--no-transaction")

    assert_one_line_error(again, 1, "is COMPLETED")
    assert events(store) == before


def test_resolve_needs_the_cipher_key(store: Store) -> None:
    before = events(store)
    result = run(
        "resolve", store.id("r-lost"), "--db", store.db, "--by", "ops.alice",
        "--evidence", EVIDENCE, "--no-transaction",
    )  # fmt: skip
    assert_one_line_error(result, 2, "KLARNA_FLOW_CIPHER_KEY")
    assert events(store) == before


@pytest.fixture
def no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NO_SECRETS_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_secrets")
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "give exactly one of --transaction-id or --no-transaction"),
        (
            ["--transaction-id", "krn:payment:eu1:transaction:x", "--no-transaction"],
            "give exactly one of --transaction-id or --no-transaction",
        ),
        (["--no-transaction", "--by", ""], "by: must name the operator"),
    ],
    ids=["neither", "both", "empty-by"],
)
def test_usage_errors_are_one_line_and_record_nothing(
    store: Store, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    before = events(store)
    with pytest.raises(SystemExit) as ended:
        main([*_args(store, "r-lost"), "--evidence", EVIDENCE, *args])
    out, err = capsys.readouterr()

    assert (ended.value.code, out) == (2, "")
    assert err.startswith("klarna-flow: ")
    assert err.count("\n") == 1
    assert needle in err
    assert events(store) == before


@pytest.mark.usefixtures("no_secrets")
@pytest.mark.parametrize("missing", ["--by", "--evidence"])
def test_by_and_evidence_are_required(
    store: Store, capsys: pytest.CaptureFixture[str], missing: str
) -> None:
    args = [store.id("r-lost"), "--db", store.db, "--key-file", store.key_file, "--no-transaction"]
    given = {"--by": "ops.alice", "--evidence": EVIDENCE}
    del given[missing]
    with pytest.raises(SystemExit) as ended:
        main(["resolve", *args, *(a for pair in given.items() for a in pair)])
    _, err = capsys.readouterr()

    assert ended.value.code == 2
    assert f"Missing option '{missing}'" in err
    assert err.count("\n") == 1


# -- what it never shows ---------------------------------------------------------------


def test_no_secret_in_any_output(store: Store) -> None:
    lost, nothing = store.id("r-lost"), store.id("r-nothing")
    outputs = [
        ok("unresolved", "--db", store.db),
        ok("unresolved", "--db", store.db, "--json"),
        ok("show", lost, "--db", store.db),
        found_transaction(store, "r-lost"),
        ok(*_args(store, "r-nothing"), "--evidence", EVIDENCE, "--no-transaction", "--json"),
        run(*_args(store, "r-lost"), "--evidence", EVIDENCE, "--no-transaction"),  # refused
    ]
    for payment_id in (lost, nothing):
        for extra in ([], ["--json"]):
            outputs += [
                ok("audit", payment_id, "--db", store.db, *extra),
                ok("show", payment_id, "--db", store.db, *extra),
            ]

    assert len(store.secrets) == 4  # the API key, the session tokens and the customer token
    for result in outputs:
        text = result.stdout + result.stderr
        assert UNMASKED_TOKEN.search(text) is None
        for secret in store.secrets:
            assert secret not in text


def test_show_names_the_resolve_command_of_an_unresolved_payment(store: Store) -> None:
    step = as_json("show", store.id("r-lost"), "--db", store.db)["next_step"]

    assert step["action"] == "RESOLVE"
    assert step["text"].endswith(resolve_command(store.ids["r-lost"], store.db))


def test_the_resolve_command_never_shows_a_database_password() -> None:
    payment_id = uuid4()
    line = resolve_command(payment_id, "postgresql://app:s3cret@db.internal:5432/payments")

    assert "s3cret" not in line
    assert line.startswith(
        f"klarna-flow resolve {payment_id} --db postgresql://app@db.internal:5432/payments "
    )


@pytest.mark.parametrize("command", ["unresolved", "resolve"])
def test_both_commands_are_listed_with_their_help(command: str) -> None:
    assert command in ok("--help").stdout
    help_text = ok(command, "--help").stdout
    assert "--db" in help_text
    assert ("--key-file" in help_text) == (command == "resolve")


def test_evidence_in_square_brackets_shows_as_written_in_the_audit_table(store: Store) -> None:
    payment_id = store.id("r-lost")
    evidence = "[ticket OPS-43] [bold]portal[/bold]"
    ok(*_args(store, "r-lost"), "--evidence", evidence, "--transaction-id", store.transaction_id)

    table = ok("audit", payment_id, "--db", store.db).stdout

    assert "[ticket OPS-43]" in table
    assert "[bold]portal[/bold]" in table
