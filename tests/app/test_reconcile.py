"""Every way an authorize call can fail, and how ``reconcile`` finishes the job.

For each point of failure the payment ends final (``AUTHORIZED``), either via
``reconcile`` re-sending the recorded idempotency key or, after a failure that
proves Klarna did not act, via a new ``authorize``; and Klarna (the fake) holds
at most one transaction for the payment's reference. The last tests kill a
real process with SIGKILL between recording the request and recording the
outcome.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import attrs
import httpx
import pytest

from klarna_flow import (
    Flow,
    InvalidInput,
    KlarnaClient,
    KlarnaServerError,
    OutcomeResult,
    Payment,
    Payments,
    PaymentState,
    RetryPolicy,
    TokenCipher,
    generate_key,
)
from klarna_flow.testing import FakeKlarna, ManualClock, serve_fake
from tests import _flow_helpers
from tests._flow_helpers import (
    AMOUNT,
    API_KEY,
    CURRENCY,
    RETRY,
    Kit,
    MakePayments,
    event_names,
    open_kit,
)

S = PaymentState
R = OutcomeResult
PAST_DEFAULT_AGE = timedelta(minutes=6)  # reconcile's default older_than is 5 minutes


@pytest.fixture
def kit(make_payments: MakePayments, clock: ManualClock) -> Iterator[Kit]:
    with open_kit(make_payments, clock) as kit:
        yield kit


def _times(n: int, script: Callable[[FakeKlarna], None]) -> Callable[[FakeKlarna], None]:
    def run(fake: FakeKlarna) -> None:
        for _ in range(n):
            script(fake)

    return run


@attrs.frozen
class Fault:
    """A scripted failure of the first authorize and what ``authorize`` returns."""

    name: str
    script: Callable[[FakeKlarna], None]
    first: OutcomeResult
    processed: bool  # Klarna created the transaction during the first authorize


ATTEMPTS = RETRY.max_attempts
FAULTS = [
    Fault("5xx-exhausting-retries", lambda f: f.fail_next(500, times=ATTEMPTS), R.PENDING, False),
    Fault("503-exhausting-retries", lambda f: f.fail_next(503, times=ATTEMPTS), R.PENDING, False),
    Fault("429-exhausting-retries", lambda f: f.fail_next(429, times=ATTEMPTS), R.FAILED, False),
    Fault("409-conflict", lambda f: f.fail_next(409), R.FAILED, False),
    Fault(
        "timeout-after-klarna-acted",
        _times(ATTEMPTS, lambda f: f.timeout_next(after_processing=True)),
        R.PENDING,
        True,
    ),
    Fault(
        "timeout-before-klarna-acted",
        _times(ATTEMPTS, lambda f: f.timeout_next(after_processing=False)),
        R.PENDING,
        False,
    ),
    Fault(
        "dropped-before-klarna-acted",
        _times(ATTEMPTS, lambda f: f.drop_next()),
        R.PENDING,
        False,
    ),
    Fault(
        "dropped-after-klarna-acted",
        _times(ATTEMPTS, lambda f: f.drop_next(after_processing=True)),
        R.PENDING,
        True,
    ),
    Fault(
        "unreadable-answer",
        lambda f: f.respond_next(200, b"<html>gateway</html>"),  # not retried
        R.PENDING,
        False,
    ),
    # Transient failures that the client's own retry (same key) absorbs.
    Fault("5xx-once", lambda f: f.fail_next(500), R.APPROVED, True),
    Fault("429-once", lambda f: f.fail_next(429, retry_after=0), R.APPROVED, True),
    Fault(
        "timeout-once-after-klarna-acted",
        lambda f: f.timeout_next(after_processing=True),
        R.APPROVED,
        True,
    ),
    Fault("dropped-once", lambda f: f.drop_next(), R.APPROVED, True),
]


def requested_keys(kit: Kit, payment_id: UUID) -> list[str]:
    return [
        e.idempotency_key
        for e in kit.events(payment_id)
        if isinstance(e, Payment.AuthorizationRequested)
    ]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.name)
def test_every_fault_ends_final_with_at_most_one_transaction(kit: Kit, fault: Fault) -> None:
    created = kit.completed(Flow.AUTHORIZATION)
    fault.script(kit.fake)

    first = kit.payments.authorize(created.payment_id)

    assert first.result is fault.first
    assert len(kit.fake.transactions_for(created.reference)) == int(fault.processed)
    if first.result is R.PENDING:  # unknown whether Klarna acted: left for reconcile
        assert first.state is S.AUTHORIZING
        assert first.error is not None
        assert set(kit.sent_keys()) == {first.idempotency_key}  # every retry, same key
    if first.result is R.FAILED:  # Klarna refused without acting: open again
        assert first.state is S.COMPLETED
        assert first.error is not None

    kit.clock.advance(PAST_DEFAULT_AGE)
    reconciled = kit.payments.reconcile()

    if first.result is R.PENDING:
        [outcome] = reconciled
        assert outcome.result is R.APPROVED
        assert outcome.idempotency_key == first.idempotency_key
        assert kit.events(created.payment_id)[-1].cause == "command:reconcile"
    else:
        assert reconciled == []
    if first.result is R.FAILED:
        second = kit.payments.authorize(created.payment_id)
        assert second.result is R.APPROVED
        assert second.idempotency_key != first.idempotency_key
    payment = kit.payments.get(created.payment_id)
    [transaction] = kit.fake.transactions_for(created.reference)
    assert payment.state is S.AUTHORIZED
    assert payment.payment_transaction_id == transaction.payment_transaction_id
    assert set(kit.sent_keys()) == set(requested_keys(kit, created.payment_id))
    assert kit.payments.reconcile(older_than=timedelta(0)) == []


def test_reconcile_leaves_recent_requests_alone(kit: Kit) -> None:
    created = kit.completed()
    kit.fake.fail_next(500, times=ATTEMPTS)
    kit.payments.authorize(created.payment_id)
    sent = len(kit.fake.requests)

    assert kit.payments.reconcile() == []
    kit.clock.advance(timedelta(minutes=4))
    assert kit.payments.reconcile() == []
    assert len(kit.fake.requests) == sent
    [outcome] = kit.payments.reconcile(older_than=timedelta(minutes=4))
    assert outcome.result is R.APPROVED


def test_reconcile_while_klarna_is_still_down_stays_pending(kit: Kit) -> None:
    created = kit.completed()
    kit.fake.fail_next(503, times=2 * ATTEMPTS)
    kit.payments.authorize(created.payment_id)

    [still] = kit.payments.reconcile(older_than=timedelta(0))
    assert (still.result, still.state) == (R.PENDING, S.AUTHORIZING)
    assert isinstance(still.error, KlarnaServerError)
    [done] = kit.payments.reconcile(older_than=timedelta(0))

    assert done.result is R.APPROVED
    assert len(kit.fake.transactions) == 1
    assert set(kit.sent_keys()) == {done.idempotency_key}
    assert event_names(kit.payments, created.payment_id).count("AuthorizationRequested") == 1


def test_reconcile_resolves_many_payments_and_skips_others(kit: Kit) -> None:
    pending = [kit.completed() for _ in range(4)]
    for created in pending:
        kit.fake.timeout_next(after_processing=True)
        kit.fake.timeout_next(after_processing=True)
        kit.fake.timeout_next(after_processing=True)
        assert kit.payments.authorize(created.payment_id).result is R.PENDING
    approved = kit.completed()
    kit.payments.authorize(approved.payment_id)
    waiting = kit.completed()

    outcomes = kit.payments.reconcile(older_than=timedelta(0))

    assert sorted(o.payment_id for o in outcomes) == sorted(c.payment_id for c in pending)
    assert {o.result for o in outcomes} == {R.APPROVED}
    for created in [*pending, approved]:
        assert len(kit.fake.transactions_for(created.reference)) == 1
    assert kit.payments.get(waiting.payment_id).state is S.COMPLETED
    assert kit.payments.counts_by_state() == {"AUTHORIZED": 5, "COMPLETED": 1}


def _answer_lost_after_klarna_acted(kit: Kit) -> UUID:
    created = kit.completed()
    for _ in range(ATTEMPTS):
        kit.fake.drop_next(after_processing=True)
    assert kit.payments.authorize(created.payment_id).result is R.PENDING
    assert len(kit.fake.transactions_for(created.reference)) == 1
    return created.payment_id


def test_a_resend_past_the_key_window_gets_the_result_replayed_by_the_token(kit: Kit) -> None:
    payment_id = _answer_lost_after_klarna_acted(kit)
    kit.clock.advance(timedelta(hours=25))  # Klarna's 24-hour key window is over

    [outcome] = kit.payments.reconcile()

    [transaction] = kit.fake.transactions
    assert (outcome.result, outcome.state) == (R.APPROVED, S.AUTHORIZED)
    assert outcome.payment_transaction_id == transaction.payment_transaction_id
    assert kit.payments.expire_overdue() == []
    assert kit.payments.get(payment_id).state is S.AUTHORIZED


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409])
def test_a_refused_resend_never_books_the_payment_as_failed(
    kit: Kit, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    payment_id = _answer_lost_after_klarna_acted(kit)
    kit.clock.advance(timedelta(hours=25))
    kit.fake.fail_next(status, times=2)

    with caplog.at_level(logging.ERROR, logger="klarna_flow"):
        [first] = kit.payments.reconcile()
        [second] = kit.payments.reconcile()

    assert (first.result, first.state) == (R.UNRESOLVED, S.AUTHORIZING)
    assert (second.result, second.state) == (R.UNRESOLVED, S.AUTHORIZING)
    assert kit.names(payment_id)[-2:] == ["AuthorizationRequested", "AuthorizationUnresolved"]
    assert [row.payment_id for row in kit.payments.unresolved()] == [payment_id]
    [logged] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert str(payment_id) in logged.getMessage()
    assert "unresolved" in logged.getMessage()
    kit.clock.advance(timedelta(days=2))
    assert kit.payments.expire_overdue() == []
    assert kit.payments.get(payment_id).state is S.AUTHORIZING
    assert kit.payments.outcome(payment_id) == first  # as recorded by the first refusal


def test_an_unresolved_payment_resolves_when_a_later_resend_is_answered(kit: Kit) -> None:
    payment_id = _answer_lost_after_klarna_acted(kit)
    kit.clock.advance(timedelta(hours=25))
    kit.fake.fail_next(401)
    kit.payments.reconcile()
    assert kit.payments.get(payment_id).is_unresolved

    [outcome] = kit.payments.reconcile()

    assert (outcome.result, outcome.state) == (R.APPROVED, S.AUTHORIZED)
    assert kit.payments.unresolved() == []
    assert not kit.payments.get(payment_id).is_unresolved


def test_a_refused_resend_inside_the_key_window_is_not_proof_either(kit: Kit) -> None:
    created = kit.completed()
    kit.fake.fail_next(503, times=ATTEMPTS)
    assert kit.payments.authorize(created.payment_id).result is R.PENDING
    kit.fake.fail_next(409)

    [outcome] = kit.payments.reconcile(older_than=timedelta(0))

    assert (outcome.result, outcome.state) == (R.UNRESOLVED, S.AUTHORIZING)
    assert "AuthorizationFailed" not in kit.names(created.payment_id)


def test_reconcile_refuses_a_negative_age(kit: Kit) -> None:
    with pytest.raises(InvalidInput):
        kit.payments.reconcile(older_than=timedelta(seconds=-1))


# -- a real crash: SIGKILL between the recorded request and the outcome ---------


class HoldFirstRequest:
    """In front of the fake: holds the first request until the test says what happens.

    Once released, the held request is either lost unprocessed or processed
    by the fake with its answer lost (the caller is dead by then anyway).
    Every later request goes straight to the fake.
    """

    def __init__(self, fake: FakeKlarna) -> None:
        self.fake = fake
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()
        self.process_it = False
        self.held_key: str | None = None
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            first, self.held_key = self.held_key is None, self.held_key or "?"
        if not first:
            return self.fake(request)
        self.held_key = request.headers["Klarna-Idempotency-Key"]
        self.arrived.set()
        self.release.wait(timeout=60)
        try:
            if self.process_it:
                self.fake(request)
        finally:
            self.finished.set()
        raise httpx.RemoteProtocolError("the caller was killed", request=request)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
@pytest.mark.parametrize("klarna_acted", [False, True], ids=["before-klarna-acted", "after"])
def test_a_process_killed_mid_call_is_reconciled_to_one_transaction(
    tmp_path: Path, klarna_acted: bool
) -> None:
    key = generate_key()
    db = tmp_path / "payments.sqlite"
    fake = FakeKlarna()
    gate = HoldFirstRequest(fake)
    with (
        serve_fake(gate) as server,
        KlarnaClient(API_KEY, base_url=server.base_url, retry=RETRY) as client,
    ):
        payments = Payments.sqlite(
            db, cipher=TokenCipher(key), klarna=client, partner_account_id=fake.partner_account_id
        )
        try:
            request_id = fake.create_payment_request(amount=AMOUNT, currency=CURRENCY)
            payment_id = payments.create(
                flow=Flow.AUTHORIZATION,
                amount=AMOUNT,
                currency=CURRENCY,
                reference="crash-1",
                payment_request_id=request_id,
            )
            done = fake.complete_payment_request(request_id)
            payments.complete(payment_id, session_token=done.session_token)

            _kill_while_in_flight(
                gate,
                db=db,
                base_url=server.base_url,
                payment_id=payment_id,
                key=key,
                payments=payments,
            )

            gate.process_it = klarna_acted
            gate.release.set()
            assert gate.finished.wait(timeout=30)
            assert len(fake.transactions_for("crash-1")) == int(klarna_acted)
            [outcome] = payments.reconcile(older_than=timedelta(0))
        finally:
            gate.release.set()
            payments.close()

    assert outcome.result is R.APPROVED
    assert outcome.idempotency_key == gate.held_key  # the same key the dead process sent
    [transaction] = fake.transactions_for("crash-1")
    assert outcome.payment_transaction_id == transaction.payment_transaction_id
    reopened = Payments.sqlite(db, cipher=TokenCipher(key))
    try:
        assert reopened.get(payment_id).state is S.AUTHORIZED
        assert event_names(reopened, payment_id) == [
            "PaymentCreated",
            "PurchaseCompleted",
            "AuthorizationRequested",
            "AuthorizationApproved",
        ]
    finally:
        reopened.close()


def _kill_while_in_flight(
    gate: HoldFirstRequest,
    *,
    db: Path,
    base_url: str,
    payment_id: UUID,
    key: str,
    payments: Payments,
) -> None:
    """Start the child, wait for its call to be in flight, SIGKILL it."""
    child = subprocess.Popen(
        [sys.executable, _flow_helpers.__file__, str(db), base_url, str(payment_id)],
        env={**os.environ, "KLARNA_FLOW_CIPHER_KEY": key},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not gate.arrived.wait(timeout=0.05):
            if child.poll() is not None or time.monotonic() > deadline:
                child.kill()
                _, err = child.communicate(timeout=30)
                pytest.fail(f"the child never called Klarna:\n{err.decode(errors='replace')}")
        # The intent is in the file, the call is in flight: crash now.
        assert payments.get(payment_id).state is S.AUTHORIZING
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=30)
    finally:
        if child.poll() is None:  # pragma: no cover - only when an assert failed
            child.kill()
            child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL


# -- reconcile past a payment it cannot re-send --------------------------------------------
# reconcile goes on past a payment it cannot re-send, and says which.


RETRY_TWICE = RetryPolicy(max_attempts=2, initial_backoff=0.001, max_backoff=0.001)


def _pending_on(payments: Payments, fake: FakeKlarna, reference: str) -> UUID:
    token = fake.issue_session_token(amount=100, currency="EUR")
    payment_id = payments.create(
        flow=Flow.AUTHORIZATION, amount=100, currency="EUR", reference=reference
    )
    payments.complete(payment_id, session_token=token)
    for _ in range(RETRY_TWICE.max_attempts):
        fake.timeout_next(after_processing=True)
    assert payments.authorize(payment_id).result is OutcomeResult.PENDING
    return payment_id


def test_a_payment_sealed_under_a_missing_key_is_skipped_and_the_rest_resolved(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    fake = FakeKlarna(clock=clock)
    key1, key2 = generate_key(), generate_key()
    db = tmp_path / "p.sqlite"

    def open_app(cipher: TokenCipher) -> Payments:
        client = KlarnaClient(fake.api_key, transport=httpx.MockTransport(fake), retry=RETRY_TWICE)
        return Payments.sqlite(
            db,
            clock=clock,
            cipher=cipher,
            klarna=client,
            partner_account_id=fake.partner_account_id,
        )

    old = open_app(TokenCipher(key1))
    sealed_with_key1 = _pending_on(old, fake, "old-key")
    old.close()
    new = open_app(TokenCipher(key2))
    sealed_with_key2 = _pending_on(new, fake, "new-key")
    clock.advance(timedelta(minutes=6))

    with caplog.at_level(logging.WARNING, logger="klarna_flow"):
        outcomes = new.reconcile()

    assert [o.payment_id for o in outcomes] == [sealed_with_key2]
    assert outcomes[0].result is OutcomeResult.APPROVED
    assert new.get(sealed_with_key1).state is PaymentState.AUTHORIZING
    [warning] = [r for r in caplog.records if "reconcile skipped" in r.getMessage()]
    assert str(sealed_with_key1) in warning.getMessage()
    assert "ConfigurationError" in warning.getMessage()
    new.close()

    # With the old key configured again, the skipped one resolves: one transaction each.
    both = open_app(TokenCipher(key2, old=[key1]))
    [late] = both.reconcile()
    assert late.payment_id == sealed_with_key1
    assert late.result is OutcomeResult.APPROVED
    assert len(fake.transactions_for("old-key")) == 1
    assert len(fake.transactions_for("new-key")) == 1
    both.close()


def test_the_cipher_key_may_come_in_the_env_argument(tmp_path: Path) -> None:
    key = generate_key()
    payments = Payments.sqlite(tmp_path / "p.sqlite", env={"KLARNA_FLOW_CIPHER_KEY": key})
    assert payments.cipher.current_key_id == TokenCipher(key).current_key_id
    payments.close()


# -- answers that prove nothing ------------------------------------------------------------
# A failure after which Klarna may have acted never reopens a payment.
#
# When any attempt of a call may have reached Klarna (a timeout or a dropped
# answer after Klarna acted, a 5xx), a later refusal of a retry proves nothing:
# the payment stays ``AUTHORIZING`` and ``reconcile`` re-sends the same key,
# until Klarna answers with its original result. One transaction, ever.


RETRY_THRICE = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.001)


@pytest.fixture
def setup() -> Iterator[tuple[Payments, FakeKlarna, ManualClock]]:
    clock = ManualClock()
    fake = FakeKlarna(clock=clock)
    client = KlarnaClient(fake.api_key, transport=httpx.MockTransport(fake), retry=RETRY_THRICE)
    payments = Payments(
        clock=clock,
        klarna=client,
        signing_keys=fake.signing_keys,
        partner_account_id=fake.partner_account_id,
    )
    yield payments, fake, clock
    client.close()
    payments.close()


def _completed_on(payments: Payments, fake: FakeKlarna, reference: str) -> UUID:
    token = fake.issue_session_token(amount=100, currency="USD")
    payment_id = payments.create(
        flow=Flow.AUTHORIZATION, amount=100, currency="USD", reference=reference
    )
    payments.complete(payment_id, session_token=token)
    return payment_id


def test_rate_limited_retries_after_a_lost_answer_leave_the_payment_pending(
    setup: tuple[Payments, FakeKlarna, ManualClock],
) -> None:
    payments, fake, clock = setup
    payment_id = _completed_on(payments, fake, "lost-then-429")
    fake.timeout_next(after_processing=True)  # Klarna acts; the answer is lost
    fake.fail_next(429, times=2)  # the retries under the same key are rate limited

    outcome = payments.authorize(payment_id)

    assert outcome.result is OutcomeResult.PENDING
    assert outcome.state is PaymentState.AUTHORIZING
    assert outcome.error is not None
    assert outcome.error.may_have_acted
    assert len(fake.transactions_for("lost-then-429")) == 1
    # Nothing reopens it: no second attempt, no cancel, no expiry.
    clock.advance(timedelta(minutes=61))
    assert payments.expire_overdue() == []
    # reconcile re-sends the recorded key: Klarna answers with the original result.
    [resolved] = payments.reconcile(older_than=timedelta(0))
    assert resolved.result is OutcomeResult.APPROVED
    [transaction] = fake.transactions_for("lost-then-429")
    assert resolved.payment_transaction_id == transaction.payment_transaction_id


def test_a_rate_limited_reconcile_keeps_the_payment_pending(
    setup: tuple[Payments, FakeKlarna, ManualClock],
) -> None:
    payments, fake, clock = setup
    payment_id = _completed_on(payments, fake, "pending-429")
    for _ in range(RETRY_THRICE.max_attempts):
        fake.timeout_next(after_processing=True)
    assert payments.authorize(payment_id).result is OutcomeResult.PENDING
    clock.advance(timedelta(minutes=6))
    fake.fail_next(429, times=RETRY_THRICE.max_attempts)

    [still] = payments.reconcile()

    assert still.result is OutcomeResult.PENDING
    assert payments.get(payment_id).state is PaymentState.AUTHORIZING
    [again] = payments.reconcile()
    assert again.result is OutcomeResult.APPROVED
    assert len(fake.transactions_for("pending-429")) == 1


def test_a_refusal_on_the_first_send_is_definitive(
    setup: tuple[Payments, FakeKlarna, ManualClock],
) -> None:
    payments, fake, _ = setup
    payment_id = _completed_on(payments, fake, "plain-429")
    fake.fail_next(429, times=RETRY_THRICE.max_attempts)  # never processed: safe to retry later

    outcome = payments.authorize(payment_id)

    assert outcome.result is OutcomeResult.FAILED
    assert outcome.error is not None
    assert not outcome.error.may_have_acted
    assert payments.authorize(payment_id).result is OutcomeResult.APPROVED
    assert len(fake.transactions_for("plain-429")) == 1
