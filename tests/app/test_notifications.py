"""Klarna notifications (webhooks), on every store.

``handle_notification(body, headers)`` verifies the HMAC over the raw body,
parses the envelope, deduplicates on ``event_id``, maps completed / expired /
canceled / declined to commands, records submitted / in-progress / updated
without changing the state, counts unknown types, and never moves a payment
backwards. Each test checks the answer (status code and outcome) and what was
recorded (events and their ``cause``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

import pytest

from klarna_flow import (
    ConfigurationError,
    Flow,
    InvalidInput,
    InvalidTransition,
    NotificationOutcome,
    NotificationResult,
    Payment,
    Payments,
    PaymentState,
    TokenCipher,
)
from klarna_flow._shared.secrets import mask
from klarna_flow.klarna._webhooks import MAX_BODY_BYTES
from klarna_flow.testing import FakeKlarna, ManualClock, SignedNotification
from tests._flow_helpers import AMOUNT, CURRENCY, Created, Kit, MakePayments, event_names, open_kit

S = PaymentState
COMPLETED = "payment.request.state-change.completed"
EXPIRED = "payment.request.state-change.expired"
CANCELED = "payment.request.state-change.canceled"
DECLINED = "payment.request.state-change.declined"
SUBMITTED = "payment.request.state-change.submitted"
IN_PROGRESS = "payment.request.state-change.in-progress"
UPDATED = "payment.request.updated"
REPORTS = [SUBMITTED, IN_PROGRESS, UPDATED]
CUSTOMER_TOKEN = "krn:payment:eu1:customer-token:hand-0001"
LATE_TOKEN = "krn:payment:eu1:klarna-network-session-token:late-0001"
DURABLE = ["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres])]

Headers = dict[str, str]


@pytest.fixture
def kit(make_payments: MakePayments, clock: ManualClock) -> Iterator[Kit]:
    with open_kit(make_payments, clock) as kit:
        yield kit


def deliver(kit: Kit, notification: SignedNotification) -> NotificationResult:
    return kit.payments.handle_notification(notification.body, notification.headers)


def answer(result: NotificationResult) -> tuple[int, str]:
    return result.status_code, result.outcome


def completion(kit: Kit, created: Created, **payload: Any) -> SignedNotification:
    """A completed notification built by hand (e.g. late, or with other fields)."""
    body = {
        "payment_request_id": created.payment_request_id,
        "state": "COMPLETED",
        "previous_state": "IN_PROGRESS",
        **payload,
    }
    return kit.fake.notification(COMPLETED, body)


def unsealed(kit: Kit, payment_id: UUID, field: str) -> str | None:
    """The token the payment holds in ``field``, in clear (None when it holds none)."""
    sealed = getattr(kit.payments.get(payment_id), field)
    return None if sealed is None else kit.payments._store.unseal(payment_id, field, sealed)


# -- the mapped event types -------------------------------------------------------


def test_completed_records_the_completion_caused_by_the_notification(kit: Kit) -> None:
    created = kit.create()
    done = kit.fake.complete_payment_request(created.payment_request_id)

    result = deliver(kit, done.notification)

    assert answer(result) == (200, "applied")
    assert result.outcome is NotificationOutcome.APPLIED  # a typed result
    assert result.acknowledged
    assert isinstance(result.payment_id, UUID)
    assert result.payment_id == created.payment_id
    assert result.event_id == done.notification.event_id
    assert result.event_type == COMPLETED
    payment = kit.payments.get(created.payment_id)
    assert payment.state is S.COMPLETED
    assert payment.completed_at == done.completed_at
    [_, completed] = kit.events(created.payment_id)
    assert isinstance(completed, Payment.PurchaseCompleted)
    assert completed.cause == f"notification:{done.notification.event_id}"
    assert payment.session_token is not None
    assert kit.payments._store.unseal(
        created.payment_id, "session_token", payment.session_token
    ) == (done.session_token)


@pytest.mark.parametrize("where", ["payload", "state_context"])
def test_the_older_token_name_and_nested_state_context_are_understood(kit: Kit, where: str) -> None:
    created = kit.create()
    tokens = {"payment_token": LATE_TOKEN}
    payload = tokens if where == "payload" else {"state_context": tokens}

    result = deliver(kit, completion(kit, created, **payload))

    assert answer(result) == (200, "applied")
    payment = kit.payments.get(created.payment_id)
    assert payment.session_token is not None
    assert kit.payments._store.unseal(
        created.payment_id, "session_token", payment.session_token
    ) == (LATE_TOKEN)


@pytest.mark.parametrize("tokens_in", ["payload", "state_context"])
@pytest.mark.parametrize("flow", [Flow.TOKENIZATION, Flow.AUTHORIZATION_AND_TOKENIZATION])
def test_a_tokenizing_completion_keeps_the_customer_token_where_klarna_puts_it(
    kit: Kit, flow: Flow, tokens_in: Literal["payload", "state_context"]
) -> None:
    created = kit.create(flow)
    done = kit.fake.complete_payment_request(created.payment_request_id, tokens_in=tokens_in)
    payload = done.notification.json()["payload"]
    place = payload if tokens_in == "payload" else payload["state_context"]
    assert place["klarna_customer"] == {"customer_token": done.customer_token}
    assert ("klarna_network_session_token" in place) is flow.authorizes

    result = deliver(kit, done.notification)

    assert answer(result) == (200, "applied")
    assert kit.payments.get(created.payment_id).state is S.COMPLETED
    assert unsealed(kit, created.payment_id, "customer_token") == done.customer_token
    assert unsealed(kit, created.payment_id, "session_token") == done.session_token
    trail = kit.payments.audit_trail(created.payment_id)
    shown = json.dumps([entry.as_dict() for entry in trail]) + repr(trail)
    for token in filter(None, (done.session_token, done.customer_token)):
        assert token not in shown
    assert trail[-1].details["customer_token"].startswith("****")


# Every place klarna-api.md section 4 lists, and the inner names one demo uses.
TOKEN_PLACES: dict[str, tuple[Flow, dict[str, Any]]] = {
    "session-top": (Flow.AUTHORIZATION, {"klarna_network_session_token": LATE_TOKEN}),
    "session-in-context": (
        Flow.AUTHORIZATION,
        {"state_context": {"klarna_network_session_token": LATE_TOKEN}},
    ),
    "legacy-top": (Flow.AUTHORIZATION, {"payment_token": LATE_TOKEN}),
    "legacy-in-context": (Flow.AUTHORIZATION, {"state_context": {"payment_token": LATE_TOKEN}}),
    "customer-top": (Flow.TOKENIZATION, {"klarna_customer": {"customer_token": CUSTOMER_TOKEN}}),
    "customer-id-top": (
        Flow.TOKENIZATION,
        {"klarna_customer": {"customer_token_id": CUSTOMER_TOKEN}},
    ),
    "customer-in-context": (
        Flow.TOKENIZATION,
        {"state_context": {"klarna_customer": {"customer_token": CUSTOMER_TOKEN}}},
    ),
    "customer-id-in-context": (
        Flow.TOKENIZATION,
        {"state_context": {"klarna_customer": {"customer_token_id": CUSTOMER_TOKEN}}},
    ),
    "both-split": (
        Flow.AUTHORIZATION_AND_TOKENIZATION,
        {
            "payment_token": LATE_TOKEN,
            "state_context": {"klarna_customer": {"customer_token_id": CUSTOMER_TOKEN}},
        },
    ),
    "same-token-twice": (
        Flow.AUTHORIZATION_AND_TOKENIZATION,
        {
            "klarna_network_session_token": LATE_TOKEN,
            "klarna_customer": {"customer_token": CUSTOMER_TOKEN, "customer_token_id": None},
            "state_context": {
                "klarna_network_session_token": LATE_TOKEN,
                "klarna_customer": {"customer_token": CUSTOMER_TOKEN},
            },
        },
    ),
    "nulls-and-unknown-fields": (
        Flow.TOKENIZATION,
        {
            "klarna_network_session_token": None,
            "payment_token": "",
            "klarna_customer": {
                "customer_token": CUSTOMER_TOKEN,
                "customer_token_reference": "partner-ref-1",
                "scopes": ["payment:customer_not_present"],
            },
            "state_context": {
                "customer_interaction": {"method": "HANDOVER"},
                "klarna_customer": None,
            },
            "something_new": {"nested": [1, 2]},
        },
    ),
}


@pytest.mark.parametrize("place", list(TOKEN_PLACES))
def test_tokens_are_read_wherever_klarna_puts_them(kit: Kit, place: str) -> None:
    flow, tokens = TOKEN_PLACES[place]
    created = kit.create(flow)

    result = deliver(kit, completion(kit, created, **tokens))

    assert answer(result) == (200, "applied")
    assert kit.payments.get(created.payment_id).state is S.COMPLETED
    expected_session = LATE_TOKEN if flow.authorizes else None
    expected_customer = CUSTOMER_TOKEN if flow.tokenizes else None
    assert unsealed(kit, created.payment_id, "session_token") == expected_session
    assert unsealed(kit, created.payment_id, "customer_token") == expected_customer


OTHER_TOKEN = "krn:payment:eu1:klarna-network-session-token:other-0002"
UNUSABLE_TOKENS: dict[str, tuple[Flow, dict[str, Any]]] = {
    "session-not-text": (Flow.AUTHORIZATION, {"klarna_network_session_token": 12345}),
    "legacy-in-context-not-text": (
        Flow.AUTHORIZATION,
        {"state_context": {"payment_token": ["x"]}},
    ),
    "session-not-a-krn": (
        Flow.AUTHORIZATION,
        {"state_context": {"klarna_network_session_token": "not a krn"}},
    ),
    "two-session-tokens": (
        Flow.AUTHORIZATION,
        {
            "klarna_network_session_token": LATE_TOKEN,
            "state_context": {"klarna_network_session_token": OTHER_TOKEN},
        },
    ),
    "customer-token-not-a-krn": (
        Flow.TOKENIZATION,
        {"klarna_customer": {"customer_token_id": "not a krn"}},
    ),
    "customer-token-not-text": (Flow.TOKENIZATION, {"klarna_customer": {"customer_token": 7}}),
    "klarna-customer-not-an-object": (Flow.TOKENIZATION, {"klarna_customer": "not a krn"}),
    "state-context-not-an-object": (Flow.TOKENIZATION, {"state_context": ["not a krn"]}),
    "two-customer-tokens": (
        Flow.TOKENIZATION,
        {
            "klarna_customer": {"customer_token": CUSTOMER_TOKEN},
            "state_context": {"klarna_customer": {"customer_token": OTHER_TOKEN}},
        },
    ),
}


@pytest.mark.parametrize("case", list(UNUSABLE_TOKENS))
def test_a_token_present_but_unusable_is_answered_400(kit: Kit, case: str) -> None:
    flow, tokens = UNUSABLE_TOKENS[case]
    created = kit.create(flow)

    result = deliver(kit, completion(kit, created, **tokens))

    assert answer(result) == (400, "rejected")  # stays visible at Klarna, retried
    assert result.payment_id == created.payment_id
    for secret in ("not a krn", LATE_TOKEN, OTHER_TOKEN, CUSTOMER_TOKEN, "12345"):
        assert secret not in result.detail
    assert kit.names(created.payment_id) == ["PaymentCreated"]


@pytest.mark.parametrize("completed_first", [False, True], ids=["created", "completed"])
def test_expired_expires_the_payment(kit: Kit, completed_first: bool) -> None:
    created = kit.completed() if completed_first else kit.create()
    notification = kit.fake.expire_payment_request(created.payment_request_id)

    result = deliver(kit, notification)

    assert answer(result) == (200, "applied")
    payment = kit.payments.get(created.payment_id)
    assert (payment.state, payment.expiry_reason) == (S.EXPIRED, "KLARNA_REPORTED")
    last = kit.events(created.payment_id)[-1]
    assert isinstance(last, Payment.PaymentExpired)
    assert last.cause == f"notification:{notification.event_id}"


@pytest.mark.parametrize("completed_first", [False, True], ids=["created", "completed"])
def test_canceled_cancels_the_payment(kit: Kit, completed_first: bool) -> None:
    created = kit.completed() if completed_first else kit.create()
    notification = kit.fake.cancel_payment_request(created.payment_request_id)

    result = deliver(kit, notification)

    assert answer(result) == (200, "applied")
    assert kit.payments.get(created.payment_id).state is S.CANCELED
    last = kit.events(created.payment_id)[-1]
    assert isinstance(last, Payment.PaymentCanceled)
    assert last.cause == f"notification:{notification.event_id}"


def test_declined_declines_a_created_payment(kit: Kit) -> None:
    created = kit.create()
    notification = kit.fake.decline_payment_request(created.payment_request_id)
    assert notification.json()["payload"]["state"] == "DECLINED"

    result = deliver(kit, notification)

    assert answer(result) == (200, "applied")
    assert result.payment_id == created.payment_id
    payment = kit.payments.get(created.payment_id)
    assert (payment.state, payment.decline_reason) == (S.DECLINED, "PAYMENT_REQUEST_DECLINED")
    last = kit.events(created.payment_id)[-1]
    assert isinstance(last, Payment.PaymentRequestDeclined)
    assert last.cause == f"notification:{notification.event_id}"
    entry = kit.payments.audit_trail(created.payment_id)[-1]
    assert (entry.event, entry.state_before, entry.state_after) == (
        "PaymentRequestDeclined",
        S.CREATED,
        S.DECLINED,
    )
    assert kit.payments.counts_by_state() == {"DECLINED": 1}
    kit.clock.advance(timedelta(days=2))
    assert kit.payments.expire_overdue() == []  # final: the sweep leaves it alone
    assert answer(deliver(kit, notification)) == (200, "duplicate")


def test_the_fake_declines_only_an_open_payment_request(kit: Kit) -> None:
    created = kit.completed()

    with pytest.raises(InvalidInput, match="COMPLETED payment request cannot become DECLINED"):
        kit.fake.decline_payment_request(created.payment_request_id)

    assert kit.fake.state_of(created.payment_request_id) == "COMPLETED"


@pytest.mark.parametrize(
    ("event_type", "payload", "klarna_state"),
    [
        (SUBMITTED, {"state": "SUBMITTED"}, "SUBMITTED"),
        (IN_PROGRESS, {"state": "IN_PROGRESS", "previous_state": "SUBMITTED"}, "IN_PROGRESS"),
        (UPDATED, {"state": "SUBMITTED", "amount": AMOUNT}, "SUBMITTED"),
        (UPDATED, {"state": "not a state"}, None),
        (UPDATED, {}, None),
    ],
)
def test_reports_on_an_open_request_are_recorded_without_changing_the_state(
    kit: Kit, event_type: str, payload: dict[str, Any], klarna_state: str | None
) -> None:
    created = kit.create()
    deadline = kit.payments.get(created.payment_id).deadline
    report = kit.fake.notification(
        event_type, {"payment_request_id": created.payment_request_id, **payload}
    )

    result = deliver(kit, report)

    assert answer(result) == (200, "applied")
    payment = kit.payments.get(created.payment_id)
    assert (payment.state, payment.deadline) == (S.CREATED, deadline)
    last = kit.events(created.payment_id)[-1]
    assert isinstance(last, Payment.PaymentRequestReported)
    assert (last.event_type, last.klarna_state) == (event_type, klarna_state)
    assert last.cause == f"notification:{report.event_id}"
    entry = kit.payments.audit_trail(created.payment_id)[-1]
    assert (entry.state_before, entry.state_after) == (S.CREATED, None)
    assert kit.payments.counts_by_state() == {"CREATED": 1}
    assert answer(deliver(kit, report)) == (200, "duplicate")
    kit.complete(created)  # the journey goes on
    assert kit.payments.get(created.payment_id).state is S.COMPLETED


@pytest.mark.parametrize("event_type", [DECLINED, *REPORTS])
def test_a_late_decline_or_report_never_moves_a_completed_payment(
    kit: Kit, event_type: str
) -> None:
    created = kit.completed()
    events = kit.names(created.payment_id)
    payload = {"payment_request_id": created.payment_request_id, "state": "IN_PROGRESS"}

    result = deliver(kit, kit.fake.notification(event_type, payload))

    assert answer(result) == (200, "ignored")
    assert kit.payments.get(created.payment_id).state is S.COMPLETED
    assert kit.names(created.payment_id) == events


# -- never backwards, never twice -------------------------------------------------


def test_a_duplicate_event_id_is_acknowledged_and_records_nothing(kit: Kit) -> None:
    created = kit.create()
    done = kit.fake.complete_payment_request(created.payment_request_id)
    assert answer(deliver(kit, done.notification)) == (200, "applied")
    events = kit.names(created.payment_id)

    again = deliver(kit, done.notification)

    assert answer(again) == (200, "duplicate")
    assert again.payment_id == created.payment_id
    assert kit.names(created.payment_id) == events
    kit.payments.authorize(created.payment_id)
    assert answer(deliver(kit, done.notification)) == (200, "duplicate")
    assert kit.payments.notification_counts["duplicate"] == 2


def test_completed_after_expired_is_ignored(kit: Kit) -> None:
    created = kit.create()
    assert answer(deliver(kit, kit.fake.expire_payment_request(created.payment_request_id))) == (
        200,
        "applied",
    )
    events = kit.names(created.payment_id)
    late = kit.fake.notification(
        COMPLETED,
        {
            "payment_request_id": created.payment_request_id,
            "state": "COMPLETED",
            "klarna_network_session_token": LATE_TOKEN,
        },
        occurred_at=kit.clock.now() - timedelta(minutes=1),
    )

    result = deliver(kit, late)

    assert answer(result) == (200, "ignored")
    assert kit.payments.get(created.payment_id).state is S.EXPIRED
    assert kit.names(created.payment_id) == events


def test_a_second_completion_with_another_event_id_is_ignored(kit: Kit) -> None:
    created = kit.completed()
    events = kit.names(created.payment_id)

    result = deliver(kit, completion(kit, created, klarna_network_session_token=LATE_TOKEN))

    assert answer(result) == (200, "ignored")
    assert kit.names(created.payment_id) == events


@pytest.mark.parametrize("event_type", [EXPIRED, CANCELED, COMPLETED, DECLINED, *REPORTS])
def test_events_for_an_authorizing_or_authorized_payment_are_ignored(
    kit: Kit, event_type: str
) -> None:
    pending = kit.completed()
    for _ in range(3):
        kit.fake.drop_next()
    kit.payments.authorize(pending.payment_id)
    authorized = kit.completed()
    kit.payments.authorize(authorized.payment_id)

    for created, state in ((pending, S.AUTHORIZING), (authorized, S.AUTHORIZED)):
        events = kit.names(created.payment_id)
        payload = {"payment_request_id": created.payment_request_id, "state": "X"}
        result = deliver(kit, kit.fake.notification(event_type, payload))
        assert answer(result) == (200, "ignored")
        assert kit.payments.get(created.payment_id).state is state
        assert kit.names(created.payment_id) == events


def test_a_completed_tokenization_payment_ignores_expiry(kit: Kit) -> None:
    created = kit.completed(Flow.TOKENIZATION)
    payload = {"payment_request_id": created.payment_request_id, "state": "EXPIRED"}

    result = deliver(kit, kit.fake.notification(EXPIRED, payload))

    assert answer(result) == (200, "ignored")
    assert kit.payments.get(created.payment_id).state is S.COMPLETED


def test_a_completion_without_the_tokens_the_flow_needs_is_refused(kit: Kit) -> None:
    created = kit.create(Flow.AUTHORIZATION)

    result = deliver(kit, completion(kit, created))  # no session token at all

    assert answer(result) == (200, "refused")  # acknowledged: a retry would not help
    assert kit.payments.get(created.payment_id).state is S.CREATED
    assert kit.names(created.payment_id) == ["PaymentCreated"]


@pytest.mark.parametrize("store", DURABLE)
def test_duplicates_are_recognised_by_another_instance(
    kit: Kit, make_payments: MakePayments
) -> None:
    created = kit.create()
    done = kit.fake.complete_payment_request(created.payment_request_id)
    deliver(kit, done.notification)
    restarted = make_payments(signing_keys=kit.fake.signing_keys)

    result = restarted.handle_notification(done.notification.body, done.notification.headers)

    assert answer(result) == (200, "duplicate")
    assert event_names(restarted, created.payment_id) == ["PaymentCreated", "PurchaseCompleted"]


def test_the_same_notification_delivered_twice_at_once_is_applied_once(kit: Kit) -> None:
    created = kit.create()
    done = kit.fake.complete_payment_request(created.payment_request_id)
    barrier = threading.Barrier(2)
    results: list[NotificationResult] = []

    def run() -> None:
        barrier.wait()
        results.append(deliver(kit, done.notification))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    assert [r.status_code for r in results] == [200, 200]
    assert sum(r.outcome == "applied" for r in results) == 1
    assert kit.names(created.payment_id) == ["PaymentCreated", "PurchaseCompleted"]


class PausingClock:
    """A clock that pauses one chosen thread the first time it asks the time.

    Applying a notification loads the payment, then asks the time to record:
    the chosen thread stops between its load and its save.
    """

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.paused: threading.Thread | None = None
        self.loaded = threading.Event()
        self.resume = threading.Event()

    def now(self) -> datetime:
        if threading.current_thread() is self.paused and not self.loaded.is_set():
            self.loaded.set()
            self.resume.wait(timeout=30)
        return self.clock.now()


def test_a_duplicate_that_loses_the_race_is_answered_as_a_duplicate(
    store_env: dict[str, str], clock: ManualClock, cipher: TokenCipher
) -> None:
    fake = FakeKlarna(clock=clock)
    pausing = PausingClock(clock)
    payments = Payments(store_env, clock=pausing, cipher=cipher, signing_keys=fake.signing_keys)
    try:
        request_id = fake.create_payment_request(amount=AMOUNT, currency=CURRENCY)
        payment_id = payments.create(
            flow=Flow.AUTHORIZATION,
            amount=AMOUNT,
            currency=CURRENCY,
            reference="twice",
            payment_request_id=request_id,
        )
        done = fake.complete_payment_request(request_id)
        body, headers = done.notification.body, done.notification.headers
        late: list[NotificationResult] = []
        slow = threading.Thread(
            target=lambda: late.append(payments.handle_notification(body, headers))
        )
        pausing.paused = slow
        slow.start()
        assert pausing.loaded.wait(timeout=30)  # it saw the payment CREATED
        first = payments.handle_notification(body, headers)
        pausing.resume.set()
        slow.join(timeout=30)

        assert answer(first) == (200, "applied")
        assert event_names(payments, payment_id) == ["PaymentCreated", "PurchaseCompleted"]
        assert answer(late[0]) == (200, "duplicate")
    finally:
        pausing.resume.set()
        payments.close()


# -- unknown things ---------------------------------------------------------------


@pytest.mark.parametrize(
    "event_type",
    [
        "payments.v2.request.state-change.in-progress",
        "payment.token.revoked",
        "payment.request.state-change.prepared",
    ],
)
def test_an_unknown_event_type_is_acknowledged_and_counted(kit: Kit, event_type: str) -> None:
    created = kit.create()
    payload = {"payment_request_id": created.payment_request_id, "state": "IN_PROGRESS"}

    result = deliver(kit, kit.fake.notification(event_type, payload))

    assert answer(result) == (200, "unknown_type")
    assert result.event_type == event_type
    assert kit.payments.notification_counts["unknown_type"] == 1
    assert kit.names(created.payment_id) == ["PaymentCreated"]


def test_an_unknown_payment_request_is_not_found(kit: Kit) -> None:
    request_id = kit.fake.create_payment_request(amount=AMOUNT, currency=CURRENCY)
    done = kit.fake.complete_payment_request(request_id)

    result = deliver(kit, done.notification)

    assert answer(result) == (404, "unknown_payment")  # Klarna will retry it later
    assert not result.acknowledged
    assert result.payment_id is None
    assert kit.payments.counts_by_state() == {}


def test_a_notification_that_was_not_found_applies_once_the_payment_exists(kit: Kit) -> None:
    request_id = kit.fake.create_payment_request(amount=AMOUNT, currency=CURRENCY)
    done = kit.fake.complete_payment_request(request_id)
    assert deliver(kit, done.notification).status_code == 404
    payment_id = kit.payments.create(
        flow=Flow.AUTHORIZATION,
        amount=AMOUNT,
        currency=CURRENCY,
        reference="late-create",
        payment_request_id=request_id,
    )

    assert answer(deliver(kit, done.notification)) == (200, "applied")  # Klarna's retry
    assert kit.payments.get(payment_id).state is S.COMPLETED


# -- rejected with 400 -------------------------------------------------------------


def _without(headers: Headers, name: str) -> Headers:
    return {k: v for k, v in headers.items() if k != name}


def _other_key_signature(body: bytes, headers: Headers) -> tuple[bytes, Headers]:
    forged = hmac.new(b"not-the-key", body, hashlib.sha256).hexdigest()
    return body, {**headers, "Klarna-Signature": forged}


TAMPERINGS: dict[str, Callable[[bytes, Headers], tuple[bytes, Headers]]] = {
    "body-changed": lambda b, h: (b.replace(b'"live":false', b'"live":true'), h),
    "body-extended": lambda b, h: (b + b" ", h),
    "signed-by-another-key": _other_key_signature,
    "garbage-signature": lambda b, h: (b, {**h, "Klarna-Signature": "zz"}),
    "unknown-key-id": lambda b, h: (b, {**h, "Klarna-Signing-Key-Id": "rotated-away"}),
    "no-signature": lambda b, h: (b, _without(h, "Klarna-Signature")),
    "no-key-id": lambda b, h: (b, _without(h, "Klarna-Signing-Key-Id")),
    "no-headers": lambda b, h: (b, {}),
    "empty-signature": lambda b, h: (b, {**h, "Klarna-Signature": ""}),
    "non-ascii-signature": lambda b, h: (b, {**h, "Klarna-Signature": "€" * 64}),
    "lone-surrogate-signature": lambda b, h: (b, {**h, "Klarna-Signature": "\ud800"}),
}


@pytest.mark.parametrize("tampering", TAMPERINGS, ids=str)
def test_a_bad_signature_is_rejected_and_records_nothing(kit: Kit, tampering: str) -> None:
    created = kit.create()
    done = kit.fake.complete_payment_request(created.payment_request_id)
    body, headers = TAMPERINGS[tampering](done.notification.body, done.notification.headers)

    result = kit.payments.handle_notification(body, headers)

    assert answer(result) == (400, "rejected")
    assert not result.acknowledged
    assert kit.names(created.payment_id) == ["PaymentCreated"]
    assert kit.payments.notification_counts["rejected"] == 1
    # The genuine notification still applies afterwards.
    assert answer(deliver(kit, done.notification)) == (200, "applied")


def _envelope(**metadata: Any) -> bytes:
    base = {"event_type": COMPLETED, "event_id": "e-1", "occurred_at": "2025-01-01T12:00:00Z"}
    return json.dumps({"metadata": {**base, **metadata}, "payload": {}}).encode()


MALFORMED = {
    "not-json": b"{not json",
    "not-utf8": b"\xff\xfe\x00",
    "empty": b"",
    "a-list": b"[]",
    "no-payload": json.dumps({"metadata": {"event_id": "e", "event_type": COMPLETED}}).encode(),
    "payload-not-object": json.dumps({"metadata": {}, "payload": []}).encode(),
    "no-event-id": _envelope(event_id=None),
    "no-event-type": _envelope(event_type=""),
    "naive-occurred-at": _envelope(occurred_at="2025-01-01T12:00:00"),
    "bad-occurred-at": _envelope(occurred_at="yesterday"),
}


@pytest.mark.parametrize("name", MALFORMED, ids=str)
def test_a_malformed_body_is_rejected(kit: Kit, name: str) -> None:
    body = MALFORMED[name]

    result = kit.payments.handle_notification(body, kit.fake.sign(body))

    assert answer(result) == (400, "rejected")
    assert kit.payments.counts_by_state() == {}


def _padded(notification: SignedNotification, size: int) -> bytes:
    """The notification's body padded with JSON whitespace to ``size`` bytes."""
    return notification.body + b" " * (size - len(notification.body))


