"""The demo's scenarios: Klarna's journey played against FakeKlarna, one payment each.

Only the library's public API is used here, the way a partner's backend would
use it: ``create``, ``initiate`` (the initial authorize call, with a step-up
configuration or an earlier session token), ``handle_notification`` (Klarna's
signed notifications), ``authorize`` (the final call), ``cancel`` and the
expiry sweep. :class:`~klarna_flow.testing.FakeKlarna` plays Klarna and the
customer: it completes or declines payment requests and signs the
notifications. One :class:`~klarna_flow.testing.ManualClock`, shared by the
fake and the application, moves time forward for Klarna's request expiry and
the 60-minute window.

Each scenario notes what happened, one step at a time, with the state the
payment was left in. No step names a token: session and customer tokens pass
from the fake to the application and are sealed at rest, never shown.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from uuid import UUID

import attrs

from klarna_flow import (
    AuthorizationOutcome,
    AuthorizationWindowElapsed,
    Flow,
    KlarnaFlowError,
    Payments,
    SealedSecret,
    StepUpConfig,
    WrongFlow,
)
from klarna_flow.testing import FakeKlarna, ManualClock, SignedNotification

__all__ = ["DemoScenarioFailed", "Journey", "Played", "play_all"]

AMOUNT = 11800
CURRENCY = "EUR"
RETURN_URL = "https://shop.example/klarna/return"
REQUEST_EXPIRY = timedelta(minutes=20)
"""The ``interaction_expiry`` of the request the demo lets expire at Klarna."""
SWEEP_AT = REQUEST_EXPIRY + timedelta(minutes=1)
"""When the expiry sweep runs, after the payment requests were made."""
TOO_LATE = timedelta(minutes=1)
"""How long after its 60-minute window closed the demo authorizes a payment."""
TRANSACTION_AUTHORIZED = "payment.transaction.state-change.authorized"


class DemoScenarioFailed(KlarnaFlowError):
    """A scenario did not end the way the journey says it must."""


@attrs.frozen
class Played:
    """One scenario as it was played: its payment and what happened, step by step."""

    path: str
    payment_id: UUID
    happened: tuple[str, ...]


@attrs.define
class _Scenario:
    path: str
    payment_id: UUID
    steps: list[str] = attrs.field(factory=list)


class Journey:
    """The demo's moving parts: the application, the fake Klarna, their clock."""

    def __init__(self, payments: Payments, fake: FakeKlarna, clock: ManualClock, run: str) -> None:
        self.payments = payments
        self.fake = fake
        self.clock = clock
        self.run = run
        self.played: list[Played] = []

    # -- steps every scenario shares ------------------------------------------------------

    def start(
        self, path: str, flow: Flow = Flow.AUTHORIZATION, *, customer_token_of: UUID | None = None
    ) -> _Scenario:
        """A new payment for the scenario ``path``, under a reference of this run."""
        payment_id = self.payments.create(
            flow=flow,
            amount=AMOUNT,
            currency=CURRENCY,
            reference=f"demo-{self.run}-{path}",
            customer_token_of=customer_token_of,
        )
        scenario = _Scenario(path, payment_id)
        self.note(scenario, f"create ({flow.value})")
        return scenario

    def note(self, scenario: _Scenario, step: str) -> None:
        """Record a step and the state it left the payment in."""
        state = self.payments.get(scenario.payment_id).state.value
        scenario.steps.append(f"{step} -> {state}")

    def done(self, scenario: _Scenario) -> UUID:
        self.played.append(Played(scenario.path, scenario.payment_id, tuple(scenario.steps)))
        return scenario.payment_id

    def deliver(self, notification: SignedNotification) -> str:
        """Klarna's signed notification reaches the endpoint; what it answered."""
        answer = self.payments.handle_notification(notification.body, notification.headers)
        if answer.status_code != 200:
            msg = f"the {notification.json()['metadata']['event_type']} notification got {answer}"
            raise DemoScenarioFailed(msg)
        return f"HTTP {answer.status_code} {answer.outcome}"

    def step_up(self, scenario: _Scenario, expiry: timedelta | None = None) -> str:
        """The initial call, answered with a payment request; its id."""
        config = StepUpConfig(return_url=RETURN_URL, interaction_expiry=expiry)
        outcome = self.payments.initiate(scenario.payment_id, step_up=config)
        expected(outcome, "STEP_UP_REQUIRED")
        assert outcome.payment_request_id is not None  # a step-up names its request
        step = f"initiate: STEP_UP_REQUIRED, customer sent to {outcome.payment_request_url}"
        if expiry is not None:
            expires_at = self.payments.get(scenario.payment_id).request_expires_at
            step += f" (Klarna's expires_at: {_at(expires_at)})"
        self.note(scenario, step)
        return outcome.payment_request_id

    def customer_completes(self, scenario: _Scenario, request_id: str) -> None:
        """The customer completes at Klarna; the signed ``completed`` notification arrives."""
        done = self.fake.complete_payment_request(request_id)
        answer = self.deliver(done.notification)
        held = _tokens_held(self.payments, scenario.payment_id)
        self.note(
            scenario, f"customer completed at Klarna; completed notification: {answer}, {held}"
        )

    def authorize(self, scenario: _Scenario, result: str = "APPROVED") -> AuthorizationOutcome:
        """The final authorization."""
        outcome = expected(self.payments.authorize(scenario.payment_id), result)
        self.note(scenario, f"authorize (final call): {_described(outcome)}")
        return outcome

    def completed(self, path: str, flow: Flow = Flow.AUTHORIZATION) -> _Scenario:
        """A payment whose customer completed: initiate, step-up, notification."""
        scenario = self.start(path, flow)
        self.customer_completes(scenario, self.step_up(scenario))
        return scenario

    # -- the scenarios -------------------------------------------------------------------

    def with_step_up(self) -> UUID:
        """The whole journey: step-up, the customer, the notification, the final call."""
        scenario = self.completed("step-up")
        self.authorize(scenario)
        return self.done(scenario)

    def express(self) -> UUID:
        """A session token obtained earlier (Express checkout): approved at once."""
        earlier = self.fake.issue_session_token(amount=AMOUNT, currency=CURRENCY)
        scenario = self.start("express")
        outcome = expected(
            self.payments.initiate(scenario.payment_id, session_token=earlier), "APPROVED"
        )
        self.note(scenario, f"initiate with a session token from earlier: {_described(outcome)}")
        return self.done(scenario)

    def tokenization(self) -> UUID:
        """A pure tokenization: the customer token is held (sealed), nothing to authorize."""
        return self.done(self.completed("tokenization", Flow.TOKENIZATION))

    def token_charge(self, signup: UUID) -> UUID:
        """A charge of the stored customer token, customer not present."""
        scenario = self.start("token-charge", customer_token_of=signup)
        outcome = expected(self.payments.initiate(scenario.payment_id), "APPROVED")
        step = f"initiate with the customer token of {signup}, customer not present"
        self.note(scenario, f"{step}: {_described(outcome)}")
        return self.done(scenario)

    def pay_and_tokenize(self) -> UUID:
        """A payment that also leaves a customer token."""
        scenario = self.completed("pay-and-tokenize", Flow.AUTHORIZATION_AND_TOKENIZATION)
        self.authorize(scenario)
        return self.done(scenario)

    def declined(self) -> UUID:
        """Klarna declines the initial call."""
        scenario = self.start("declined")
        self.fake.decline_next("demo: declined")
        config = StepUpConfig(return_url=RETURN_URL)
        outcome = expected(self.payments.initiate(scenario.payment_id, step_up=config), "DECLINED")
        reason = self.payments.get(scenario.payment_id).decline_reason
        self.note(scenario, f"initiate: {outcome.result} (reason: {reason})")
        return self.done(scenario)

    def declined_by_webhook(self) -> UUID:
        """Klarna declines the payment request while the customer is there."""
        scenario = self.start("declined-by-webhook")
        request_id = self.step_up(scenario)
        answer = self.deliver(self.fake.decline_payment_request(request_id))
        self.note(scenario, f"Klarna declined the request; declined notification: {answer}")
        return self.done(scenario)

    def canceled(self) -> UUID:
        """The customer abandons the request; it is canceled at Klarna first."""
        scenario = self.start("canceled")
        request_id = self.step_up(scenario)
        self.payments.cancel(scenario.payment_id)
        at_klarna = self.fake.state_of(request_id)
        self.note(scenario, f"cancel with the request open: the request is {at_klarna} at Klarna")
        return self.done(scenario)

    def lost_answer(self) -> UUID:
        """Klarna approves the final call, the answer is lost; its notification settles it."""
        scenario = self.completed("lost-answer")
        self.fake.drop_next(after_processing=True)
        self.authorize(scenario, result="PENDING")
        reference = self.payments.get(scenario.payment_id).reference
        [transaction] = self.fake.transactions_for(reference)
        notification = self.fake.transaction_notification(
            transaction.payment_transaction_id, event_type=TRANSACTION_AUTHORIZED
        )
        answer = self.deliver(notification)
        transaction_id = self.payments.get(scenario.payment_id).payment_transaction_id
        self.note(
            scenario, f"Klarna's transaction notification: {answer}, transaction {transaction_id}"
        )
        return self.done(scenario)

    def tokenization_guard(self) -> UUID:
        """A pure tokenization has no transaction: the final authorize is refused."""
        scenario = self.completed("tokenization-guard", Flow.TOKENIZATION)
        error = refused(lambda: self.payments.authorize(scenario.payment_id), WrongFlow)
        self.note(scenario, f"authorize refused ({error}): nothing sent, nothing recorded")
        return self.done(scenario)

    def expiries(self) -> tuple[UUID, UUID]:
        """Klarna's own ``expires_at`` passes, then the 60-minute window."""
        window = self.completed("window-elapsed")
        expiring = self.start("expired-at-klarna")
        self.step_up(expiring, expiry=REQUEST_EXPIRY)
        self.clock.advance(SWEEP_AT)
        swept = self.payments.expire_overdue()
        if expiring.payment_id not in swept or window.payment_id in swept:
            msg = "the expiry sweep did not expire the request past Klarna's expires_at alone"
            raise DemoScenarioFailed(msg)
        self.note(
            expiring, f"clock {_minutes(SWEEP_AT)} on, past Klarna's expires_at; expiry sweep"
        )
        authorize_by = self.payments.get(window.payment_id).authorize_by
        assert authorize_by is not None  # a completed authorization flow has a window
        self.clock.advance(authorize_by + TOO_LATE - self.clock.now())
        error = refused(
            lambda: self.payments.authorize(window.payment_id), AuthorizationWindowElapsed
        )
        step = "clock past the 60-minute window; authorize refused by its guard"
        self.note(window, f"{step} ({error}), PaymentExpired recorded")
        return self.done(expiring), self.done(window)


