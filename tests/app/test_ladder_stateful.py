"""Every uncertain authorization is resolved, and never into an orphaned transaction.

A hypothesis state machine drives ``Payments`` against ``FakeKlarna`` (in
process) through the whole journey and the resolution ladder (design.md,
"never an orphaned transaction"; klarna-api.md §§5-8): step-up journeys of
every flow, Express session tokens, token charges (customer present or not,
the token given as is or taken from a tokenization), the customer completing
at Klarna, initial and final calls with their answers lost after Klarna acted
or before, refusals, ``reconcile``, clock jumps past the 60-minute window and
Klarna's 24-hour idempotency window, Klarna's transaction notifications
delivered late, twice and out of order, operators resolving with evidence
(and now and then wrongly, with "no transaction"), and the expiry sweep.

Between the client and the fake sits a :class:`Wire`: it loses answers (before
the fake saw the call, or after it acted) and refuses calls as each command's
plan says, and it knows for certain which calls the fake answered 200, i.e.
acted on. After every step:

- no attempt the fake acted on is followed by ``AuthorizationFailed`` or
  ``InitiationFailed``;
- the fake holds at most one transaction per payment; an ``AUTHORIZED``
  payment holds the fake's transaction; a transaction whose payment is not
  ``AUTHORIZED`` belongs to a payment still ``AUTHORIZING`` (waiting for
  evidence), or to one an operator wrongly resolved as having none;
- once Klarna's notification naming a transaction was delivered, its payment
  is ``AUTHORIZED`` with it, or (wrongly resolved) holds a
  ``TransactionConflict`` naming it and is listed by ``conflicts()``;
- every payment rebuilt from its stored events equals the live one, and
  ``verify()`` is clean.

And whenever the ladder is climbed to the top (``the_ladder_settles_everything``),
every payment still pending after a fault-free re-send is listed by
``unresolved()``, and Klarna's notifications and an operator settle them all.

It runs on the in-memory store, and with fewer examples on a fresh SQLite file.
The bug it found (a re-send past Klarna's key window made a second
transaction) has deterministic tests at the end, on every store.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import shutil
import tempfile
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from datetime import timedelta
from functools import partial
from pathlib import Path
from uuid import UUID

import attrs
import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from klarna_flow import (
    AsyncKlarnaClient,
    AuthorizationOutcome,
    AuthorizationWindowElapsed,
    CustomerTokenScope,
    Flow,
    KlarnaClient,
    KlarnaError,
    OutcomeResult,
    Payment,
    Payments,
    PaymentState,
    RetryPolicy,
    StepUpConfig,
    TokenCipher,
)
from klarna_flow.testing import FakeKlarna, ManualClock, RecordedTransaction, SignedNotification
from tests._flow_helpers import Kit, MakePayments

S = PaymentState
AMOUNT = 11800
CURRENCY = "USD"
RETURN_URL = "https://shop.example/klarna/return"
ATTEMPTS = 3
RETRY = RetryPolicy(max_attempts=ATTEMPTS, initial_backoff=0.001, max_backoff=0.001)
BOTH_SCOPES = [CustomerTokenScope.CUSTOMER_NOT_PRESENT, CustomerTokenScope.CUSTOMER_PRESENT]
FAILURES = {"AuthorizationFailed", "InitiationFailed"}
AUTHORIZE_PATH = "/payment/authorize"

# What the wire does to one HTTP call.
FORWARD = "forward"  # to the fake; its answer comes back
LOST_BEFORE = "lost-before"  # the connection drops before Klarna saw it
NEVER_SENT = "never-sent"  # connecting failed: the request never left
LOST_AFTER = "lost-after"  # Klarna acted; the connection dropped before the answer
TIMEOUT_AFTER = "timeout-after"  # Klarna acted; no answer in time
REFUSALS = ("500", "503", "429", "400", "401", "404", "409")
STEPS = (FORWARD, LOST_BEFORE, NEVER_SENT, LOST_AFTER, TIMEOUT_AFTER, *REFUSALS)
FORWARDED = frozenset({FORWARD, LOST_AFTER, TIMEOUT_AFTER})
RETRIED = frozenset({LOST_BEFORE, NEVER_SENT, LOST_AFTER, TIMEOUT_AFTER, "500", "503", "429"})
_ERRORS = {
    "500": ("TECHNICAL_ERROR", "INTERNAL_ERROR"),
    "503": ("TECHNICAL_ERROR", "SERVICE_UNAVAILABLE"),
    "429": ("TECHNICAL_ERROR", "RATE_LIMITED"),
    "400": ("INPUT_ERROR", "VALIDATION_ERROR"),
    "401": ("ACCESS_ERROR", "UNAUTHORIZED"),
    "404": ("RESOURCE_ERROR", "RESOURCE_NOT_FOUND"),
    "409": ("RESOURCE_ERROR", "RESOURCE_CONFLICT"),
}

# A plan: what happens to each call of one command, in order; calls past it are forwarded.
PLANS = st.one_of(
    st.just(()),
    st.lists(st.sampled_from(STEPS), min_size=1, max_size=ATTEMPTS).map(tuple),
)
# What a re-send meets: refusals first (they prove nothing about the call before).
SETTLED_FIRST = ("409", "400", "401", "404", "429", "500", "503")
RESEND_PLANS = st.one_of(
    st.lists(st.sampled_from(SETTLED_FIRST), min_size=1, max_size=ATTEMPTS).map(tuple), PLANS
)
# A lost answer matters most when Klarna approved: a transaction exists.
LOST_VERDICTS = st.sampled_from(["approve", None, "decline", "step_up"])
LOST = st.sampled_from([LOST_AFTER, TIMEOUT_AFTER, LOST_BEFORE])
VERDICTS = st.sampled_from([None, None, "approve", "decline", "step_up"])
# How far the clock jumps. Each example keeps to one scale, so that some stay
# inside the 60-minute window (final calls) and others cross Klarna's 24-hour
# idempotency window.
SCALES = {
    "minutes": (
        timedelta(minutes=1),
        timedelta(minutes=6),  # past reconcile's default age of 5 minutes
        timedelta(minutes=20),
        timedelta(minutes=61),  # past the 60-minute window
    ),
    "days": (  # the first is drawn most often
        timedelta(hours=25),  # past Klarna's 24-hour idempotency window
        timedelta(hours=4),  # past a payment request's 3 hours
        timedelta(minutes=61),
        timedelta(minutes=6),
    ),
}

# What acts on a pending payment (see ``a_rung_of_the_ladder``).
RUNGS = (
    "a day, then a re-send",
    "re-send",
    "notification",
    "operator, wrongly",
    "operator, rightly",
)
# What a worker does after the clock moved.
WORK = (("reconcile",), ("reconcile", "sweep"), ("sweep",), ())
KINDS = ("journey", "pay-and-tokenize", "tokenization", "express", "charge")
JOURNEYS = {
    "journey": Flow.AUTHORIZATION,
    "pay-and-tokenize": Flow.AUTHORIZATION_AND_TOKENIZATION,
    "tokenization": Flow.TOKENIZATION,
}

# A fresh SQLite file per example, in memory-backed /dev/shm where there is one.
FAST_TMP = "/dev/shm" if Path("/dev/shm").is_dir() else None  # noqa: S108


def error_answer(status: str, request: httpx.Request) -> httpx.Response:
    """Klarna's error envelope (klarna-api.md §3) for ``status``."""
    error_type, code = _ERRORS[status]
    body = {
        "error_id": str(uuid.uuid4()),
        "error_type": error_type,
        "error_code": code,
        "error_message": code.replace("_", " ").capitalize(),
    }
    return httpx.Response(
        int(status),
        json=body,
        headers={"Klarna-Correlation-Id": str(uuid.uuid4())},
        request=request,
    )