def test_a_body_over_the_limit_is_rejected_and_one_at_the_limit_is_not(kit: Kit) -> None:
    created = kit.create()
    done = kit.fake.complete_payment_request(created.payment_request_id)
    for size in (MAX_BODY_BYTES + 1, 2 * 1024 * 1024):
        big = _padded(done.notification, size)
        result = kit.payments.handle_notification(big, kit.fake.sign(big))
        assert answer(result) == (400, "rejected")
        assert str(MAX_BODY_BYTES) in result.detail
    assert kit.names(created.payment_id) == ["PaymentCreated"]

    fits = _padded(done.notification, MAX_BODY_BYTES)
    assert answer(kit.payments.handle_notification(fits, kit.fake.sign(fits))) == (200, "applied")


# -- headers and keys ---------------------------------------------------------------


def test_header_names_are_case_insensitive(kit: Kit) -> None:
    created = kit.create()
    done = kit.fake.complete_payment_request(created.payment_request_id)
    lowered = {k.lower(): v for k, v in done.notification.headers.items()}

    assert answer(kit.payments.handle_notification(done.notification.body, lowered)) == (
        200,
        "applied",
    )


def test_a_base64_signature_is_accepted(kit: Kit) -> None:
    created = kit.create()
    done = kit.fake.complete_payment_request(created.payment_request_id)
    headers = dict(done.notification.headers)
    [key] = kit.fake.signing_keys.values()
    digest = hmac.new(key, done.notification.body, hashlib.sha256).digest()
    headers["Klarna-Signature"] = base64.b64encode(digest).decode()

    assert answer(kit.payments.handle_notification(done.notification.body, headers)) == (
        200,
        "applied",
    )


