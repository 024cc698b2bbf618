"""``Payments`` commands, the same contract on in-memory, SQLite and PostgreSQL.

Input is refused before anything is recorded, ``create`` is idempotent on
(partner account, reference), expiry waits for time to run out, and every
recorded time comes from the injected clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import pytest

from klarna_flow import (
    CommandRefused,
    ConcurrentModification,
    Flow,
    InvalidInput,
    InvalidTransition,
    NaiveDatetime,
    NotYetExpired,
    Payment,
    PaymentNotFound,
    Payments,
    PaymentState,
    ReferenceConflict,
    TokenCipher,
)
from klarna_flow.testing import ManualClock

MakePayments = Callable[..., Payments]
S = PaymentState


def create(payments: Payments, **overrides: Any) -> UUID:
    terms: dict[str, Any] = {
        "flow": Flow.AUTHORIZATION,
        "amount": 12_50,
        "currency": "SEK",
        "reference": "order-1",
    }
    terms.update(overrides)
    return payments.create(**terms)


def recorded(payments: Payments) -> int:
    """How many events the application has recorded, over all payments."""
    return payments._store.recorder.max_notification_id() or 0


def events(payments: Payments, payment_id: UUID) -> list[Payment.Event]:
    return list(payments.stored_events(payment_id))


MEMORY = {"PERSISTENCE_MODULE": "eventsourcing.popo"}


@pytest.fixture
def memory_payments(clock: ManualClock, cipher: TokenCipher, account: str) -> Iterator[Payments]:
    """In memory: for input refused before any I/O, which no store can change.

    ``test_bad_input_records_nothing_on_any_store`` runs a sample on every store.
    """
    app = Payments(MEMORY, clock=clock, cipher=cipher, partner_account_id=account)
    yield app
    app.close()


def assert_no_secret(error: BaseException, *secrets: str) -> None:
    for text in (str(error), repr(error), repr(error.args), repr(vars(error))):
        for secret in secrets:
            assert secret not in text


# -- create ----------------------------------------------------------------------


def test_create_records_one_event_with_the_terms(
    payments: Payments, clock: ManualClock, account: str
) -> None:
    pid = create(payments, payment_request_id="krn:payment:eu1:payment-request:1")
    payment = payments.get(pid)
    assert isinstance(pid, UUID)
    assert payment.id == pid
    assert payment.version == 1
    assert payment.state is S.CREATED
    assert payment.flow is Flow.AUTHORIZATION
    assert (payment.amount, payment.currency, payment.reference) == (1250, "SEK", "order-1")
    assert payment.partner_account_id == account
    assert payment.payment_request_id == "krn:payment:eu1:payment-request:1"
    assert payment.request_expires_at == clock.now() + timedelta(hours=3)
    assert payment.deadline == payment.request_expires_at
    assert payment.completed_at is None
    assert payment.authorize_by is None
    [event] = events(payments, pid)
    assert isinstance(event, Payment.PaymentCreated)
    assert event.timestamp == clock.now()


@pytest.mark.parametrize("flow", [*Flow, "TOKENIZATION"])
def test_create_accepts_every_flow_by_member_or_name(payments: Payments, flow: Flow | str) -> None:
    pid = create(payments, flow=flow)
    assert payments.get(pid).flow is Flow(flow)


def test_create_is_idempotent_on_account_and_reference(
    payments: Payments, clock: ManualClock
) -> None:
    first = create(payments)
    clock.advance(timedelta(minutes=5))
    second = create(payments)
    assert second == first
    assert len(events(payments, first)) == 1
    assert recorded(payments) == 1
    assert payments.get(first).created_on == clock.now() - timedelta(minutes=5)


def test_create_is_idempotent_across_application_instances(
    store: str, make_payments: MakePayments, account: str
) -> None:
    if store == "memory":
        pytest.skip("each in-memory application has a store of its own")
    one = make_payments(partner_account_id=account)
    two = make_payments(partner_account_id=account)
    assert create(one) == create(two)
    assert recorded(two) == 1


@pytest.mark.parametrize(
    "changed",
    [
        {"amount": 12_51},
        {"currency": "EUR"},
        {"flow": Flow.AUTHORIZATION_AND_TOKENIZATION},
        {"payment_request_id": "krn:payment:eu1:payment-request:other"},
    ],
    ids=["amount", "currency", "flow", "payment_request_id"],
)
def test_create_refuses_the_same_reference_with_other_terms(
    payments: Payments, changed: dict[str, Any]
) -> None:
    pid = create(payments, payment_request_id="krn:payment:eu1:payment-request:1")
    with pytest.raises(ReferenceConflict, match="order-1") as info:
        create(payments, **changed)
    assert info.value.payment_id == pid
    assert info.value.command == "create"
    assert recorded(payments) == 1
    assert payments.get(pid).amount == 12_50


def test_create_is_idempotent_when_the_request_id_was_not_known_at_first(
    payments: Payments,
) -> None:
    pid = create(payments)
    request_id = "krn:payment:eu1:payment-request:1"
    assert create(payments, payment_request_id=request_id) == pid
    # the id learned late is kept (notifications find the payment by it), once
    assert payments.get(pid).payment_request_id == request_id
    assert len(events(payments, pid)) == 2
    assert create(payments, payment_request_id=request_id) == pid
    assert len(events(payments, pid)) == 2


def test_the_same_reference_under_another_account_is_another_payment(
    payments: Payments,
) -> None:
    mine = create(payments)
    theirs = create(payments, partner_account_id="krn:partner:global:account:other")
    assert mine != theirs
    assert payments.get(theirs).partner_account_id == "krn:partner:global:account:other"
    assert recorded(payments) == 2


def test_create_without_any_partner_account(make_payments: MakePayments) -> None:
    payments = make_payments()
    pid = create(payments)
    assert payments.get(pid).partner_account_id == ""
    assert create(payments) == pid


# -- input refused before anything is recorded --------------------------------

BAD_CREATE: list[tuple[str, object]] = [
    ("amount", 0),
    ("amount", -1),
    ("amount", 10**15 + 1),
    ("amount", 12.5),
    ("amount", "1250"),
    ("amount", True),
    ("amount", False),
    ("amount", None),
    ("currency", "sek"),
    ("currency", "SE"),
    ("currency", "SEKK"),
    ("currency", "ABC"),
    ("currency", ""),
    ("currency", 752),
    ("reference", ""),
    ("reference", "x" * 256),
    ("reference", "line\nbreak"),
    ("reference", "nul\x00"),
    ("reference", "tab\t"),
    ("reference", "del\x7f"),
    ("reference", "c1\x85"),
    ("reference", 42),
    ("reference", "a\ud800b"),  # a lone surrogate: not encodable text
    ("reference", "\udfff"),
    ("flow", "PAY_NOW"),
    ("flow", "authorization"),
    ("flow", ""),
    ("flow", None),
    ("flow", 1),
    ("partner_account_id", "account 1"),
    ("partner_account_id", "acct:1"),
    ("payment_request_id", "not-a-krn"),
    ("payment_request_id", "krn:with space"),
]


@pytest.mark.parametrize(("field", "value"), BAD_CREATE)
def test_create_refuses_bad_input(memory_payments: Payments, field: str, value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        create(memory_payments, **{field: value})
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    assert recorded(memory_payments) == 0


def test_a_reference_of_255_printable_characters_is_fine(payments: Payments) -> None:
    pid = create(payments, reference="ü" * 255)
    assert payments.get(pid).reference == "ü" * 255


SECRET = "s3cr3t-part"
# Tokens are opaque (klarna-api.md 2.3): only their shape is checked, loosely:
# 1..8192 visible ASCII characters, no whitespace or control characters.
BAD_TOKENS = [
    "",
    f"krn:{SECRET} with space",
    f"krn:{SECRET}\nnewline",
    f"krn:{SECRET}\tTab",
    f"krn:{SECRET}\x00nul",
    f"krn:{SECRET}é",
    f"krn:{SECRET}" + "s" * 8192,
]
# Shapes Klarna has used, or may: accepted as given.
OPAQUE_TOKENS = [
    f"{SECRET}-without-prefix",
    f"KRN:{SECRET}:upper-case-prefix",
    "krn:network:us1:test:session-token:" + "x" * 2000,
]


@pytest.mark.parametrize("field", ["session_token", "customer_token"])
@pytest.mark.parametrize("token", BAD_TOKENS)
def test_complete_refuses_a_token_of_the_wrong_shape_without_echoing_it(
    memory_payments: Payments, field: str, token: str
) -> None:
    payments = memory_payments
    pid = create(payments, flow=Flow.AUTHORIZATION_AND_TOKENIZATION)
    with pytest.raises(InvalidInput) as info:
        payments.complete(
            pid,
            session_token=token if field == "session_token" else "krn:s:good",
            customer_token=token if field == "customer_token" else "krn:c:good",
        )
    assert info.value.field == field
    assert_no_secret(info.value, SECRET)
    assert recorded(payments) == 1


@pytest.mark.parametrize("token", [42, b"krn:bytes"])
def test_complete_refuses_a_token_that_is_not_text(
    memory_payments: Payments, token: object
) -> None:
    payments = memory_payments
    pid = create(payments)
    with pytest.raises(InvalidInput, match="session_token"):
        payments.complete(pid, session_token=token)  # type: ignore[arg-type]
    assert recorded(payments) == 1


def test_complete_refuses_a_naive_completion_time(
    payments: Payments, clock: ManualClock, session_token: str
) -> None:
    pid = create(payments)
    naive = clock.now().replace(tzinfo=None)
    with pytest.raises(NaiveDatetime) as info:
        payments.complete(pid, session_token=session_token, completed_at=naive)
    assert info.value.field == "completed_at"
    assert_no_secret(info.value, session_token)
    assert recorded(payments) == 1


def test_complete_refuses_a_completion_time_in_the_future(
    payments: Payments, clock: ManualClock, session_token: str
) -> None:
    pid = create(payments)
    with pytest.raises(InvalidInput, match="future"):
        payments.complete(
            pid, session_token=session_token, completed_at=clock.now() + timedelta(hours=1)
        )
    assert recorded(payments) == 1


def test_completion_time_in_another_zone_is_kept_as_utc(
    payments: Payments, clock: ManualClock, session_token: str
) -> None:
    pid = create(payments)
    cet = timezone(timedelta(hours=1))
    completed_at = (clock.now() - timedelta(minutes=2)).astimezone(cet)
    payment = payments.complete(pid, session_token=session_token, completed_at=completed_at)
    assert payment.completed_at == completed_at
    assert payment.completed_at is not None
    assert payment.completed_at.utcoffset() == timedelta(0)
    assert payments.get(pid).completed_at == completed_at


NOT_IDS: list[object] = ["5b0a3f3e-8c53-4d5e-9a63-1f0b7c2d9e41", 42, None, b"\x00" * 16]


@pytest.mark.parametrize("payment_id", NOT_IDS)
@pytest.mark.parametrize("command", ["get", "complete", "expire", "cancel", "state_at"])
def test_commands_refuse_an_id_that_is_not_a_uuid(
    memory_payments: Payments, payment_id: Any, command: str
) -> None:
    payments = memory_payments
    create(payments)
    call: dict[str, Callable[[], object]] = {
        "get": lambda: payments.get(payment_id),
        "complete": lambda: payments.complete(payment_id, session_token="krn:s:1"),
        "expire": lambda: payments.expire(payment_id),
        "cancel": lambda: payments.cancel(payment_id),
        "state_at": lambda: payments.state_at(payment_id, version=1),
    }
    with pytest.raises(InvalidInput) as info:
        call[command]()
    assert info.value.field == "payment_id"
    assert recorded(payments) == 1


def test_stored_events_refuses_an_id_that_is_not_a_uuid(payments: Payments) -> None:
    with pytest.raises(InvalidInput):
        list(payments.stored_events("5b0a3f3e-8c53-4d5e-9a63-1f0b7c2d9e41"))  # type: ignore[arg-type]


@pytest.mark.parametrize("command", ["get", "complete", "expire", "cancel", "state_at"])
def test_commands_on_an_unknown_payment(payments: Payments, command: str) -> None:
    unknown = uuid.uuid4()
    call: dict[str, Callable[[], object]] = {
        "get": lambda: payments.get(unknown),
        "complete": lambda: payments.complete(unknown, session_token="krn:s:1"),
        "expire": lambda: payments.expire(unknown),
        "cancel": lambda: payments.cancel(unknown),
        "state_at": lambda: payments.state_at(unknown, version=1),
    }
    with pytest.raises(PaymentNotFound) as info:
        call[command]()
    assert isinstance(info.value, LookupError)
    assert info.value.payment_id == unknown
    assert recorded(payments) == 0


def test_a_clock_giving_naive_times_is_refused_before_recording(
    make_payments: MakePayments,
) -> None:
    class NaiveClock:
        def now(self) -> datetime:
            return datetime(2025, 1, 1, 12)  # naive on purpose

    payments = make_payments(clock=NaiveClock())
    with pytest.raises(NaiveDatetime, match=r"clock\.now"):
        create(payments)
    assert recorded(payments) == 0


@pytest.mark.parametrize("clock", [object(), "now", None.__class__])
def test_a_clock_without_now_is_refused(clock: object) -> None:
    with pytest.raises(InvalidInput, match="clock"):
        Payments(MEMORY, clock=clock)  # type: ignore[arg-type]


@pytest.mark.parametrize("lifetime", [timedelta(0), timedelta(minutes=-1), 3600, None], ids=repr)
def test_request_lifetime_must_be_a_positive_timedelta(lifetime: object) -> None:
    with pytest.raises(InvalidInput, match="request_lifetime"):
        Payments(MEMORY, request_lifetime=lifetime)  # type: ignore[arg-type]


@pytest.mark.parametrize("token", OPAQUE_TOKENS, ids=lambda t: t[:20])
def test_complete_takes_opaque_tokens_as_given(memory_payments: Payments, token: str) -> None:
    payments = memory_payments
    pid = create(payments, flow=Flow.AUTHORIZATION_AND_TOKENIZATION)

    payments.complete(pid, session_token=token, customer_token=token)

    assert payments.get(pid).state is PaymentState.COMPLETED


def test_bad_input_records_nothing_on_any_store(
    payments: Payments, clock: ManualClock, session_token: str
) -> None:
    for field, value in BAD_CREATE:
        with pytest.raises(InvalidInput):
            create(payments, **{field: value})
    assert recorded(payments) == 0
    pid = create(payments)
    bad_completions: list[dict[str, Any]] = [{"session_token": token} for token in BAD_TOKENS] + [
        {"session_token": session_token, "completed_at": clock.now().replace(tzinfo=None)},
        {"session_token": session_token, "completed_at": clock.now() + timedelta(hours=1)},
    ]
    for kwargs in bad_completions:
        with pytest.raises(InvalidInput):
            payments.complete(pid, **kwargs)
    for payment_id in NOT_IDS:
        with pytest.raises(InvalidInput):
            payments.cancel(payment_id)  # type: ignore[arg-type]
    assert recorded(payments) == 1
    assert payments.get(pid).version == 1


# -- expire and cancel ---------------------------------------------------------


def test_expire_waits_for_the_default_request_lifetime(
    payments: Payments, clock: ManualClock
) -> None:
    pid = create(payments)
    clock.advance(timedelta(hours=3) - timedelta(seconds=1))
    with pytest.raises(NotYetExpired) as info:
        payments.expire(pid)
    assert info.value.state == "CREATED"
    assert len(events(payments, pid)) == 1
    clock.advance(timedelta(seconds=1))
    assert payments.expire(pid).state is S.EXPIRED
    last = events(payments, pid)[-1]
    assert isinstance(last, Payment.PaymentExpired)
    assert last.reason == "REQUEST_LIFETIME"
    assert last.cause == "command:expire"
    assert last.timestamp == clock.now()


def test_the_request_lifetime_is_configurable(
    make_payments: MakePayments, clock: ManualClock
) -> None:
    payments = make_payments(request_lifetime=timedelta(minutes=15))
    pid = create(payments)
    assert payments.get(pid).request_expires_at == clock.now() + timedelta(minutes=15)
    clock.advance(timedelta(minutes=14, seconds=59))
    with pytest.raises(NotYetExpired):
        payments.expire(pid)
    clock.advance(timedelta(seconds=1))
    assert payments.expire(pid).state is S.EXPIRED


def test_expire_a_completed_authorization_after_its_window(
    payments: Payments, clock: ManualClock, session_token: str
) -> None:
    pid = create(payments)
    payments.complete(pid, session_token=session_token)
    assert payments.get(pid).deadline == clock.now() + timedelta(minutes=60)
    clock.advance(timedelta(minutes=59))
    with pytest.raises(NotYetExpired):
        payments.expire(pid)
    assert len(events(payments, pid)) == 2
    clock.advance(timedelta(minutes=1))
    payment = payments.expire(pid)
    assert payment.state is S.EXPIRED
    assert payment.expiry_reason == "AUTHORIZATION_WINDOW"
    assert payment.deadline is None


def test_a_completed_tokenization_payment_never_expires(
    payments: Payments, clock: ManualClock, customer_token: str
) -> None:
    pid = create(payments, flow=Flow.TOKENIZATION)
    payments.complete(pid, customer_token=customer_token)
    assert payments.get(pid).deadline is None
    clock.advance(timedelta(days=366))
    with pytest.raises(InvalidTransition):
        payments.expire(pid)
    assert payments.get(pid).state is S.COMPLETED
    assert len(events(payments, pid)) == 2


@pytest.mark.parametrize("completed", [False, True])
def test_cancel_before_authorization(
    payments: Payments, clock: ManualClock, session_token: str, completed: bool
) -> None:
    pid = create(payments)
    if completed:
        payments.complete(pid, session_token=session_token)
    clock.advance(timedelta(minutes=1))
    payment = payments.cancel(pid)
    assert payment.state is S.CANCELED
    assert payments.get(pid) == payment
    last = events(payments, pid)[-1]
    assert isinstance(last, Payment.PaymentCanceled)
    assert (last.cause, last.timestamp) == ("command:cancel", clock.now())


def test_cancel_is_refused_once_authorization_was_requested(
    payments: Payments, session_token: str
) -> None:
    pid = create(payments)
    payments.complete(pid, session_token=session_token)
    payment = payments.get(pid)
    payment.request_authorization(idempotency_key="key-1", now=payments.now())
    payments._store.save_payment(payment)
    with pytest.raises(InvalidTransition) as info:
        payments.cancel(pid)
    assert info.value.state == "AUTHORIZING"
    assert len(events(payments, pid)) == 3


@pytest.mark.parametrize("final", ["cancel", "expire"])
@pytest.mark.parametrize("then", ["cancel", "expire"])
def test_a_final_payment_refuses_cancel_and_expire(
    payments: Payments, clock: ManualClock, final: str, then: str
) -> None:
    pid = create(payments)
    clock.advance(timedelta(hours=3))
    getattr(payments, final)(pid)
    clock.advance(timedelta(days=1))
    with pytest.raises(InvalidTransition):
        getattr(payments, then)(pid)
    assert len(events(payments, pid)) == 2


def test_custom_causes_are_recorded(
    payments: Payments, clock: ManualClock, session_token: str
) -> None:
    pid = create(payments)
    payments.complete(pid, session_token=session_token, cause="notification:evt-1")
    clock.advance(timedelta(hours=1))
    payments.expire(pid, cause="notification:evt-2")
    causes = [e.cause for e in events(payments, pid)[1:]]
    assert causes == ["notification:evt-1", "notification:evt-2"]


BAD_CAUSES: list[object] = [None, "", 42, b"command:x", "line\nbreak", "x" * 256, "a\ud800"]


@pytest.mark.parametrize("cause", BAD_CAUSES, ids=repr)
@pytest.mark.parametrize("command", ["complete", "expire", "cancel", "identify"])
def test_a_bad_cause_is_refused_before_recording(
    payments: Payments, session_token: str, clock: ManualClock, command: str, cause: object
) -> None:
    pid = create(payments)
    clock.advance(timedelta(hours=4))  # expire would be allowed
    calls: dict[str, Callable[[], object]] = {
        "complete": lambda: payments.complete(pid, session_token=session_token, cause=cause),  # type: ignore[arg-type]
        "expire": lambda: payments.expire(pid, cause=cause),  # type: ignore[arg-type]
        "cancel": lambda: payments.cancel(pid, cause=cause),  # type: ignore[arg-type]
        "identify": lambda: payments.identify_payment_request(
            pid,
            "krn:payment:eu1:payment-request:x",
            cause=cause,  # type: ignore[arg-type]
        ),
    }

    with pytest.raises(InvalidInput) as caught:
        calls[command]()

    assert caught.value.field == "cause"
    assert len(events(payments, pid)) == 1


@pytest.mark.parametrize("state", ["NOPE", "created", "", 3, None.__class__])
def test_read_model_refuses_an_unknown_state(payments: Payments, state: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        payments.read_model(state)  # type: ignore[arg-type]

    assert caught.value.field == "state"


@pytest.mark.parametrize(
    ("argument", "value"),
    [("klarna", object()), ("klarna", "https://klarna"), ("async_klarna", object())],
)
def test_a_client_of_the_wrong_type_is_refused_at_construction(
    argument: str, value: object
) -> None:
    with pytest.raises(InvalidInput) as caught:
        Payments(MEMORY, **{argument: value})  # type: ignore[arg-type]

    assert caught.value.field == argument


@pytest.mark.parametrize("cipher", [object(), b"0" * 32, "key"], ids=repr)
def test_a_cipher_of_the_wrong_type_is_refused_at_construction(
    cipher: object, tmp_path: Any
) -> None:
    db = tmp_path / "p.sqlite"

    with pytest.raises(InvalidInput, match="TokenCipher") as caught:
        Payments.sqlite(db, cipher=cipher)

    assert caught.value.field == "cipher"
    assert not db.exists()  # refused before the store was opened


# -- concurrent writers ----------------------------------------------------------


def test_a_stale_copy_cannot_overwrite_a_newer_event(
    payments: Payments, session_token: str
) -> None:
    pid = create(payments)
    mine, theirs = payments.get(pid), payments.get(pid)
    mine.cancel(now=payments.now())
    payments._store.save_payment(mine)
    sealed = payments._store.seal(pid, "session_token", session_token)
    theirs.complete(
        session_token=sealed, customer_token=None, completed_at=payments.now(), now=payments.now()
    )
    with pytest.raises(ConcurrentModification) as info:
        payments._store.save_payment(theirs)
    assert not isinstance(info.value, CommandRefused)  # a lost race is not a refusal
    assert info.value.payment_id == pid
    assert [type(e).__name__ for e in events(payments, pid)] == [
        "PaymentCreated",
        "PaymentCanceled",
    ]


# -- time comes from the injected clock -------------------------------------------


def test_every_recorded_time_comes_from_the_clock(
    payments: Payments, clock: ManualClock, session_token: str
) -> None:
    times = [clock.now()]
    pid = create(payments)
    times.append(clock.advance(timedelta(minutes=4)))
    payments.complete(pid, session_token=session_token)
    times.append(clock.advance(timedelta(minutes=1, microseconds=7)))
    payment = payments.get(pid)
    payment.request_authorization(idempotency_key="key-1", now=payments.now())
    payments._store.save_payment(payment)
    times.append(clock.advance(timedelta(seconds=2)))
    payment = payments.get(pid)
    payment.fail(
        error="timeout", status_code=None, correlation_id=None, now=payments.now(), cause="t"
    )
    payments._store.save_payment(payment)
    times.append(clock.advance(timedelta(minutes=60)))
    payments.expire(pid)

    stored = events(payments, pid)
    assert [e.timestamp for e in stored] == times
    loaded = payments.get(pid)
    assert loaded.created_on == times[0]
    assert loaded.modified_on == times[-1]
    assert loaded.completed_at == times[1]
    assert loaded.authorize_by == times[1] + timedelta(minutes=60)
    assert all(t.tzinfo is not None and t.utcoffset() == timedelta(0) for t in times)


def test_the_clock_can_start_anywhere(make_payments: MakePayments) -> None:
    start = datetime(2031, 6, 30, 23, 59, 59, 999_999, tzinfo=UTC)
    payments = make_payments(clock=ManualClock(start))
    pid = create(payments)
    assert events(payments, pid)[0].timestamp == start
    assert payments.get(pid).request_expires_at == start + timedelta(hours=3)


# -- state_at -------------------------------------------------------------------


@pytest.fixture
def history(
    payments: Payments, clock: ManualClock, session_token: str
) -> tuple[UUID, list[datetime]]:
    """A payment created, completed 10 minutes later, canceled 5 minutes after."""
    pid = create(payments)
    created = clock.now()
    completed = clock.advance(timedelta(minutes=10))
    payments.complete(pid, session_token=session_token)
    canceled = clock.advance(timedelta(minutes=5))
    payments.cancel(pid)
    clock.advance(timedelta(days=30))
    return pid, [created, completed, canceled]


def test_state_at_version(payments: Payments, history: tuple[UUID, list[datetime]]) -> None:
    pid, _ = history
    assert payments.state_at(pid, version=1).state is S.CREATED
    assert payments.state_at(pid, version=1).version == 1
    assert payments.state_at(pid, version=2).state is S.COMPLETED
    assert payments.state_at(pid, version=3) == payments.get(pid)


def test_state_at_an_instant_picks_the_state_in_force(
    payments: Payments, history: tuple[UUID, list[datetime]]
) -> None:
    pid, (created, completed, canceled) = history
    second = timedelta(seconds=1)
    expected = [
        (created, S.CREATED),
        (completed - second, S.CREATED),
        (completed, S.COMPLETED),
        (canceled - second, S.COMPLETED),
        (canceled, S.CANCELED),
        (canceled + timedelta(days=365), S.CANCELED),
    ]
    for at, state in expected:
        assert payments.state_at(pid, at=at).state is state, at
    stockholm = timezone(timedelta(hours=2))
    assert payments.state_at(pid, at=completed.astimezone(stockholm)).state is S.COMPLETED


def test_state_at_before_creation_is_not_found(
    payments: Payments, history: tuple[UUID, list[datetime]]
) -> None:
    pid, (created, _, _) = history
    with pytest.raises(PaymentNotFound):
        payments.state_at(pid, at=created - timedelta(microseconds=1))


def test_state_at_refuses_a_naive_instant(
    payments: Payments, history: tuple[UUID, list[datetime]]
) -> None:
    pid, (created, _, _) = history
    with pytest.raises(NaiveDatetime) as info:
        payments.state_at(pid, at=created.replace(tzinfo=None))
    assert info.value.field == "at"


BAD_STATE_AT: list[dict[str, Any]] = [
    {},
    {"version": 1, "at": datetime(2025, 1, 1, tzinfo=UTC)},
    {"version": 0},
    {"version": -1},
    {"version": 4},
    {"version": True},
    {"version": "1"},
    {"at": "2025-01-01T12:00:00Z"},
]


def test_state_at_refuses_bad_arguments(
    payments: Payments, history: tuple[UUID, list[datetime]]
) -> None:
    pid, _ = history
    for kwargs in BAD_STATE_AT:
        with pytest.raises(InvalidInput):
            payments.state_at(pid, **kwargs)


# -- cancel once authorization was requested -----------------------------------------------
# cancel: "not once authorization was requested" (design table), on every store.


CANCEL_GUARD_TOKEN = "krn:payment:eu1:klarna-network-session-token:cancel-guard"


def _requested(payments: Payments, reference: str) -> None:
    payment_id = payments.create(
        flow=Flow.AUTHORIZATION, amount=100, currency="EUR", reference=reference
    )
    payments.complete(payment_id, session_token=CANCEL_GUARD_TOKEN)
    payment = payments.get(payment_id)
    payment.request_authorization(idempotency_key="key-1", now=payments.now())
    payments._store.save_payment(payment)


def test_a_payment_whose_authorization_was_requested_cannot_be_canceled(
    payments: Payments,
) -> None:
    _requested(payments, "c-fail")
    [row] = payments.read_model("AUTHORIZING")
    payment = payments.get(row.payment_id)
    payment.fail(
        error="refused", status_code=400, correlation_id=None, now=payments.now(), cause="t"
    )
    payments._store.save_payment(payment)
    before = payments.get(payment.id).version

    with pytest.raises(InvalidTransition, match="authorization was requested"):
        payments.cancel(payment.id)

    assert payments.get(payment.id).version == before
    assert payments.get(payment.id).state is PaymentState.COMPLETED


def test_a_step_up_opens_a_new_request_which_may_be_canceled(payments: Payments) -> None:
    # design.md: cancel needs "no authorize call ever requested for the
    # current payment request"; a step-up brings a new one.
    _requested(payments, "c-step-up")
    [row] = payments.read_model("AUTHORIZING")
    payment = payments.get(row.payment_id)
    payment.require_step_up(
        correlation_id=None,
        payment_request_id=None,
        payment_request_url=None,
        request_lifetime=timedelta(hours=3),
        now=payments.now(),
        cause="t",
    )
    payments._store.save_payment(payment)

    assert payments.cancel(payment.id).state is PaymentState.CANCELED


def test_a_payment_never_sent_to_klarna_can_be_canceled(payments: Payments) -> None:
    payment_id = payments.create(
        flow=Flow.AUTHORIZATION, amount=100, currency="EUR", reference="c-open"
    )
    payments.complete(payment_id, session_token=CANCEL_GUARD_TOKEN)
    assert payments.cancel(payment_id).state is PaymentState.CANCELED