class Wire:
    """Between the client and the fake: follows the current plan, records what the fake did."""

    def __init__(self, fake: FakeKlarna) -> None:
        self.fake = fake
        self.plan: deque[str] = deque()
        self.acted: set[str] = set()
        """Idempotency keys of authorize calls the fake answered 200 (answer lost or not)."""
        self.sent: set[str] = set()
        """Idempotency keys of every authorize call that left the client."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        step = self.plan.popleft() if self.plan else FORWARD
        key = request.headers.get("Klarna-Idempotency-Key")
        is_authorize = request.url.path.endswith(AUTHORIZE_PATH)
        if step == NEVER_SENT:
            raise httpx.ConnectError("connection refused", request=request)
        if key is not None and is_authorize:
            self.sent.add(key)
        if step == LOST_BEFORE:
            raise httpx.RemoteProtocolError("connection reset", request=request)
        if step in _ERRORS:
            return error_answer(step, request)
        response = self.fake(request)
        if is_authorize and key is not None and response.status_code == 200:
            self.acted.add(key)
        if step == LOST_AFTER:
            raise httpx.RemoteProtocolError("server disconnected", request=request)
        if step == TIMEOUT_AFTER:
            raise httpx.ReadTimeout("no answer in time", request=request)
        return response


def reaches_the_fake(plan: Iterable[str]) -> bool:
    """Whether one authorize command under ``plan`` forwards a call to the fake."""
    steps = list(plan)
    for attempt in range(ATTEMPTS):
        step = steps[attempt] if attempt < len(steps) else FORWARD
        if step in FORWARDED:
            return True
        if step not in RETRIED:
            return False  # a refusal the client does not retry
    return False


@attrs.define
class Tracked:
    """What the test knows of one payment besides the store."""

    payment_id: UUID
    reference: str
    kind: str  # journey, express, charge, tokenization
    flow: Flow
    present: bool = False
    express_token: str | None = attrs.field(default=None, repr=False)
    denied: set[str] = attrs.field(factory=set)
    """Transactions an operator wrongly said did not exist."""


@attrs.frozen
class Pending:
    """A notification Klarna sent that is not (or not only) delivered yet."""

    notification: SignedNotification
    transaction_id: str | None  # the transaction it names, for transaction notifications


def rebuilt(events: Iterable[Payment.Event]) -> Payment | None:
    payment: Payment | None = None
    for event in events:
        payment = event.mutate(payment)
    return payment


class LadderMachine(RuleBasedStateMachine):
    """``Payments`` and ``FakeKlarna`` on one clock, driven by random journeys and faults."""

    persistence = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.fake = FakeKlarna(clock=self.clock)
        self.wire = Wire(self.fake)
        self.client = KlarnaClient(
            self.fake.api_key, transport=httpx.MockTransport(self.wire), retry=RETRY
        )
        self.folder = Path(tempfile.mkdtemp(prefix="klarna-flow-ladder-", dir=FAST_TMP))
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
            klarna=self.client,
            signing_keys=self.fake.signing_keys,
            partner_account_id=self.fake.partner_account_id,
        )
        self.tracked: dict[UUID, Tracked] = {}
        self.pending: list[Pending] = []
        self.notified: set[str] = set()
        self.announced: list[str] = []
        self.announces = False
        self.jumps: tuple[timedelta, ...] = SCALES["minutes"]
        self._refs = itertools.count()

    def teardown(self) -> None:
        self.payments.close()
        self.client.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- helpers --------------------------------------------------------------------

    def state(self, pid: UUID) -> PaymentState:
        return self.payments.get(pid).state

    def ids(self, *states: PaymentState, kinds: Iterable[str] | None = None) -> list[UUID]:
        wanted = set(kinds) if kinds is not None else None
        return [
            pid
            for pid, t in self.tracked.items()
            if (wanted is None or t.kind in wanted) and self.state(pid) in states
        ]

    def initiable(self) -> list[UUID]:
        """``CREATED`` payments with no payment request open, not wrongly resolved."""
        return [
            pid
            for pid in self.ids(S.CREATED)
            if self.payments.get(pid).payment_request_id is None and not self.tracked[pid].denied
        ]

    def awaiting_customer(self) -> list[UUID]:
        """``CREATED`` payments whose payment request the customer can still complete."""
        found = []
        for pid in self.ids(S.CREATED):
            request_id = self.payments.get(pid).payment_request_id
            if request_id is not None and self.fake.state_of(request_id) in (
                "SUBMITTED",
                "IN_PROGRESS",
            ):
                found.append(pid)
        return found

    def authorizable(self) -> list[UUID]:
        return [pid for pid in self.ids(S.COMPLETED) if self.tracked[pid].flow.authorizes]

    def token_sources(self) -> list[UUID]:
        return [
            pid
            for pid in self.ids(S.COMPLETED, kinds=["tokenization"])
            if self.payments.get(pid).customer_token is not None
        ]

    def track(
        self,
        pid: UUID,
        reference: str,
        kind: str,
        flow: Flow,
        *,
        present: bool = False,
        express_token: str | None = None,
    ) -> None:
        assert pid not in self.tracked
        assert self.state(pid) is S.CREATED
        self.tracked[pid] = Tracked(pid, reference, kind, flow, present, express_token)

    def reference(self) -> str:
        return f"ladder-{next(self._refs)}"

    def run_plan(self, plan: Iterable[str], verdict: str | None) -> None:
        """Queue the wire's plan (and Klarna's verdict, when a call will reach the fake)."""
        self.wire.plan = deque(plan)
        if verdict is not None and reaches_the_fake(plan):
            getattr(self.fake, f"{verdict}_next")()

    def done(self) -> None:
        """After a command: the plan's rest is dropped; Klarna notifies each new transaction
        (in examples where it announces them; in others only ``klarna_notifies_a_transaction``
        does, so that payments wait for evidence longer)."""
        self.wire.plan.clear()
        if not self.announces:
            return
        for transaction in self.fake.transactions[len(self.announced) :]:
            tid = transaction.payment_transaction_id
            self.announced.append(tid)
            self.keep(self.fake.transaction_notification(tid), tid)

    def keep(self, notification: SignedNotification, transaction_id: str | None) -> None:
        self.pending.append(Pending(notification, transaction_id))

    # -- creating payments ------------------------------------------------------------

    @initialize(
        present=st.booleans(), scale=st.sampled_from(sorted(SCALES)), announces=st.booleans()
    )
    def one_payment_of_each_kind(self, present: bool, scale: str, announces: bool) -> None:
        """Every example starts with each kind, whichever rules it then enables."""
        self.jumps = SCALES[scale]
        self.announces = announces
        for kind in KINDS:
            self.create(kind, present=present, source=None)

    @rule(data=st.data(), kind=st.sampled_from(KINDS), present=st.booleans(), as_is=st.booleans())
    def create_a_payment(self, data: st.DataObject, kind: str, present: bool, as_is: bool) -> None:
        """A step-up journey of any flow, an Express payment, or a token charge."""
        sources = self.token_sources()
        source = None
        if kind == "charge" and sources and not as_is:
            source = data.draw(st.sampled_from(sources), label="source")
        self.create(kind, present=present, source=source)

    def create(self, kind: str, *, present: bool, source: UUID | None) -> None:
        reference = self.reference()
        if kind in JOURNEYS:
            flow = JOURNEYS[kind]
            pid = self.new_payment(flow, reference)
            kind = "tokenization" if flow is Flow.TOKENIZATION else "journey"
            self.track(pid, reference, kind, flow)
        elif kind == "express":
            token = self.fake.issue_session_token(amount=AMOUNT, currency=CURRENCY)
            pid = self.new_payment(Flow.AUTHORIZATION, reference)
            self.track(pid, reference, "express", Flow.AUTHORIZATION, express_token=token)
        else:  # a token given as is, or the token a tokenization holds
            token = None
            if source is None:
                token = self.fake.issue_customer_token(scopes=[s.value for s in BOTH_SCOPES])
            pid = self.new_payment(
                Flow.AUTHORIZATION,
                reference,
                customer_token=token,
                customer_token_of=source,
                customer_present=present,
            )
            self.track(pid, reference, "charge", Flow.AUTHORIZATION, present=present)

    def new_payment(
        self,
        flow: Flow,
        reference: str,
        *,
        customer_token: str | None = None,
        customer_token_of: UUID | None = None,
        customer_present: bool = False,
    ) -> UUID:
        return self.payments.create(
            flow=flow,
            amount=AMOUNT,
            currency=CURRENCY,
            reference=reference,
            customer_token=customer_token,
            customer_token_of=customer_token_of,
            customer_present=customer_present,
        )

    @precondition(lambda self: self.movable())
    @rule(data=st.data())
    def move_a_payment_on(self, data: st.DataObject) -> None:
        """The next step of an open payment, so that long journeys get explored."""
        pid = data.draw(st.sampled_from(self.movable()), label="payment")
        if pid in self.awaiting_customer():
            self.complete(pid, deliver_later=data.draw(st.booleans()), start_first=False)
            return
        plan = data.draw(PLANS, label="plan")
        verdict = data.draw(VERDICTS, label="verdict")
        if pid in self.initiable():
            self.run_plan(plan, verdict)
            self.initiate(pid)
        else:
            self.run_plan(plan, None if verdict == "approve" else verdict)
            self.authorize(pid)

    def movable(self) -> list[UUID]:
        """Open payments, the furthest on first (the first is drawn most often)."""
        return [*self.authorizable(), *self.awaiting_customer(), *self.initiable()]

    # -- the initial call --------------------------------------------------------------

    def initiate(self, pid: UUID) -> None:
        tracked = self.tracked[pid]
        step_up = StepUpConfig(return_url=RETURN_URL)
        try:
            if tracked.kind == "express":
                outcome = self.payments.initiate(pid, session_token=tracked.express_token)
            elif tracked.kind == "charge":
                outcome = self.payments.initiate(pid, step_up=step_up if tracked.present else None)
            else:
                scopes = BOTH_SCOPES if tracked.flow.tokenizes else None
                outcome = self.payments.initiate(pid, step_up=step_up, customer_token_scopes=scopes)
        finally:
            self.done()
        assert outcome.payment_id == pid
        assert outcome.state is self.state(pid)
        if outcome.result is OutcomeResult.STEP_UP_REQUIRED:
            assert outcome.payment_request_id is not None
            assert not (tracked.kind == "charge" and not tracked.present)

    @precondition(lambda self: self.initiable())
    @rule(data=st.data(), plan=PLANS, verdict=VERDICTS)
    def initiate_a_payment(
        self, data: st.DataObject, plan: tuple[str, ...], verdict: str | None
    ) -> None:
        pid = data.draw(st.sampled_from(self.initiable()), label="payment")
        self.run_plan(plan, verdict)
        self.initiate(pid)

    @precondition(lambda self: self.initiable())
    @rule(data=st.data(), verdict=LOST_VERDICTS)
    def answer_lost_on_initiate(self, data: st.DataObject, verdict: str | None) -> None:
        """Every attempt's answer lost: Klarna acted on the first (after) or on none (before)."""
        pid = data.draw(st.sampled_from(self.initiable()), label="payment")
        lost = data.draw(LOST, label="lost")
        self.run_plan([lost] * ATTEMPTS, verdict)
        self.initiate(pid)
        assert self.state(pid) is S.AUTHORIZING

    # -- the customer at Klarna -------------------------------------------------------

    @precondition(lambda self: self.awaiting_customer())
    @rule(data=st.data(), deliver_later=st.booleans(), start_first=st.booleans())
    def customer_completes(
        self, data: st.DataObject, deliver_later: bool, start_first: bool
    ) -> None:
        pid = data.draw(st.sampled_from(self.awaiting_customer()), label="payment")
        self.complete(pid, deliver_later=deliver_later, start_first=start_first)

    def complete(self, pid: UUID, *, deliver_later: bool, start_first: bool) -> None:
        """The customer completes the payment request at Klarna; Klarna notifies."""
        request_id = self.payments.get(pid).payment_request_id
        assert request_id is not None
        if start_first and self.fake.state_of(request_id) == "SUBMITTED":
            self.keep(self.fake.start_payment_request(request_id), None)
        done = self.fake.complete_payment_request(request_id)
        self.keep(done.notification, None)
        if not deliver_later:
            self.deliver(len(self.pending) - 1, keep=False)

    # -- the final call ----------------------------------------------------------------

    def authorize(self, pid: UUID) -> None:
        payment = self.payments.get(pid)
        try:
            outcome = self.payments.authorize(pid)
        except AuthorizationWindowElapsed:
            assert payment.authorize_by is not None
            assert self.clock.now() >= payment.authorize_by
            assert self.state(pid) is S.EXPIRED
            return
        finally:
            self.done()
        assert payment.authorize_by is not None
        assert self.clock.now() < payment.authorize_by
        assert outcome.state is self.state(pid)

    @precondition(lambda self: self.authorizable())
    @rule(data=st.data(), plan=PLANS, verdict=VERDICTS)
    def authorize_a_payment(
        self, data: st.DataObject, plan: tuple[str, ...], verdict: str | None
    ) -> None:
        pid = data.draw(st.sampled_from(self.authorizable()), label="payment")
        self.run_plan(plan, None if verdict == "approve" else verdict)
        self.authorize(pid)

    @precondition(lambda self: self.authorizable())
    @rule(data=st.data(), verdict=VERDICTS)
    def answer_lost_on_authorize(self, data: st.DataObject, verdict: str | None) -> None:
        pid = data.draw(st.sampled_from(self.authorizable()), label="payment")
        lost = data.draw(LOST, label="lost")
        self.run_plan([lost] * ATTEMPTS, None if verdict == "approve" else verdict)
        self.authorize(pid)

    # -- the resolution ladder ----------------------------------------------------------

    @rule(plan=RESEND_PLANS, older=st.sampled_from([timedelta(0), timedelta(minutes=5)]))
    def reconcile(self, plan: tuple[str, ...], older: timedelta) -> None:
        self.run_reconcile(plan, older)

    def run_reconcile(self, plan: Iterable[str], older: timedelta) -> None:
        authorizing = set(self.ids(S.AUTHORIZING))
        self.wire.plan = deque(plan)
        try:
            outcomes = self.payments.reconcile(older_than=older)
        finally:
            self.done()
        for outcome in outcomes:
            assert outcome.payment_id in authorizing
            assert outcome.state is self.state(outcome.payment_id)
            assert outcome.result is not OutcomeResult.FAILED  # a re-send is never failed

    @rule(data=st.data(), work=st.sampled_from(WORK))
    def time_passes(self, data: st.DataObject, work: tuple[str, ...]) -> None:
        """The clock moves on (on the example's scale); then a worker reconciles, sweeps, both, or
        neither, as a production worker does now and then."""
        self.clock.advance(data.draw(st.sampled_from(self.jumps), label="jump"))
        if "reconcile" in work:
            self.run_reconcile(data.draw(RESEND_PLANS, label="plan"), timedelta(minutes=5))
        if "sweep" in work:
            self.expire_overdue()

    @precondition(lambda self: self.fake.transactions)
    @rule(data=st.data(), capture=st.booleans())
    def klarna_notifies_a_transaction(self, data: st.DataObject, capture: bool) -> None:
        """Klarna sends a transaction notification; it is delivered later (or never)."""
        transaction = data.draw(st.sampled_from(self.unsettled_first()), label="transaction")
        tid = transaction.payment_transaction_id
        if capture and transaction.state == "AUTHORIZED":
            self.keep(self.fake.capture_transaction(tid, amount=AMOUNT // 2), tid)
        else:
            self.keep(self.fake.transaction_notification(tid), tid)

    def settled(self) -> set[str | None]:
        """The transactions of the ``AUTHORIZED`` payments."""
        return {self.payments.get(pid).payment_transaction_id for pid in self.ids(S.AUTHORIZED)}

    def unsettled_first(self) -> list[RecordedTransaction]:
        """The fake's transactions, those whose payment is not AUTHORIZED first."""
        settled = self.settled()
        return sorted(self.fake.transactions, key=lambda t: t.payment_transaction_id in settled)

    @precondition(lambda self: self.pending)
    @rule(data=st.data(), keep=st.booleans())
    def deliver_a_notification(self, data: st.DataObject, keep: bool) -> None:
        """Any undelivered notification, in any order; kept ones come again (duplicates).

        The newest is drawn most often, so older ones tend to come late.
        """
        back = data.draw(st.integers(0, len(self.pending) - 1), label="notification")
        self.deliver(len(self.pending) - 1 - back, keep=keep)

    def deliver(self, index: int, *, keep: bool) -> None:
        pending = self.pending[index] if keep else self.pending.pop(index)
        note = pending.notification
        result = self.payments.handle_notification(note.body, note.headers)
        assert result.status_code == 200, result
        if pending.transaction_id is not None:
            self.notified.add(pending.transaction_id)

    @precondition(lambda self: self.ids(S.AUTHORIZING))
    @rule(data=st.data())
    def a_rung_of_the_ladder(self, data: st.DataObject) -> None:
        """One rung of the ladder acts on a pending payment.

        A day passes and the worker re-sends (past Klarna's key window), the
        worker re-sends now, Klarna's notification arrives, or an operator
        records what the portal shows, rightly or (when Klarna holds a
        transaction) wrongly. Payments Klarna holds a transaction for, and
        those listed as unresolved, are picked first.
        """
        listed = {row.payment_id for row in self.payments.unresolved()}
        pending = sorted(
            self.ids(S.AUTHORIZING),
            key=lambda p: (
                not self.fake.transactions_for(self.tracked[p].reference),
                p not in listed,
                str(p),
            ),
        )
        pid = data.draw(st.sampled_from(pending), label="payment")
        rung = data.draw(st.sampled_from(RUNGS), label="rung")
        if rung == "a day, then a re-send":
            self.clock.advance(timedelta(hours=25))
        if "re-send" in rung:
            self.run_reconcile(data.draw(RESEND_PLANS, label="plan"), timedelta(0))
        elif rung == "notification":
            for transaction in self.fake.transactions_for(self.tracked[pid].reference):
                tid = transaction.payment_transaction_id
                self.keep(self.fake.transaction_notification(tid), tid)
                self.deliver(len(self.pending) - 1, keep=False)
        else:
            self.operator_resolves(pid, wrongly=rung == "operator, wrongly")

    def operator_resolves(self, pid: UUID, *, wrongly: bool) -> None:
        """An operator looks at Klarna's portal (the fake) and records what is there.

        ``wrongly``: "no transaction" although Klarna holds one; Klarna's
        notification of it is on its way (delivered later, or never).
        """
        tracked = self.tracked[pid]
        found = self.fake.transactions_for(tracked.reference)
        wrongly = wrongly and bool(found)
        if wrongly:
            tid = found[0].payment_transaction_id
            tracked.denied.add(tid)
            self.keep(self.fake.transaction_notification(tid), tid)
        by = "ops.wrong" if wrongly else "ops.right"
        if found and not wrongly:
            tid = found[0].payment_transaction_id
            payment = self.payments.resolve(
                pid, by=by, evidence=f"the portal shows {tid}", transaction_id=tid
            )
            assert (payment.state, payment.payment_transaction_id) == (S.AUTHORIZED, tid)
        else:
            payment = self.payments.resolve(
                pid, by=by, evidence="no transaction in the portal", no_transaction=True
            )
            assert payment.state in (S.CREATED, S.COMPLETED)
        last = self.payments.audit_trail(pid)[-1]
        assert (last.cause_kind, last.cause) == ("operator", by)

    @precondition(lambda self: self.ids(S.AUTHORIZING) or self.pending)
    @rule(resent_first=st.booleans(), swept_first=st.booleans())
    def the_ladder_settles_everything(self, resent_first: bool, swept_first: bool) -> None:
        """Rung by rung, every pending authorization ends.

        A re-send answers what it can; every payment still pending is then
        listed as unresolved (for a human), never left silently waiting.
        Klarna's notifications (every one still undelivered, and one for
        each transaction whose payment is not authorized with it; before the
        re-sends, or after) settle those it holds a transaction for, and an
        operator, reading the portal, the rest.
        """
        self.done()  # nothing in the way of the calls
        if swept_first:
            self.expire_overdue()  # never a pending one
        if not resent_first:
            self.klarna_delivers_everything()
        self.payments.reconcile(older_than=timedelta(0))
        waiting = set(self.ids(S.AUTHORIZING))
        assert {row.payment_id for row in self.payments.unresolved()} == waiting
        self.klarna_delivers_everything()
        for pid in self.ids(S.AUTHORIZING):
            assert self.fake.transactions_for(self.tracked[pid].reference) == []
            self.payments.resolve(
                pid, by="ops.settle", evidence="no transaction in the portal", no_transaction=True
            )
        assert self.ids(S.AUTHORIZING) == []

    def klarna_delivers_everything(self) -> None:
        """Every undelivered notification arrives, oldest first; then Klarna notifies each
        transaction whose payment is not ``AUTHORIZED`` with it."""
        while self.pending:
            self.deliver(0, keep=False)
        settled = self.settled()
        for transaction in self.fake.transactions:
            tid = transaction.payment_transaction_id
            if tid not in settled:
                self.keep(self.fake.transaction_notification(tid), tid)
                self.deliver(len(self.pending) - 1, keep=False)

    def expire_overdue(self) -> None:
        authorizing = set(self.ids(S.AUTHORIZING))
        for pid in self.payments.expire_overdue():
            assert pid not in authorizing
            assert self.state(pid) is S.EXPIRED

    @precondition(lambda self: self.ids(S.AUTHORIZED))
    @rule(data=st.data(), plan=PLANS)
    def refresh_a_transaction(self, data: st.DataObject, plan: tuple[str, ...]) -> None:
        """A read of the transaction records what changed; a failed read records nothing."""
        pid = data.draw(st.sampled_from(self.ids(S.AUTHORIZED)), label="payment")
        before = self.payments.get(pid)
        self.wire.plan = deque(plan)
        try:
            payment = self.payments.refresh_transaction(pid)
        except KlarnaError:
            assert self.payments.get(pid) == before
            return
        finally:
            self.done()
        assert payment.state is S.AUTHORIZED
        assert payment.payment_transaction_id == before.payment_transaction_id

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def every_uncertain_authorization_is_accounted_for(self) -> None:
        conflicted = {p.id for p in self.payments.conflicts()}
        for pid, tracked in self.tracked.items():
            events = list(self.payments.stored_events(pid))
            live = self.payments.get(pid)
            assert rebuilt(events) == live
            assert len(events) == live.version
            self.no_failure_after_klarna_acted(events)
            self.no_orphaned_transaction(tracked, live, events, conflicted)
        assert self.wire.sent <= {
            e.idempotency_key
            for pid in self.tracked
            for e in self.payments.stored_events(pid)
            if isinstance(e, Payment.AuthorizationRequested)
        }, "a call went out under a key no intent recorded"
        report = self.payments.verify()
        assert report.ok, report.findings

    def no_failure_after_klarna_acted(self, events: list[Payment.Event]) -> None:
        key: str | None = None
        for event in events:
            if isinstance(event, Payment.AuthorizationRequested):
                key = event.idempotency_key
            elif type(event).__name__ in FAILURES:
                assert key not in self.wire.acted, (
                    f"{type(event).__name__} recorded after Klarna acted on {key}"
                )

    def no_orphaned_transaction(
        self,
        tracked: Tracked,
        live: Payment,
        events: list[Payment.Event],
        conflicted: set[UUID],
    ) -> None:
        found = self.fake.transactions_for(tracked.reference)
        assert len(found) <= 1, f"{len(found)} transactions for payment {tracked.payment_id}"
        if not tracked.flow.authorizes:
            assert found == []
        if live.state is S.AUTHORIZED:
            [transaction] = found
            assert live.payment_transaction_id == transaction.payment_transaction_id
            return
        if not found:
            return
        tid = found[0].payment_transaction_id
        if live.state is S.AUTHORIZING and (tid not in self.notified or tid in tracked.denied):
            return  # waiting for evidence
        assert tid in tracked.denied, (
            f"transaction {tid} at Klarna while payment {live.id} is {live.state.value}"
            + (" after its notification was delivered" if tid in self.notified else "")
        )
        if tid in self.notified:
            named = [e for e in events if isinstance(e, Payment.TransactionConflict)]
            assert tid in {e.payment_transaction_id for e in named}
            assert live.id in conflicted


class SQLiteLadderMachine(LadderMachine):
    """The same machine on a fresh SQLite file per example."""

    persistence = "sqlite"


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=30,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


@pytest.mark.parametrize(
    ("machine", "examples"),
    [(LadderMachine, 60), (SQLiteLadderMachine, 15)],
    ids=["memory", "sqlite"],
)
def test_every_uncertain_authorization_resolves_without_an_orphan(
    machine: type[LadderMachine], examples: int
) -> None:
    run_state_machine_as_test(machine, settings=_settings(examples))


def test_the_wire_knows_what_klarna_acted_on() -> None:
    """The plan is followed call by call, and only 200 answers count as acted on."""
    clock = ManualClock()
    fake = FakeKlarna(clock=clock)
    wire = Wire(fake)
    token = fake.issue_customer_token()
    with (
        KlarnaClient(fake.api_key, transport=httpx.MockTransport(wire), retry=RETRY) as client,
        Payments(
            clock=clock, klarna=client, partner_account_id=fake.partner_account_id
        ) as payments,
    ):
        lost = payments.create(
            flow=Flow.AUTHORIZATION,
            amount=AMOUNT,
            currency=CURRENCY,
            reference="wire-1",
            customer_token=token,
        )
        wire.plan = deque([LOST_BEFORE, LOST_BEFORE, LOST_AFTER])
        outcome = payments.initiate(lost)
        refused = payments.create(
            flow=Flow.AUTHORIZATION,
            amount=AMOUNT,
            currency=CURRENCY,
            reference="wire-2",
            customer_token=token,
        )
        wire.plan = deque(["409"])
        failed = payments.initiate(refused)

    assert (outcome.result, outcome.state) == (OutcomeResult.PENDING, S.AUTHORIZING)
    assert wire.acted == {outcome.idempotency_key}
    assert wire.sent == {outcome.idempotency_key, failed.idempotency_key}
    assert failed.result is OutcomeResult.FAILED
    assert len(fake.requests) == 1  # the fake saw only the call it acted on
    assert [t.reference for t in fake.transactions] == ["wire-1"]
    assert json.loads(error_answer("409", fake.requests[0]).content)["error_code"] == (
        "RESOURCE_CONFLICT"
    )


# -- found by the machine: a re-send past Klarna's key window made a second transaction --
#
# A call without a session token (a token charge, an initial call) whose answer
# was lost after Klarna acted used to be re-sent by ``reconcile`` whenever it
# ran. Past the 24 hours Klarna honours an idempotency key, Klarna takes the
# re-send for a new call: a second transaction, the first orphaned. Now such a
# call is marked unresolved without a call, and Klarna's notification (or an
# operator) settles it.


@pytest.fixture
def wire(clock: ManualClock) -> Wire:
    return Wire(FakeKlarna(clock=clock))


@pytest.fixture
def kit(make_payments: MakePayments, clock: ManualClock, wire: Wire) -> Iterator[Kit]:
    """Payments on every store, calling the fake through the wire."""
    fake = wire.fake
    with KlarnaClient(fake.api_key, transport=httpx.MockTransport(wire), retry=RETRY) as client:
        payments = make_payments(
            klarna=client,
            signing_keys=fake.signing_keys,
            partner_account_id=fake.partner_account_id,
        )
        yield Kit(payments, fake, clock)


def lost_after_klarna_acted(kit: Kit, wire: Wire, call: str) -> tuple[UUID, str]:
    """A payment whose ``call`` reached Klarna, which approved; every answer was lost."""
    reference = f"lost-{call}"
    if call == "token-charge":
        token = kit.fake.issue_customer_token()
        pid = kit.payments.create(
            flow=Flow.AUTHORIZATION,
            amount=AMOUNT,
            currency=CURRENCY,
            reference=reference,
            customer_token=token,
        )
        start = partial(kit.payments.initiate, pid)
    elif call == "initial-approved":  # Klarna approved the initial call at once
        kit.fake.approve_next()
        pid = kit.payments.create(
            flow=Flow.AUTHORIZATION, amount=AMOUNT, currency=CURRENCY, reference=reference
        )
        start = partial(kit.payments.initiate, pid, step_up=StepUpConfig(return_url=RETURN_URL))
    else:  # an Express session token: itself an idempotency key
        token = kit.fake.issue_session_token(amount=AMOUNT, currency=CURRENCY)
        pid = kit.payments.create(
            flow=Flow.AUTHORIZATION, amount=AMOUNT, currency=CURRENCY, reference=reference
        )
        start = partial(kit.payments.initiate, pid, session_token=token)
    wire.plan = deque([LOST_AFTER, TIMEOUT_AFTER, LOST_AFTER])
    assert start().result is OutcomeResult.PENDING
    assert len(kit.fake.transactions_for(reference)) == 1
    assert wire.plan == deque()
    return pid, reference


def authorize_calls(kit: Kit) -> int:
    return sum(r.url.path.endswith(AUTHORIZE_PATH) for r in kit.fake.requests)


@pytest.mark.parametrize("call", ["token-charge", "initial-approved"])
def test_a_call_without_a_session_token_is_not_resent_past_the_key_window(
    kit: Kit, wire: Wire, call: str, caplog: pytest.LogCaptureFixture
) -> None:
    pid, reference = lost_after_klarna_acted(kit, wire, call)
    kit.clock.advance(timedelta(hours=25))
    calls = authorize_calls(kit)

    with caplog.at_level(logging.ERROR, logger="klarna_flow"):
        [outcome] = kit.payments.reconcile()
        [again] = kit.payments.reconcile()

    [transaction] = kit.fake.transactions_for(reference)  # still one: no call went out
    assert authorize_calls(kit) == calls
    assert (outcome.result, outcome.state) == (OutcomeResult.UNRESOLVED, S.AUTHORIZING)
    assert again == outcome
    assert kit.names(pid)[-2:] == ["AuthorizationRequested", "AuthorizationUnresolved"]
    assert [row.payment_id for row in kit.payments.unresolved()] == [pid]
    [logged] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert str(pid) in logged.getMessage()
    assert "24-hour" in logged.getMessage()
    reason = kit.payments.get(pid).unresolved_reason
    assert reason is not None
    assert "second transaction" in reason

    # The second rung: Klarna's notification names the transaction.
    notified = kit.fake.transaction_notification(transaction.payment_transaction_id)
    assert kit.payments.handle_notification(notified.body, notified.headers).status_code == 200
    payment = kit.payments.get(pid)
    assert (payment.state, payment.payment_transaction_id) == (
        S.AUTHORIZED,
        transaction.payment_transaction_id,
    )
    assert kit.payments.unresolved() == []


@pytest.mark.parametrize("call", ["token-charge", "initial-approved"])
def test_inside_the_key_window_the_resend_gets_the_original_answer(
    kit: Kit, wire: Wire, call: str
) -> None:
    pid, reference = lost_after_klarna_acted(kit, wire, call)
    kit.clock.advance(timedelta(hours=22, minutes=59))

    [outcome] = kit.payments.reconcile()

    [transaction] = kit.fake.transactions_for(reference)
    assert (outcome.result, outcome.state) == (OutcomeResult.APPROVED, S.AUTHORIZED)
    assert outcome.payment_transaction_id == transaction.payment_transaction_id
    assert kit.names(pid)[-1] == "AuthorizationApproved"


def test_a_resend_carrying_a_session_token_goes_out_past_the_key_window(
    kit: Kit, wire: Wire
) -> None:
    pid, reference = lost_after_klarna_acted(kit, wire, "express")
    kit.clock.advance(timedelta(hours=25))
    calls = authorize_calls(kit)

    [outcome] = kit.payments.reconcile()

    [transaction] = kit.fake.transactions_for(reference)  # replayed by the token
    assert authorize_calls(kit) == calls + 1
    assert (outcome.result, outcome.payment_transaction_id) == (
        OutcomeResult.APPROVED,
        transaction.payment_transaction_id,
    )
    assert kit.payments.get(pid).state is S.AUTHORIZED


def test_reconcile_async_does_not_resend_past_the_key_window_either(kit: Kit, wire: Wire) -> None:
    pid, reference = lost_after_klarna_acted(kit, wire, "token-charge")
    kit.clock.advance(timedelta(hours=25))
    calls = authorize_calls(kit)

    async def main() -> list[AuthorizationOutcome]:
        transport = httpx.MockTransport(kit.fake)
        async with AsyncKlarnaClient(kit.fake.api_key, transport=transport, retry=RETRY) as client:
            kit.payments.async_klarna = client
            try:
                return await kit.payments.reconcile_async()
            finally:
                kit.payments.async_klarna = None

    [outcome] = asyncio.run(main())

    assert (outcome.result, outcome.state) == (OutcomeResult.UNRESOLVED, S.AUTHORIZING)
    assert authorize_calls(kit) == calls
    assert len(kit.fake.transactions_for(reference)) == 1
    assert kit.names(pid)[-1] == "AuthorizationUnresolved"