def test_any_configured_signing_key_is_accepted(
    make_payments: MakePayments, clock: ManualClock
) -> None:
    keys = {"old": b"o" * 32, "new": b"n" * 32}
    fake = FakeKlarna(clock=clock, signing_keys=keys)
    payments = make_payments(signing_keys=keys)
    for number, key_id in enumerate(keys):
        request_id = fake.create_payment_request(amount=AMOUNT, currency=CURRENCY)
        payments.create(
            flow=Flow.AUTHORIZATION,
            amount=AMOUNT,
            currency=CURRENCY,
            reference=f"rotation-{number}",
            payment_request_id=request_id,
        )
        payload = {"payment_request_id": request_id, "klarna_network_session_token": LATE_TOKEN}
        signed = fake.notification(COMPLETED, payload, key_id=key_id)
        assert signed.headers["Klarna-Signing-Key-Id"] == key_id
        assert payments.handle_notification(signed.body, signed.headers).outcome == "applied"


def test_without_signing_keys_notifications_cannot_be_handled(
    make_payments: MakePayments,
) -> None:
    payments = make_payments()
    body = _envelope()

    with pytest.raises(ConfigurationError):
        payments.handle_notification(body, {})


def test_the_body_must_be_the_raw_bytes(kit: Kit) -> None:
    created = kit.create()
    done = kit.fake.complete_payment_request(created.payment_request_id)

    with pytest.raises(InvalidInput):
        kit.payments.handle_notification(
            done.notification.body.decode(),  # type: ignore[arg-type]
            done.notification.headers,
        )