def play_all(journey: Journey) -> tuple[Played, ...]:
    """Play every scenario, one payment each, in order; the step-up one is first."""
    journey.with_step_up()
    journey.express()
    journey.token_charge(journey.tokenization())
    journey.pay_and_tokenize()
    journey.declined()
    journey.declined_by_webhook()
    journey.canceled()
    journey.lost_answer()
    journey.tokenization_guard()
    journey.expiries()
    return tuple(journey.played)


def expected(outcome: AuthorizationOutcome, result: str) -> AuthorizationOutcome:
    """``outcome`` if its result is ``result``; else the demo stops, saying so."""
    if outcome.result != result:
        msg = (
            f"payment {outcome.payment_id}: expected {result}, Klarna's call ended {outcome.result}"
        )
        raise DemoScenarioFailed(msg)
    return outcome


def refused(call: Callable[[], object], error: type[KlarnaFlowError]) -> str:
    """The name of ``error``, which ``call`` must raise."""
    try:
        call()
    except error:
        return error.__name__
    raise DemoScenarioFailed(f"expected {error.__name__}, the call went through")


def _described(outcome: AuthorizationOutcome) -> str:
    if outcome.result == "PENDING":
        return "PENDING (the answer was lost after Klarna acted)"
    if outcome.payment_transaction_id is not None:
        return f"{outcome.result}, transaction {outcome.payment_transaction_id}"
    return str(outcome.result)


def _tokens_held(payments: Payments, payment_id: UUID) -> str:
    """Which tokens the payment holds, by name and key id only."""
    payment = payments.get(payment_id)
    tokens: tuple[tuple[str, SealedSecret | None], ...] = (
        ("session token", payment.session_token),
        ("customer token", payment.customer_token),
    )
    held = [f"{name} sealed (key {sealed.key_id})" for name, sealed in tokens if sealed]
    return ", ".join(held) or "no token"


def _minutes(span: timedelta) -> str:
    return f"{span.total_seconds() / 60:.0f} minutes"


def _at(instant: datetime | None) -> str:
    return "-" if instant is None else instant.isoformat(timespec="seconds")
