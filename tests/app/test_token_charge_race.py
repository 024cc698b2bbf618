"""A token charge raced by six processes on one SQLite file makes exactly one HTTP call.

A customer token is stored by a tokenization completed at the fake; a charge
of it (customer not present) is created; then six real processes (spawned,
each with its own ``Payments`` on the same SQLite file, the cipher key read
from one key file, and its own ``KlarnaClient``) wait at a barrier and call
``initiate`` at once against one ``FakeKlarna`` served on loopback.

Intent first (design.md): one process records ``AuthorizationRequested`` and
makes the call; the five others find it recorded and make none. The call
that reaches the fake is held until the five have given up, so they race the
intent, not a payment already settled.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest

from klarna_flow import (
    AuthorizationInProgress,
    CustomerTokenScope,
    Flow,
    KlarnaClient,
    KlarnaFlowError,
    OutcomeResult,
    Payments,
    PaymentState,
    StepUpConfig,
    StorageError,
    TokenCipher,
    generate_key,
)
from klarna_flow.testing import FakeKlarna, serve_fake
from tests._flow_helpers import AMOUNT, API_KEY, CURRENCY, RETRY, event_names

PROCESSES = 6
LOSERS = PROCESSES - 1
REFERENCE = "race-charge"
AUTHORIZE_PATH = "/payment/authorize"
Result = tuple[str, ...]


class HoldTheCall:
    """In front of the fake: once armed, an authorize call waits until the losers gave up.

    (At most ``timeout`` seconds: if two processes both called, both are
    held, the losers never reach five, and the test fails on the count.)
    """

    def __init__(self, fake: FakeKlarna, timeout: float = 30.0) -> None:
        self.fake = fake
        self.timeout = timeout
        self.armed = False
        self._given_up = 0
        self._changed = threading.Condition()

    def gave_up(self) -> None:
        with self._changed:
            self._given_up += 1
            self._changed.notify_all()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.armed and request.url.path.endswith(AUTHORIZE_PATH):
            with self._changed:
                self._changed.wait_for(lambda: self._given_up >= LOSERS, timeout=self.timeout)
        return self.fake(request)


def charge_in_child(  # noqa: PLR0917 - a process target takes its arguments by position
    db: str,
    key_file: str,
    base_url: str,
    payment_id: str,
    barrier: Any,
    results: Any,
) -> None:
    """One racer: its own store and client; waits at the barrier, then initiates."""
    result: Result
    try:
        cipher = TokenCipher(Path(key_file).read_text(encoding="ascii").strip())
        with (
            KlarnaClient(API_KEY, base_url=base_url, timeout=60.0, retry=RETRY) as client,
            open_store(db, cipher, client) as payments,
        ):
            payments.get(UUID(payment_id))  # the store is open and readable
            barrier.wait(timeout=60)
            try:
                outcome = payments.initiate(UUID(payment_id))
            except KlarnaFlowError as e:
                result = ("error", type(e).__name__, str(getattr(e, "state", None)))
            else:
                transaction = outcome.payment_transaction_id or ""
                result = ("outcome", outcome.result.value, outcome.state.value, transaction)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which fails the test
        result = ("crash", type(e).__name__, str(e))
    results.put(result)


def open_store(db: str, cipher: TokenCipher, client: KlarnaClient) -> Payments:
    """The SQLite store, opened as ``klarna-flow worker`` opens it: a file locked by
    another process's start is tried again (for up to a minute)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return Payments.sqlite(db, cipher=cipher, klarna=client)
        except StorageError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def tokenize(payments: Payments, fake: FakeKlarna) -> tuple[UUID, str]:
    """A completed pure tokenization: the customer finished at the fake, Klarna notified."""
    source = payments.create(
        flow=Flow.TOKENIZATION, amount=AMOUNT, currency=CURRENCY, reference="race-token"
    )
    stepped = payments.initiate(
        source,
        step_up=StepUpConfig(return_url="https://shop.example/klarna/return"),
        customer_token_scopes=[CustomerTokenScope.CUSTOMER_NOT_PRESENT],
    )
    assert stepped.payment_request_id is not None
    done = fake.complete_payment_request(stepped.payment_request_id)
    result = payments.handle_notification(done.notification.body, done.notification.headers)
    assert result.status_code == 200, result
    assert done.customer_token is not None
    assert payments.get(source).state is PaymentState.COMPLETED
    return source, done.customer_token