def test_counts_add_up(kit: Kit) -> None:
    created = kit.create()
    done = kit.fake.complete_payment_request(created.payment_request_id)
    deliver(kit, done.notification)
    deliver(kit, done.notification)
    kit.payments.handle_notification(b"{}", {})
    deliver(kit, kit.fake.notification("payments.v2.request.state-change.in-progress", {}))

    assert dict(kit.payments.notification_counts) == {
        "applied": 1,
        "duplicate": 1,
        "rejected": 1,
        "unknown_type": 1,
    }


def test_an_oversized_body_is_refused_before_its_signature_is_checked(kit: Kit) -> None:
    created = kit.create()
    done = kit.fake.complete_payment_request(created.payment_request_id)
    big = _padded(done.notification, MAX_BODY_BYTES + 1)

    for headers in (done.notification.headers, {}):  # signed for another body; unsigned
        result = kit.payments.handle_notification(big, headers)
        assert answer(result) == (400, "rejected")
        assert str(MAX_BODY_BYTES) in result.detail  # not "signature does not match"
    assert kit.names(created.payment_id) == ["PaymentCreated"]


# -- header forms ---------------------------------------------------------------------


def _asgi(headers: Headers, encode: bool) -> list[tuple[Any, Any]]:
    """``headers`` as ASGI's raw list of pairs (lower-case names, bytes or str)."""
    return [(k.lower().encode(), v.encode()) if encode else (k, v) for k, v in headers.items()]


