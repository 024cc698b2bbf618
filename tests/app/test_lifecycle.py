"""The lifecycle table of ``/work/shared/design.md``, row by row and guard by guard.

``Payments`` commands (create, complete, expire, cancel) on every store, and
the ``Payment`` aggregate's ``request_authorization`` / ``approve`` /
``decline`` / ``require_step_up`` / ``fail`` saved through the application's
store, so each row of the table is reached without a Klarna double (the
authorize path itself is tested in ``test_authorize.py``).

Every refused command raises a typed error that says why, and records nothing.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from uuid import UUID

import attrs
import pytest

from klarna_flow import (
    CommandRefused,
    Flow,
    InvalidTransition,
    MissingToken,
    NotYetExpired,
    Payment,
    Payments,
    PaymentState,
    SealedSecret,
    WrongFlow,
    diagram,
)
from klarna_flow.testing import ManualClock

S = PaymentState
WINDOW = timedelta(minutes=60)
LIFETIME = timedelta(hours=3)
TICK = timedelta(microseconds=1)
AUTHORIZING_FLOWS = [Flow.AUTHORIZATION, Flow.AUTHORIZATION_AND_TOKENIZATION]

# The transition table of the design, as (trigger, source, dest).
DESIGN_TABLE = {
    ("initiate", S.CREATED, S.AUTHORIZING),
    ("approve_tokenization", S.AUTHORIZING, S.COMPLETED),
    ("fail_initiation", S.AUTHORIZING, S.CREATED),
    ("complete", S.CREATED, S.COMPLETED),
    ("request_authorization", S.COMPLETED, S.AUTHORIZING),
    ("approve", S.AUTHORIZING, S.AUTHORIZED),
    ("decline", S.AUTHORIZING, S.DECLINED),
    ("decline_request", S.CREATED, S.DECLINED),
    ("require_step_up", S.AUTHORIZING, S.CREATED),
    ("fail", S.AUTHORIZING, S.COMPLETED),
    ("expire", S.CREATED, S.EXPIRED),
    ("expire", S.COMPLETED, S.EXPIRED),
    ("cancel", S.CREATED, S.CANCELED),
    ("cancel", S.COMPLETED, S.CANCELED),
}
TRIGGERS = sorted({t for t, _, _ in DESIGN_TABLE})
FINAL = [S.AUTHORIZED, S.DECLINED, S.EXPIRED, S.CANCELED]


@attrs.define
class Driver:
    """Drives payments through the public API and brings them to any state."""

    payments: Payments
    clock: ManualClock
    session_token: str
    customer_token: str
    _refs: Iterator[int] = attrs.field(factory=itertools.count)

    def create(self, flow: Flow = Flow.AUTHORIZATION) -> UUID:
        return self.payments.create(
            flow=flow, amount=10_000, currency="EUR", reference=f"order-{next(self._refs)}"
        )

    def tokens(self, flow: Flow) -> dict[str, str | None]:
        return {
            "session_token": self.session_token if flow.authorizes else None,
            "customer_token": self.customer_token if flow.tokenizes else None,
        }

    def events(self, payment_id: UUID) -> list[Payment.Event]:
        return list(self.payments.stored_events(payment_id))

    def do(self, trigger: str, payment_id: UUID) -> Payment:
        """Run one trigger of the table with arguments that satisfy its inputs."""
        if trigger == "complete":
            tokens = self.tokens(self.payments.get(payment_id).flow)
            return self.payments.complete(
                payment_id,
                session_token=tokens["session_token"],
                customer_token=tokens["customer_token"],
            )
        if trigger == "expire":
            return self.payments.expire(payment_id)
        if trigger == "cancel":
            return self.payments.cancel(payment_id)
        payment = self.payments.get(payment_id)
        DOMAIN_COMMANDS[trigger](payment, self.payments)
        self.payments._store.save_payment(payment)
        return self.payments.get(payment_id)

    def reach(self, state: PaymentState, flow: Flow = Flow.AUTHORIZATION) -> UUID:
        """A new payment of ``flow`` brought to ``state`` by recorded commands."""
        pid = self.create(flow)
        if state is S.CREATED:
            return pid
        if state is S.CANCELED:
            self.do("cancel", pid)
            return pid
        if state is S.EXPIRED:
            self.clock.advance(LIFETIME)
            self.do("expire", pid)
            return pid
        self.do("complete", pid)
        if state is S.COMPLETED:
            return pid
        self.do("request_authorization", pid)
        if state is S.AUTHORIZING:
            return pid
        self.do({S.AUTHORIZED: "approve", S.DECLINED: "decline"}[state], pid)
        return pid


def _request_authorization(payment: Payment, payments: Payments) -> None:
    key = f"idem-{payment.authorization_attempts + 1}"
    payment.request_authorization(idempotency_key=key, now=payments.now())


def _approve(payment: Payment, payments: Payments) -> None:
    payment.approve(
        payment_transaction_id="krn:payment:eu1:transaction:6c1e",
        correlation_id="corr-approve",
        transaction_expires_at=payments.now() + timedelta(days=28),
        now=payments.now(),
        cause="command:test",
    )


def _decline(payment: Payment, payments: Payments) -> None:
    payment.decline(
        correlation_id="corr-decline", reason="RISK", now=payments.now(), cause="command:test"
    )


def _decline_request(payment: Payment, payments: Payments) -> None:
    payment.decline_request(now=payments.now(), cause="notification:evt-declined")


def _require_step_up(payment: Payment, payments: Payments) -> None:
    payment.require_step_up(
        correlation_id="corr-step-up",
        payment_request_id="krn:payment:eu1:payment-request:step-up",
        payment_request_url="https://pay.klarna.example/step-up",
        request_lifetime=payments.request_lifetime,
        now=payments.now(),
        cause="command:test",
    )


def _fail(payment: Payment, payments: Payments) -> None:
    payment.fail(
        error="KlarnaServerError: 503",
        status_code=503,
        correlation_id="corr-fail",
        now=payments.now(),
        cause="command:test",
    )


def _initiate(payment: Payment, payments: Payments) -> None:
    key = f"idem-{payment.authorization_attempts + 1}"
    payment.initiate(idempotency_key=key, payload={}, session_token=None, now=payments.now())


def _approve_tokenization(payment: Payment, payments: Payments) -> None:
    payment.approve_tokenization(
        customer_token=SealedSecret(key_id="k1", nonce="bm9uY2U=", ciphertext="Y2lwaGVy"),
        customer_token_reference=None,
        scopes=["payment:customer_not_present"],
        correlation_id="corr-token",
        now=payments.now(),
        cause="command:test",
    )


def _fail_initiation(payment: Payment, payments: Payments) -> None:
    payment.fail_initiation(
        error="KlarnaValidationError: 400",
        status_code=400,
        correlation_id="corr-fail",
        now=payments.now(),
        cause="command:test",
    )


DOMAIN_COMMANDS: dict[str, Callable[[Payment, Payments], None]] = {
    "initiate": _initiate,
    "approve_tokenization": _approve_tokenization,
    "fail_initiation": _fail_initiation,
    "request_authorization": _request_authorization,
    "approve": _approve,
    "decline": _decline,
    "decline_request": _decline_request,
    "require_step_up": _require_step_up,
    "fail": _fail,
}


@pytest.fixture
def driver(
    payments: Payments, clock: ManualClock, session_token: str, customer_token: str
) -> Driver:
    return Driver(payments, clock, session_token, customer_token)


@contextmanager
def records_nothing(driver: Driver, payment_id: UUID) -> Iterator[None]:
    """The block must leave the stored payment exactly as it was."""
    before = driver.payments.get(payment_id)
    count = len(driver.events(payment_id))
    yield
    after = driver.payments.get(payment_id)
    assert len(driver.events(payment_id)) == count
    assert after.version == before.version == count
    assert after == before


@contextmanager
def refused(
    driver: Driver, payment_id: UUID, error: type[CommandRefused], *, command: str
) -> Iterator[pytest.ExceptionInfo[CommandRefused]]:
    """The block must raise ``error`` for ``command``, say why, and record nothing."""
    with records_nothing(driver, payment_id), pytest.raises(error) as info:
        yield info
    state = driver.payments.get(payment_id).state
    assert info.value.payment_id == payment_id
    assert info.value.command == command
    assert info.value.state == state.value
    assert str(payment_id) in str(info.value) or state.value in str(info.value)
    assert_no_secret(info.value, driver.session_token, driver.customer_token)


def assert_no_secret(error: BaseException, *secrets: str) -> None:
    shown = [str(error), repr(error), repr(error.args), repr(vars(error))]
    for secret in secrets:
        for text in shown:
            assert secret not in text


def refuse_in_domain(
    driver: Driver, payment_id: UUID, trigger: str, error: type[CommandRefused]
) -> CommandRefused:
    """Run a domain command that must be refused; nothing may be pending or stored."""
    with records_nothing(driver, payment_id):
        payment = driver.payments.get(payment_id)
        with pytest.raises(error) as info:
            DOMAIN_COMMANDS[trigger](payment, driver.payments)
        assert payment.collect_events() == []
        driver.payments._store.save_payment(payment)
    assert info.value.command == trigger
    assert_no_secret(info.value, driver.session_token, driver.customer_token)
    return info.value


# -- the table itself --------------------------------------------------------


def _diagram_rows(text: str, pattern: str) -> set[tuple[str, PaymentState, PaymentState]]:
    rows = set()
    for source, dest, trigger in re.findall(pattern, text, flags=re.MULTILINE):
        rows.add((trigger, PaymentState(source), PaymentState(dest)))
    return rows


def test_mermaid_diagram_draws_exactly_the_design_table() -> None:
    text = diagram("mermaid")
    assert _diagram_rows(text, r"^\s+([A-Z]+) --> ([A-Z]+): (\w+)") == DESIGN_TABLE
    finals = set(re.findall(r"^\s+([A-Z]+) --> \[\*\]$", text, flags=re.MULTILINE))
    assert finals == {s.value for s in FINAL}


def test_dot_diagram_draws_exactly_the_design_table() -> None:
    text = diagram("dot")
    assert _diagram_rows(text, r'^\s+([A-Z]+) -> ([A-Z]+) \[label="(\w+)') == DESIGN_TABLE


def test_diagram_names_every_guard_of_the_design() -> None:
    text = diagram()
    request = next(line for line in text.splitlines() if "request_authorization" in line)
    for guard in ("flow_includes_payment_transaction", "holds_session_token", "window"):
        assert guard in request
    assert "tokens_fit_flow" in next(ln for ln in text.splitlines() if ": complete" in ln)


# -- complete: CREATED -> COMPLETED, tokens fit the flow ---------------------


@pytest.mark.parametrize("flow", list(Flow))
def test_complete_with_fitting_tokens(driver: Driver, flow: Flow) -> None:
    pid = driver.create(flow)
    driver.clock.advance(timedelta(minutes=7))
    live = driver.do("complete", pid)
    loaded = driver.payments.get(pid)
    assert loaded == live
    assert loaded.state is S.COMPLETED
    assert loaded.version == 2
    assert loaded.completed_at == driver.clock.now()
    assert (loaded.session_token is not None) is flow.authorizes
    assert (loaded.customer_token is not None) is flow.tokenizes
    if flow.authorizes:
        assert loaded.session_token is not None
        sealed = loaded.session_token
        assert driver.payments._store.unseal(pid, "session_token", sealed) == driver.session_token
        assert loaded.authorize_by == driver.clock.now() + WINDOW
    else:
        assert loaded.authorize_by is None
    assert driver.session_token not in repr(loaded)
    assert driver.customer_token not in repr(loaded)


@pytest.mark.parametrize("flow", list(Flow))
def test_complete_refuses_tokens_that_do_not_fit_the_flow(driver: Driver, flow: Flow) -> None:
    pid = driver.create(flow)
    fitting = (flow.authorizes, flow.tokenizes)
    for session, customer in itertools.product([False, True], repeat=2):
        if (session, customer) == fitting:
            continue
        with refused(driver, pid, MissingToken, command="complete") as info:
            driver.payments.complete(
                pid,
                session_token=driver.session_token if session else None,
                customer_token=driver.customer_token if customer else None,
            )
        assert "token" in str(info.value)
        assert info.value.state == "CREATED"


# -- request_authorization: COMPLETED -> AUTHORIZING --------------------------


@pytest.mark.parametrize("flow", AUTHORIZING_FLOWS)
def test_request_authorization_fixes_the_key_before_any_call(driver: Driver, flow: Flow) -> None:
    pid = driver.reach(S.COMPLETED, flow)
    driver.clock.advance(timedelta(minutes=3))
    payment = driver.payments.get(pid)
    payment.request_authorization(idempotency_key="key-1", now=driver.payments.now())
    assert payment.state is S.AUTHORIZING
    driver.payments._store.save_payment(payment)
    loaded = driver.payments.get(pid)
    assert loaded == payment
    assert loaded.state is S.AUTHORIZING
    assert loaded.idempotency_key == "key-1"
    assert loaded.authorization_attempts == 1
    last = driver.events(pid)[-1]
    assert isinstance(last, Payment.AuthorizationRequested)
    assert last.timestamp == driver.clock.now()
    assert last.cause == "command:authorize"


def test_request_authorization_refuses_a_tokenization_payment(driver: Driver) -> None:
    pid = driver.reach(S.COMPLETED, Flow.TOKENIZATION)
    error = refuse_in_domain(driver, pid, "request_authorization", WrongFlow)
    assert "tokenization" in str(error)
    assert error.state == "COMPLETED"


def test_request_authorization_refuses_a_created_tokenization_payment(driver: Driver) -> None:
    pid = driver.reach(S.CREATED, Flow.TOKENIZATION)
    refuse_in_domain(driver, pid, "request_authorization", InvalidTransition)


def test_request_authorization_is_allowed_until_the_last_instant_of_the_window(
    driver: Driver,
) -> None:
    pid = driver.reach(S.COMPLETED)
    driver.clock.advance(WINDOW - TICK)
    assert driver.do("request_authorization", pid).state is S.AUTHORIZING


@pytest.mark.parametrize("late", [timedelta(0), TICK, timedelta(days=400)])
def test_request_authorization_refuses_once_the_window_elapsed(
    driver: Driver, late: timedelta
) -> None:
    pid = driver.reach(S.COMPLETED)
    driver.clock.advance(WINDOW + late)
    error = refuse_in_domain(driver, pid, "request_authorization", CommandRefused)
    assert "window" in str(error)
    assert not isinstance(error, (WrongFlow, MissingToken, InvalidTransition))


def test_the_window_runs_from_the_completion_klarna_reported(driver: Driver) -> None:
    pid = driver.create()
    driver.clock.advance(timedelta(minutes=30))
    completed_at = driver.clock.now() - timedelta(minutes=50)
    driver.payments.complete(pid, session_token=driver.session_token, completed_at=completed_at)
    assert driver.payments.get(pid).authorize_by == completed_at + WINDOW
    driver.clock.advance(timedelta(minutes=10))
    refuse_in_domain(driver, pid, "request_authorization", CommandRefused)


def test_request_authorization_refuses_without_a_session_token(driver: Driver) -> None:
    # No recorded command leaves an authorization flow COMPLETED without a
    # session token (complete refuses it); the guard still stands on its own.
    pid = driver.reach(S.COMPLETED)
    with records_nothing(driver, pid):
        payment = driver.payments.get(pid)
        payment.session_token = None
        with pytest.raises(MissingToken, match="session token") as info:
            _request_authorization(payment, driver.payments)
        assert payment.collect_events() == []
    assert info.value.command == "request_authorization"


# -- outcomes of an authorization: AUTHORIZING -> ... ------------------------


@pytest.mark.parametrize("flow", AUTHORIZING_FLOWS)
def test_approve_records_the_transaction(driver: Driver, flow: Flow) -> None:
    pid = driver.reach(S.AUTHORIZING, flow)
    payment = driver.do("approve", pid)
    assert payment.state is S.AUTHORIZED
    assert payment.payment_transaction_id == "krn:payment:eu1:transaction:6c1e"
    assert payment.correlation_id == "corr-approve"
    assert payment.version == 4


def test_decline_is_final(driver: Driver) -> None:
    pid = driver.reach(S.AUTHORIZING)
    payment = driver.do("decline", pid)
    assert payment.state is S.DECLINED
    assert payment.decline_reason == "RISK"


def test_step_up_sends_the_customer_back_with_a_new_request(driver: Driver) -> None:
    pid = driver.reach(S.AUTHORIZING)
    driver.clock.advance(timedelta(minutes=20))
    payment = driver.do("require_step_up", pid)
    assert payment.state is S.CREATED
    assert payment.payment_request_id == "krn:payment:eu1:payment-request:step-up"
    assert payment.step_up_url == "https://pay.klarna.example/step-up"
    assert payment.session_token is None
    assert payment.completed_at is None
    assert payment.authorize_by is None
    assert payment.request_expires_at == driver.clock.now() + LIFETIME
    # the customer acts again: a second completion and a second attempt
    driver.do("complete", pid)
    again = driver.do("request_authorization", pid)
    assert again.state is S.AUTHORIZING
    assert again.authorization_attempts == 2
    assert again.idempotency_key == "idem-2"


def test_fail_allows_a_retry_while_the_window_is_open(driver: Driver) -> None:
    pid = driver.reach(S.AUTHORIZING)
    payment = driver.do("fail", pid)
    assert payment.state is S.COMPLETED
    assert payment.last_error == "KlarnaServerError: 503"
    assert payment.session_token is not None
    driver.clock.advance(WINDOW - TICK)
    assert driver.do("request_authorization", pid).authorization_attempts == 2
    driver.do("fail", pid)
    driver.clock.advance(TICK)
    refuse_in_domain(driver, pid, "request_authorization", CommandRefused)
    assert driver.do("expire", pid).state is S.EXPIRED


# -- decline_request: CREATED -> DECLINED, reported by Klarna -----------------


@pytest.mark.parametrize("flow", list(Flow))
def test_a_declined_payment_request_declines_a_created_payment(driver: Driver, flow: Flow) -> None:
    pid = driver.reach(S.CREATED, flow)
    payment = driver.do("decline_request", pid)
    assert payment.state is S.DECLINED
    assert payment.decline_reason == "PAYMENT_REQUEST_DECLINED"
    assert payment.last_result is None  # Klarna was never asked to authorize
    [_, declined] = driver.events(pid)
    assert isinstance(declined, Payment.PaymentRequestDeclined)
    assert declined.cause == "notification:evt-declined"


def test_a_declined_step_up_request_declines_the_payment(driver: Driver) -> None:
    pid = driver.reach(S.AUTHORIZING)
    driver.do("require_step_up", pid)
    payment = driver.do("decline_request", pid)
    assert payment.state is S.DECLINED
    assert payment.authorization_attempts == 1


# -- expire: CREATED, COMPLETED -> EXPIRED ------------------------------------


def test_expire_a_created_payment_once_the_request_lifetime_ran_out(driver: Driver) -> None:
    pid = driver.create()
    driver.clock.advance(LIFETIME - TICK)
    with refused(driver, pid, NotYetExpired, command="expire") as info:
        driver.payments.expire(pid)
    assert "not run out" in str(info.value)
    driver.clock.advance(TICK)
    payment = driver.do("expire", pid)
    assert payment.state is S.EXPIRED
    assert payment.expiry_reason == "REQUEST_LIFETIME"


@pytest.mark.parametrize("flow", AUTHORIZING_FLOWS)
def test_expire_a_completed_payment_once_the_window_elapsed(driver: Driver, flow: Flow) -> None:
    pid = driver.reach(S.COMPLETED, flow)
    driver.clock.advance(WINDOW - TICK)
    with refused(driver, pid, NotYetExpired, command="expire"):
        driver.payments.expire(pid)
    driver.clock.advance(TICK)
    payment = driver.do("expire", pid)
    assert payment.state is S.EXPIRED
    assert payment.expiry_reason == "AUTHORIZATION_WINDOW"


def test_a_completed_tokenization_payment_never_expires(driver: Driver) -> None:
    pid = driver.reach(S.COMPLETED, Flow.TOKENIZATION)
    driver.clock.advance(timedelta(days=3650))
    with refused(driver, pid, InvalidTransition, command="expire") as info:
        driver.payments.expire(pid)
    assert "final" in str(info.value)


# -- cancel: CREATED, COMPLETED -> CANCELED -----------------------------------


@pytest.mark.parametrize("source", [S.CREATED, S.COMPLETED])
@pytest.mark.parametrize("flow", AUTHORIZING_FLOWS)
def test_cancel_before_authorization(driver: Driver, source: PaymentState, flow: Flow) -> None:
    pid = driver.reach(source, flow)
    payment = driver.do("cancel", pid)
    assert payment.state is S.CANCELED
    assert driver.payments.get(pid) == payment


def test_cancel_a_created_tokenization_payment(driver: Driver) -> None:
    pid = driver.reach(S.CREATED, Flow.TOKENIZATION)
    assert driver.do("cancel", pid).state is S.CANCELED


def test_cancel_refuses_a_completed_tokenization_payment(driver: Driver) -> None:
    pid = driver.reach(S.COMPLETED, Flow.TOKENIZATION)
    with refused(driver, pid, InvalidTransition, command="cancel"):
        driver.payments.cancel(pid)


# -- every pair not in the table is refused -----------------------------------

STATES_REACHED = [S.CREATED, S.COMPLETED, S.AUTHORIZING, *FINAL]
NOT_IN_TABLE = [
    (trigger, source)
    for trigger in TRIGGERS
    for source in STATES_REACHED
    if not any(t == trigger and s is source for t, s, _ in DESIGN_TABLE)
]


@pytest.mark.parametrize("source", STATES_REACHED)
def test_triggers_outside_the_table_are_invalid_transitions(
    driver: Driver, source: PaymentState
) -> None:
    # A refused command records nothing, so one payment serves every trigger.
    pid = driver.reach(source)
    driver.clock.advance(timedelta(days=1))  # time is never the reason here
    for trigger in (t for t, s in NOT_IN_TABLE if s is source):
        with refused(driver, pid, InvalidTransition, command=trigger) as info:
            driver.do(trigger, pid)
        assert f"cannot {trigger}" in str(info.value)
        assert source.value in str(info.value)


def test_a_completed_tokenization_payment_is_final(driver: Driver) -> None:
    pid = driver.reach(S.COMPLETED, Flow.TOKENIZATION)
    driver.clock.advance(timedelta(days=1))
    for trigger in TRIGGERS:
        expected = WrongFlow if trigger == "request_authorization" else InvalidTransition
        with refused(driver, pid, expected, command=trigger):
            driver.do(trigger, pid)


def test_not_in_table_covers_every_other_pair() -> None:
    assert len(NOT_IN_TABLE) + len(DESIGN_TABLE) == len(TRIGGERS) * len(STATES_REACHED)


# -- replay never re-runs a guard ---------------------------------------------


@pytest.mark.parametrize("final", FINAL)
def test_a_final_payment_rebuilds_long_after_its_window(
    driver: Driver, final: PaymentState
) -> None:
    pid = driver.reach(final)
    live = driver.payments.get(pid)
    driver.clock.advance(timedelta(days=365))
    again = driver.payments.get(pid)
    assert again == live
    assert again.state is final
    assert driver.payments.state_at(pid, version=again.version) == again