def collect(results: Any, hold: HoldTheCall, children: list[Any]) -> list[Result]:
    """Each racer's result; every loser's releases the held call one step nearer."""
    collected: list[Result] = []
    while len(collected) < len(children):
        try:
            result = results.get(timeout=120)
        except queue.Empty:
            pytest.fail(f"only {len(collected)} of {len(children)} racers answered: {collected}")
        collected.append(result)
        if result[0] != "outcome":
            hold.gave_up()
    return collected


def test_a_token_charge_raced_by_six_processes_makes_exactly_one_http_call(
    tmp_path: Path,
) -> None:
    key = generate_key()
    key_file = tmp_path / "payments.sqlite.key"
    key_file.write_text(key + "\n", encoding="ascii")
    key_file.chmod(0o600)
    db = tmp_path / "payments.sqlite"
    fake = FakeKlarna()
    hold = HoldTheCall(fake)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(PROCESSES), context.Queue()

    with (
        serve_fake(hold) as server,
        KlarnaClient(API_KEY, base_url=server.base_url, retry=RETRY) as client,
        Payments.sqlite(
            db,
            cipher=TokenCipher(key),
            klarna=client,
            signing_keys=fake.signing_keys,
            partner_account_id=fake.partner_account_id,
        ) as payments,
    ):
        source, token = tokenize(payments, fake)
        payment_id = payments.create(
            flow=Flow.AUTHORIZATION,
            amount=AMOUNT,
            currency=CURRENCY,
            reference=REFERENCE,
            customer_token_of=source,
            customer_present=False,
        )
        before = len(fake.requests)
        hold.armed = True
        children = [
            context.Process(
                target=charge_in_child,
                args=(str(db), str(key_file), server.base_url, str(payment_id), barrier, results),
            )
            for _ in range(PROCESSES)
        ]
        try:
            for child in children:
                child.start()
            collected = collect(results, hold, children)
            for child in children:
                child.join(timeout=60)
        finally:
            for child in children:
                if child.is_alive():  # pragma: no cover - a racer hung
                    child.terminate()
                    child.join(timeout=10)

        calls = [r for r in fake.requests[before:] if r.url.path.endswith(AUTHORIZE_PATH)]
        payment = payments.get(payment_id)
        names = event_names(payments, payment_id)

    assert [c.exitcode for c in children] == [0] * PROCESSES
    assert not [r for r in collected if r[0] == "crash"], collected
    outcomes = [r for r in collected if r[0] == "outcome"]
    assert len(outcomes) == 1, collected  # one process went on to call Klarna
    [won] = outcomes
    lost = [r for r in collected if r[0] == "error"]
    assert won[1:3] == (OutcomeResult.APPROVED.value, PaymentState.AUTHORIZED.value)
    assert lost == [("error", AuthorizationInProgress.__name__, "AUTHORIZING")] * LOSERS

    assert len(calls) == 1, calls  # exactly one HTTP call, carrying the stored customer token
    [call] = calls
    assert call.headers["Klarna-Customer-Token"] == token
    assert "Klarna-Network-Session-Token" not in call.headers
    [transaction] = fake.transactions_for(REFERENCE)
    assert transaction.customer_token is not None  # charged with a customer token
    assert won[3] == transaction.payment_transaction_id
    assert payment.state is PaymentState.AUTHORIZED
    assert payment.payment_transaction_id == transaction.payment_transaction_id
    assert names == ["PaymentCreated", "AuthorizationRequested", "AuthorizationApproved"]