HEADER_FORMS: dict[str, Callable[[Headers], Any]] = {
    "asgi-bytes-pairs": lambda h: _asgi(h, encode=True),
    "str-pairs": lambda h: _asgi(h, encode=False),
    "tuple-of-pairs": lambda h: tuple(_asgi(h, encode=True)),
    "upper-case-pairs": lambda h: [(k.upper(), v) for k, v in h.items()],
    "mapping-of-bytes": lambda h: {k.encode(): v.encode() for k, v in h.items()},
}


@pytest.mark.parametrize("form", HEADER_FORMS, ids=str)
def test_asgi_header_pairs_are_accepted(kit: Kit, form: str) -> None:
    created = kit.create()
    done = kit.fake.complete_payment_request(created.payment_request_id)
    headers = HEADER_FORMS[form](done.notification.headers)

    result = kit.payments.handle_notification(done.notification.body, headers)

    assert answer(result) == (200, "applied")
    assert kit.payments.get(created.payment_id).state is S.COMPLETED


def test_asgi_header_pairs_with_a_bad_signature_are_rejected(kit: Kit) -> None:
    created = kit.create()
    done = kit.fake.complete_payment_request(created.payment_request_id)
    forged = {**done.notification.headers, "Klarna-Signature": "0" * 64}
    pairs = HEADER_FORMS["asgi-bytes-pairs"](forged)

    assert answer(kit.payments.handle_notification(done.notification.body, pairs)) == (
        400,
        "rejected",
    )


