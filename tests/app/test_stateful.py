"""Random command sequences against ``Payments``, checked after every step.

A hypothesis state machine creates payments, completes them with fitting or
unfitting tokens, requests authorization (through the ``Payment`` aggregate,
saved with ``Payments.save_payment``), records outcomes, expires, cancels and
moves the clock. Each command's result is compared with what the lifecycle
table of the design says, and after every step:

- every payment rebuilt from its stored events equals the live one;
- a tokenization payment never reaches ``AUTHORIZING`` or ``AUTHORIZED``;
- no ``AuthorizationRequested`` was recorded at or after ``authorize_by``;
- a final state never changes;
- a refused command recorded nothing (checked where it is refused).

It runs on the in-memory store and on a fresh SQLite file per example.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from klarna_flow import (
    CommandRefused,
    Flow,
    InvalidTransition,
    MissingToken,
    NotYetExpired,
    Payment,
    Payments,
    PaymentState,
    ReferenceConflict,
    TokenCipher,
    WrongFlow,
)
from klarna_flow.testing import ManualClock

S = PaymentState
WINDOW = timedelta(minutes=60)
ACCOUNT = "krn:partner:global:account:stateful"
SESSION_TOKEN = "krn:payment:eu1:klarna-network-session-token:stateful"
CUSTOMER_TOKEN = "krn:payment:eu1:customer-token:stateful"
OUTCOMES = {
    "approve": S.AUTHORIZED,
    "decline": S.DECLINED,
    "require_step_up": S.CREATED,
    "fail": S.COMPLETED,
}
FINAL = {S.AUTHORIZED, S.DECLINED, S.EXPIRED, S.CANCELED}
Expected = PaymentState | type[CommandRefused]
# how long before the command Klarna says the customer completed
AGO = st.sampled_from(
    [timedelta(0), timedelta(minutes=1), timedelta(minutes=59), timedelta(minutes=61)]
)

# A fresh SQLite file per example: in memory-backed /dev/shm where there is one,
# since every commit's fsync on a disk would dominate the run.
FAST_TMP = "/dev/shm" if Path("/dev/shm").is_dir() else None  # noqa: S108

SETTINGS = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def is_final(payment: Payment) -> bool:
    return payment.state in FINAL or (
        payment.state is S.COMPLETED and payment.flow is Flow.TOKENIZATION
    )


def _complete(payment: Payment, now: datetime, fitting: bool) -> Expected:
    if payment.state is not S.CREATED:
        return InvalidTransition
    return S.COMPLETED if fitting else MissingToken


def _request_authorization(payment: Payment, now: datetime, fitting: bool) -> Expected:
    if payment.state is not S.COMPLETED:
        return InvalidTransition
    if payment.flow is Flow.TOKENIZATION:
        return WrongFlow
    assert payment.completed_at is not None
    return S.AUTHORIZING if now < payment.completed_at + WINDOW else CommandRefused


def _open(payment: Payment) -> bool:
    return payment.state in (S.CREATED, S.COMPLETED) and not is_final(payment)


def _cancel(payment: Payment, now: datetime, fitting: bool) -> Expected:
    # "no final authorization requested for the current payment request": a failed
    # attempt counts; a step-up opens a new request, which can be canceled again
    never_requested = not payment.final_requested
    return S.CANCELED if _open(payment) and never_requested else InvalidTransition


def _expire(payment: Payment, now: datetime, fitting: bool) -> Expected:
    if not _open(payment):
        return InvalidTransition
    if payment.state is S.CREATED:
        deadline = payment.request_expires_at
    else:
        assert payment.completed_at is not None
        deadline = payment.completed_at + WINDOW
    return S.EXPIRED if now >= deadline else NotYetExpired


def _outcome(dest: PaymentState) -> Callable[[Payment, datetime, bool], Expected]:
    def decide(payment: Payment, now: datetime, fitting: bool) -> Expected:
        return dest if payment.state is S.AUTHORIZING else InvalidTransition

    return decide


TABLE: dict[str, Callable[[Payment, datetime, bool], Expected]] = {
    "complete": _complete,
    "request_authorization": _request_authorization,
    "cancel": _cancel,
    "expire": _expire,
    **{trigger: _outcome(dest) for trigger, dest in OUTCOMES.items()},
}


def expected(trigger: str, payment: Payment, now: datetime, *, fitting: bool = True) -> Expected:
    """What the design's lifecycle table says ``trigger`` does to ``payment`` at ``now``.

    Written from the design document, independently of ``klarna_flow._domain.lifecycle``.
    """
    return TABLE[trigger](payment, now, fitting)


class LifecycleMachine(RuleBasedStateMachine):
    """``Payments`` on one store, driven by random commands."""

    persistence = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.folder = Path(tempfile.mkdtemp(prefix="klarna-flow-stateful-", dir=FAST_TMP))
        env = {"PERSISTENCE_MODULE": "eventsourcing.popo"}
        if self.persistence == "sqlite":
            env = {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(self.folder / "payments.sqlite"),
            }
        self.payments = Payments(
            env,
            clock=self.clock,
            cipher=TokenCipher.ephemeral(),
            partner_account_id=ACCOUNT,
        )
        self.live: dict[UUID, Payment] = {}
        self.finals: dict[UUID, tuple[PaymentState, int]] = {}

    def teardown(self) -> None:
        self.payments.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    payment_ids = Bundle("payment_ids")

    # -- helpers ----------------------------------------------------------------

    def recorded(self) -> int:
        return self.payments._store.recorder.max_notification_id() or 0

    def attempt(self, trigger: str, pid: UUID, run: Callable[[], Payment], want: Expected) -> None:
        """Run a command and hold it to what the table says."""
        before = self.recorded()
        error: CommandRefused | None = None
        try:
            result = run()
        except CommandRefused as refused:
            error = refused
        if error is not None:
            assert type(error) is want, (trigger, want, error)
            assert error.payment_id == pid
            assert error.command == trigger
            assert SESSION_TOKEN not in str(error)
            assert CUSTOMER_TOKEN not in str(error)
            assert self.recorded() == before, "a refused command recorded an event"
            assert self.payments.get(pid) == self.live[pid]
            return
        assert result.state is want, (trigger, want, result.state)
        assert self.recorded() == before + 1
        self.live[pid] = result

    def domain(self, trigger: str, pid: UUID, command: Callable[[Payment], None]) -> None:
        """A command of the ``Payment`` aggregate, saved through the application."""
        now = self.clock.now()
        want = expected(trigger, self.live[pid], now)

        def run() -> Payment:
            payment = self.payments.get(pid)
            try:
                command(payment)
            except CommandRefused:
                assert payment.collect_events() == []
                raise
            self.payments._store.save_payment(payment)
            return payment

        self.attempt(trigger, pid, run, want)

    # -- rules --------------------------------------------------------------------

    @initialize(target=payment_ids, flows=st.lists(st.sampled_from(Flow), min_size=1, max_size=3))
    def first_payments(self, flows: list[Flow]) -> object:
        """Every example starts with payments, whichever rules it then enables."""
        return multiple(*(self.create(flow, f"r{i}", 1_00) for i, flow in enumerate(flows)))

    @rule(
        target=payment_ids,
        flow=st.sampled_from(Flow),
        reference=st.sampled_from(["r0", "r1", "r2", "r3", "r4"]),
        amount=st.sampled_from([1_00, 2_00]),
    )
    def create_payment(self, flow: Flow, reference: str, amount: int) -> object:
        return self.create(flow, reference, amount)

    def create(self, flow: Flow, reference: str, amount: int) -> object:
        before = self.recorded()
        conflict: ReferenceConflict | None = None
        try:
            pid = self.payments.create(
                flow=flow, amount=amount, currency="EUR", reference=reference
            )
        except ReferenceConflict as error:
            conflict = error
        if conflict is not None:
            assert conflict.payment_id in self.live
            existing = self.live[conflict.payment_id]
            assert (existing.flow, existing.amount) != (flow, amount)
            assert self.recorded() == before
            return multiple()
        if pid in self.live:
            assert self.recorded() == before, "a repeated create recorded an event"
            existing = self.live[pid]
            assert (existing.flow, existing.amount) == (flow, amount)
        else:
            assert self.recorded() == before + 1
            self.live[pid] = self.payments.get(pid)
        return pid

    def in_state(self, state: PaymentState) -> list[UUID]:
        return sorted(pid for pid, p in self.live.items() if p.state is state)

    def authorizable(self) -> list[UUID]:
        now = self.clock.now()
        return [
            pid
            for pid in self.in_state(S.COMPLETED)
            if (by := self.live[pid].authorize_by) is not None and now < by
        ]

    def do_complete(self, pid: UUID, session: bool, customer: bool, ago: timedelta) -> None:
        flow = self.live[pid].flow
        fitting = (session, customer) == (flow.authorizes, flow.tokenizes)
        now = self.clock.now()
        want = expected("complete", self.live[pid], now, fitting=fitting)
        self.attempt(
            "complete",
            pid,
            lambda: self.payments.complete(
                pid,
                session_token=SESSION_TOKEN if session else None,
                customer_token=CUSTOMER_TOKEN if customer else None,
                completed_at=now - ago,
            ),
            want,
        )

    def do_request_authorization(self, pid: UUID) -> None:
        key = str(uuid4())
        now = self.clock.now()
        attempts = self.live[pid].authorization_attempts
        self.domain(
            "request_authorization",
            pid,
            lambda p: p.request_authorization(idempotency_key=key, now=now),
        )
        if self.live[pid].authorization_attempts != attempts:
            assert self.live[pid].authorization_attempts == attempts + 1
            assert self.live[pid].idempotency_key == key

    def do_outcome(self, pid: UUID, outcome: str) -> None:
        now = self.clock.now()
        commands: dict[str, Callable[[Payment], None]] = {
            "approve": lambda p: p.approve(
                payment_transaction_id="krn:payment:eu1:transaction:1",
                correlation_id="corr",
                transaction_expires_at=None,
                now=now,
                cause="command:test",
            ),
            "decline": lambda p: p.decline(
                correlation_id="corr", reason="RISK", now=now, cause="command:test"
            ),
            "require_step_up": lambda p: p.require_step_up(
                correlation_id="corr",
                payment_request_id="krn:payment:eu1:payment-request:again",
                payment_request_url=None,
                request_lifetime=self.payments.request_lifetime,
                now=now,
                cause="command:test",
            ),
            "fail": lambda p: p.fail(
                error="timeout", status_code=None, correlation_id=None, now=now, cause="t"
            ),
        }
        self.domain(outcome, pid, commands[outcome])

    # Any command of the table on any payment: mostly refusals, each checked.

    @rule(
        pid=payment_ids,
        trigger=st.sampled_from(sorted(TABLE)),
        session=st.booleans(),
        customer=st.booleans(),
        ago=AGO,
    )
    def any_command(
        self, pid: UUID, trigger: str, session: bool, customer: bool, ago: timedelta
    ) -> None:
        if trigger == "complete":
            self.do_complete(pid, session, customer, ago)
        elif trigger == "request_authorization":
            self.do_request_authorization(pid)
        elif trigger in OUTCOMES:
            self.do_outcome(pid, trigger)
        else:
            want = expected(trigger, self.live[pid], self.clock.now())
            command = self.payments.expire if trigger == "expire" else self.payments.cancel
            self.attempt(trigger, pid, lambda: command(pid), want)

    # The next step of an open payment, so that long histories get explored too.

    def movable(self) -> list[UUID]:
        return sorted(
            {*self.in_state(S.CREATED), *self.authorizable(), *self.in_state(S.AUTHORIZING)}
        )

    @precondition(lambda self: self.movable())
    @rule(data=st.data(), ago=AGO, outcome=st.sampled_from(sorted(OUTCOMES)))
    def move_an_open_payment_on(self, data: st.DataObject, ago: timedelta, outcome: str) -> None:
        pid = data.draw(st.sampled_from(self.movable()))
        payment = self.live[pid]
        if payment.state is S.CREATED:
            self.do_complete(pid, payment.flow.authorizes, payment.flow.tokenizes, ago)
        elif payment.state is S.COMPLETED:
            self.do_request_authorization(pid)
        else:
            self.do_outcome(pid, outcome)

    @rule(
        delta=st.sampled_from(
            [
                timedelta(microseconds=1),
                timedelta(minutes=1),
                timedelta(minutes=30),
                timedelta(minutes=59, seconds=59),
                timedelta(hours=1),
                timedelta(hours=3),
            ]
        )
    )
    def advance_clock(self, delta: timedelta) -> None:
        self.clock.advance(delta)

    # -- invariants ---------------------------------------------------------------

    # Each payment's events are read once per step and every check runs on them.

    @invariant()
    def every_payment_keeps_the_rules(self) -> None:
        for pid, live in self.live.items():
            stored = list(self.payments.stored_events(pid))
            self.rebuilt_from_events_equals_the_live_payment(live, stored)
            self.tokenization_is_never_authorized(live, stored)
            self.authorization_is_only_requested_inside_the_window(stored)
            self.final_states_never_change(live)
            self.recorded_times_come_from_the_clock(stored)

    def rebuilt_from_events_equals_the_live_payment(
        self, live: Payment, stored: list[Payment.Event]
    ) -> None:
        assert len(stored) == live.version
        assert self.payments.get(live.id) == live
        assert self.payments.state_at(live.id, version=live.version) == live

    def tokenization_is_never_authorized(self, live: Payment, stored: list[Payment.Event]) -> None:
        if live.flow is Flow.TOKENIZATION:
            assert live.state not in (S.AUTHORIZING, S.AUTHORIZED)
            names = {type(e).__name__ for e in stored}
            assert not names & {"AuthorizationRequested", "AuthorizationApproved"}

    def authorization_is_only_requested_inside_the_window(
        self, stored: list[Payment.Event]
    ) -> None:
        completed_at: datetime | None = None
        for event in stored:
            if isinstance(event, Payment.PurchaseCompleted):
                completed_at = event.completed_at
            elif isinstance(event, Payment.StepUpRequired):
                completed_at = None
            elif isinstance(event, Payment.AuthorizationRequested):
                assert completed_at is not None
                assert event.timestamp < completed_at + WINDOW

    def final_states_never_change(self, live: Payment) -> None:
        if live.id in self.finals:
            assert (live.state, live.version) == self.finals[live.id]
        elif is_final(live):
            self.finals[live.id] = (live.state, live.version)

    def recorded_times_come_from_the_clock(self, stored: list[Payment.Event]) -> None:
        times = [e.timestamp for e in stored]
        assert times == sorted(times)
        assert times[-1] <= self.clock.now()


class SQLiteLifecycleMachine(LifecycleMachine):
    """The same machine on a fresh SQLite file per example."""

    persistence = "sqlite"


@pytest.mark.parametrize(
    "machine", [LifecycleMachine, SQLiteLifecycleMachine], ids=["memory", "sqlite"]
)
def test_random_command_sequences_keep_the_lifecycle(machine: type[LifecycleMachine]) -> None:
    run_state_machine_as_test(machine, settings=SETTINGS)