NOT_HEADERS: dict[str, object] = {
    "none": None,
    "a-string": "Klarna-Signature: abc",
    "bytes": b"klarna-signature: abc",
    "a-number": 42,
    "a-set-of-pairs": {("klarna-signature", "abc")},
    "a-pair-of-one": [("klarna-signature",)],
    "a-pair-of-three": [("klarna-signature", "abc", "x")],
    "a-flat-list": [b"klarna-signature", b"abc"],
    "a-value-not-text": [(b"klarna-signature", 3)],
    "a-name-not-text": {1: "abc"},
    "a-mapping-value-none": {"Klarna-Signature": None},
}


@pytest.mark.parametrize("name", NOT_HEADERS, ids=str)
def test_headers_that_are_neither_a_mapping_nor_pairs_are_refused(kit: Kit, name: str) -> None:
    body = _envelope()

    with pytest.raises(InvalidInput) as refused:
        kit.payments.handle_notification(body, NOT_HEADERS[name])  # type: ignore[arg-type]

    assert refused.value.field == "headers"
    assert "abc" not in str(refused.value)
    assert sum(kit.payments.notification_counts.values()) == 0


# -- signing keys --------------------------------------------------------------------


def test_str_signing_keys_are_used_as_their_utf8_bytes(
    make_payments: MakePayments, clock: ManualClock
) -> None:
    fake = FakeKlarna(clock=clock, signing_keys={"k1": "sécret-1".encode()})
    payments = make_payments(signing_keys={"k1": "sécret-1"})
    request_id = fake.create_payment_request(amount=AMOUNT, currency=CURRENCY)
    payments.create(
        flow=Flow.AUTHORIZATION,
        amount=AMOUNT,
        currency=CURRENCY,
        reference="str-key",
        payment_request_id=request_id,
    )
    done = fake.complete_payment_request(request_id)

    result = payments.handle_notification(done.notification.body, done.notification.headers)

    assert answer(result) == (200, "applied")


KEY = "s3cr3t-key-material"
BAD_SIGNING_KEYS: dict[str, object] = {
    "a-string": KEY,
    "bytes": KEY.encode(),
    "a-list-of-pairs": [("k1", KEY)],
    "a-bytes-key-id": {KEY.encode(): KEY},
    "an-int-key-id": {1: KEY},
    "an-empty-key-id": {"": KEY},
    "an-empty-key": {"k1": b""},
    "an-empty-str-key": {"k1": ""},
    "an-int-key": {"k1": 12345},
    "a-bytearray-key": {"k1": bytearray(KEY.encode())},
    "a-none-key": {"k1": None},
    "a-lone-surrogate": {"k1": KEY + "\ud800"},
    "an-empty-string": "",  # falsy, but not "no keys"
    "an-empty-list": [],
}


@pytest.mark.parametrize("name", BAD_SIGNING_KEYS, ids=str)
def test_invalid_signing_keys_are_refused_at_construction(name: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        Payments(signing_keys=BAD_SIGNING_KEYS[name])  # type: ignore[arg-type]

    assert refused.value.field == "signing_keys"
    for text in (str(refused.value), repr(refused.value), repr(vars(refused.value))):
        assert KEY not in text
        assert "12345" not in text


# -- notifications at the edges ------------------------------------------------------------
# Notifications at the edges: a request id learned late, a clock running ahead,
# a token that is not a token, JSON nested too deeply. On every store.


def test_a_request_id_given_on_a_repeated_create_is_kept(kit: Kit) -> None:
    p, fake = kit.payments, kit.fake
    payment_id = p.create(flow=Flow.AUTHORIZATION, amount=100, currency="EUR", reference="late-id")
    request_id = fake.create_payment_request(amount=100, currency="EUR")

    again = p.create(
        flow=Flow.AUTHORIZATION,
        amount=100,
        currency="EUR",
        reference="late-id",
        payment_request_id=request_id,
    )

    assert again == payment_id
    assert p.get(payment_id).payment_request_id == request_id
    done = fake.complete_payment_request(request_id)
    result = p.handle_notification(done.notification.body, done.notification.headers)
    assert (result.status_code, result.outcome) == (200, "applied")
    assert p.get(payment_id).state is PaymentState.COMPLETED


def test_identify_payment_request_records_once_and_never_on_a_final_payment(kit: Kit) -> None:
    p, fake = kit.payments, kit.fake
    payment_id = p.create(flow=Flow.AUTHORIZATION, amount=100, currency="EUR", reference="ident")
    request_id = fake.create_payment_request(amount=100, currency="EUR")
    version = p.identify_payment_request(payment_id, request_id).version
    assert p.identify_payment_request(payment_id, request_id).version == version  # no-op
    p.cancel(payment_id)
    with pytest.raises(InvalidTransition):
        p.identify_payment_request(
            payment_id, fake.create_payment_request(amount=1, currency="EUR")
        )


def test_a_completion_stamped_ahead_of_our_clock_is_applied_at_our_now(kit: Kit) -> None:
    p, fake, clock = kit.payments, kit.fake, kit.clock
    request_id = fake.create_payment_request(amount=100, currency="EUR")
    payment_id = p.create(
        flow=Flow.AUTHORIZATION,
        amount=100,
        currency="EUR",
        reference="clock-ahead",
        payment_request_id=request_id,
    )
    done = fake.complete_payment_request(request_id)
    token = done.session_token
    assert token is not None
    ahead = fake.notification(
        "payment.request.state-change.completed",
        {
            "payment_request_id": request_id,
            "state": "COMPLETED",
            "previous_state": "IN_PROGRESS",
            "klarna_network_session_token": token,
        },
        occurred_at=clock.now() + timedelta(minutes=6),
    )

    result = p.handle_notification(ahead.body, ahead.headers)

    assert (result.status_code, result.outcome) == (200, "applied")
    payment = p.get(payment_id)
    assert payment.state is PaymentState.COMPLETED
    assert payment.completed_at == clock.now()


def test_a_completion_with_a_malformed_token_is_answered_400(kit: Kit) -> None:
    p, fake = kit.payments, kit.fake
    request_id = fake.create_payment_request(amount=100, currency="EUR")
    payment_id = p.create(
        flow=Flow.AUTHORIZATION,
        amount=100,
        currency="EUR",
        reference="bad-token",
        payment_request_id=request_id,
    )
    bad = fake.notification(
        "payment.request.state-change.completed",
        {"payment_request_id": request_id, "klarna_network_session_token": "not a krn"},
    )

    result = p.handle_notification(bad.body, bad.headers)

    assert (result.status_code, result.outcome) == (400, "rejected")
    assert "not a krn" not in result.detail
    assert p.get(payment_id).state is PaymentState.CREATED
    assert p.get(payment_id).version == 1


@pytest.mark.parametrize("where", ["whole-body", "inside-the-payload"])
def test_deeply_nested_signed_json_is_answered_400(kit: Kit, where: str) -> None:
    p, fake = kit.payments, kit.fake
    nested = b"[" * 200_000 + b"]" * 200_000
    if where == "whole-body":
        body = nested
    else:
        inner = fake.notification("payment.request.state-change.completed", {"deep": 0}).body
        body = inner.replace(b'"deep":0', b'"deep":' + nested)

    result = p.handle_notification(body, fake.sign(body))

    assert (result.status_code, result.outcome) == (400, "rejected")
    assert "nested" in result.detail
    assert p.notification_counts["rejected"] == 1


def test_the_repr_of_a_signed_notification_masks_every_token(kit: Kit) -> None:
    fake = kit.fake
    request_id = fake.create_payment_request(
        amount=100, currency="EUR", flow=Flow.AUTHORIZATION_AND_TOKENIZATION.value
    )
    done = fake.complete_payment_request(request_id)
    nested_token = "krn:payment:eu1:klarna-network-session-token:nested-0001"
    by_hand = fake.notification(
        "payment.request.state-change.completed",
        {"payment_request_id": request_id, "state_context": {"payment_token": nested_token}},
    )
    tokens = [done.session_token, done.customer_token, nested_token]
    assert all(tokens)

    for shown in (repr(done.notification), str(done.notification), repr(by_hand)):
        for token in tokens:
            assert token is not None
            assert token not in shown
        assert "SignedNotification(" in shown
    shown = repr(done.notification)
    assert f"{mask(done.session_token)}" in shown
    assert f"{mask(done.customer_token)}" in shown
    assert done.notification.event_id in shown  # the rest stays readable
    assert request_id in shown
    not_json = SignedNotification(body=b"token " + nested_token.encode(), headers={})
    assert nested_token not in repr(not_json)
