"""The one stored-record codec, and the readers above it agreeing with each other.

- Reading one field in place (the bulk rebuild's way) gives what decoding the
  whole payload (the per-event way) gives, for payloads as eventsourcing's
  transcoder writes them, escapes and all.
- The chain link is the documented hash, whichever id type it is given.
- A rebuild from scratch gives exactly the rows that following the log event
  by event gives, for random logs: random commands on several payments, and
  events recorded with no command's guard (so any event may follow any other),
  on the in-memory and the SQLite store.
- ``EVENT_STATES`` says what each event's own ``apply`` does to the state, for
  every event class a ``Payment`` records (found by introspection, so a new
  event without an entry fails here).
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import attrs
import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import ApplicationRecorder, DatetimeAsISO, JSONTranscoder, UUIDAsHex
from eventsourcing.utils import get_topic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from klarna_flow import CommandRefused, Flow, Payment, Payments, PaymentState, TokenCipher
from klarna_flow._domain.payment import EVENT_STATES
from klarna_flow._domain.sealed import SealedSecret
from klarna_flow._store.codec import (
    TYPED,
    EventCodec,
    SealedSecretTranscoding,
    event_name,
    fields,
    link,
    linked_digest,
    seconds,
    seconds_field,
    text_field,
    transcoded,
)
from klarna_flow._store.projections import PaymentIndex, project
from klarna_flow._store.read_models import IndexRow, MemoryIndex, as_uuid
from klarna_flow.testing import ManualClock

# A fresh SQLite file per example, in memory-backed /dev/shm where there is one.
FAST_TMP = "/dev/shm" if Path("/dev/shm").is_dir() else None  # noqa: S108
TOKEN = SealedSecret("k1", "bm9uY2U=", "Y2lwaGVy")  # opaque to everything read here
SESSION_TOKEN = "krn:payment:eu1:klarna-network-session-token:codec"
CUSTOMER_TOKEN = "krn:payment:eu1:customer-token:codec"
PAYMENTS = 4

# -- values as events hold them ---------------------------------------------------

# Text that would trip a reader of JSON by bytes: quotes, escapes, keys inside strings.
TEXT = st.one_of(
    st.text(st.sampled_from('ab"\\:,{}é\n\x00'), max_size=6),
    st.text(max_size=10),
    st.sampled_from(['"payment_request_id":"krn:x"', '","flow":"TOKENIZATION', "\\", '\\"']),
)
# A KRN as Payments accepts one: any printable ASCII after the prefix (quotes included).
KRN = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=10).map(
    "krn:".__add__
)
TIMES = st.datetimes(
    min_value=datetime(2001, 1, 1),  # the bounds of an aware strategy are naive
    max_value=datetime(2099, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=2))]),
)
CAUSES = st.one_of(st.just("command:authorize"), TEXT.map("notification:".__add__))
BY_TYPE: dict[str, st.SearchStrategy[Any]] = {
    "str": TEXT,
    "int": st.integers(-(2**40), 2**40),
    "datetime": TIMES,
    "SealedSecret": st.just(TOKEN),
    "bool": st.booleans(),
    "list[str]": st.lists(TEXT, max_size=3),
    "dict[str, Any]": st.dictionaries(
        TEXT, st.none() | st.booleans() | st.integers(-(2**40), 2**40) | TEXT, max_size=3
    ),
}
BY_NAME: dict[str, st.SearchStrategy[Any]] = {
    "call": st.sampled_from(["INITIAL", "FINAL"]),
    "flow": st.sampled_from([f.value for f in Flow]),
    "cause": CAUSES,
}
# Fields every event has, which the test sets itself.
ENVELOPE = frozenset({"originator_id", "originator_version", "timestamp", "originator_topic"})


def payment_events() -> dict[str, type[Aggregate.Event]]:
    """Every event class a ``Payment`` records: its own event classes that no
    other extends (``Payment.Event`` is their base; ``Event`` and ``Created``
    are eventsourcing's names, redefined on every aggregate)."""
    own = [
        value
        for name, value in vars(Payment).items()
        if isinstance(value, type)
        and issubclass(value, Aggregate.Event)
        and name not in vars(Aggregate)
    ]
    return {e.__name__: e for e in own if not any(o is not e and issubclass(o, e) for o in own)}


EVENTS = payment_events()


def values_of(annotation: str) -> st.SearchStrategy[Any]:
    """Values of a field declared as ``annotation`` (e.g. ``str | None``)."""
    options = []
    for part in (p.strip() for p in annotation.split("|")):
        if part == "None":
            options.append(st.none())
        elif part in BY_TYPE:
            options.append(BY_TYPE[part])
        else:
            pytest.fail(f"no test values for an event field of type {part!r}: add them to BY_TYPE")
    return st.one_of(options)


def event_fields(event_class: type[Aggregate.Event]) -> st.SearchStrategy[dict[str, Any]]:
    """The fields of one event of ``event_class``, the envelope aside."""
    strategies = {
        f.name: BY_NAME[f.name] if f.name in BY_NAME else values_of(str(f.type))
        for f in dataclasses.fields(event_class)
        if f.name not in ENVELOPE
    }
    return st.fixed_dictionaries(strategies)


# -- the codec ------------------------------------------------------------------------


def transcoder() -> JSONTranscoder:
    """eventsourcing's transcoder with the transcodings the store registers."""
    t = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DatetimeAsISO(), SealedSecretTranscoding()):
        t.register(transcoding)
    return t


FIELD_NAMES = st.sampled_from(["flow", "payment_request_id", "timestamp", "completed_at", "x"])
FIELD_VALUES = st.one_of(st.none(), TEXT, KRN, TIMES, st.integers(), st.just(TOKEN))


@given(
    payload=st.dictionaries(FIELD_NAMES, FIELD_VALUES, min_size=1),
    digest=st.binary(min_size=32, max_size=32),
)
def test_a_field_read_in_place_is_the_field_decoded(payload: dict[str, Any], digest: bytes) -> None:
    state = digest + transcoder().encode(payload)
    decoded = fields(state)
    for name, value in payload.items():
        if value is None or isinstance(value, str):
            assert text_field(state, name) == decoded[name] == value
        elif isinstance(value, datetime):
            assert seconds_field(state, name) == seconds(decoded[name]) == value.timestamp()
    assert text_field(state, "absent") is None


def test_a_time_is_read_from_the_transcoded_object_or_its_text() -> None:
    when = datetime(2025, 1, 1, 12, tzinfo=UTC)
    encoded = {"_type_": "datetime_iso", "_data_": when.isoformat()}
    assert seconds(encoded) == seconds(when.isoformat()) == when.timestamp()


@pytest.mark.parametrize(
    ("topic", "name"),
    [
        ("klarna_flow._domain.payment:Payment.PurchaseCompleted", "PurchaseCompleted"),
        ("some.module:Created", "Created"),
        ("Bare", "Bare"),
    ],
)
def test_an_event_is_named_by_its_class(topic: str, name: str) -> None:
    assert event_name(topic) == name


@pytest.mark.parametrize("originator_id", [uuid4(), "not-a-uuid"])
def test_the_chain_link_is_the_documented_hash(originator_id: UUID | str) -> None:
    previous, topic, payload = bytes(range(32)), "m:Payment.PaymentCanceled", b'{"cause":"x"}'
    raw_id = originator_id.bytes if isinstance(originator_id, UUID) else originator_id.encode()
    documented = hashlib.sha256(
        previous + raw_id + (7).to_bytes(8, "big", signed=True) + topic.encode() + b"\x00" + payload
    ).digest()

    assert link(previous, originator_id, 7, topic, payload) == documented
    assert linked_digest(previous, originator_id, 7, topic, documented + payload) == documented
    assert linked_digest(previous, originator_id, 8, topic, documented + payload) is None
    assert linked_digest(previous, originator_id, 7, topic, documented + payload + b" ") is None
    assert linked_digest(previous, originator_id, 7, topic, documented[:5]) is None


# -- the typed format ----------------------------------------------------------------------


def typed_event(event_class: type[Aggregate.Event]) -> st.SearchStrategy[dict[str, Any]]:
    """An event's stored fields (all but its id and version), as the mapper hands them over."""
    envelope: dict[str, Any] = {"timestamp": TIMES}
    if issubclass(event_class, Aggregate.Created):
        envelope["originator_topic"] = st.just(get_topic(Payment))
    return st.fixed_dictionaries(envelope).flatmap(
        lambda head: event_fields(event_class).map(lambda rest: {**head, **rest})
    )


def same_time(legacy: Any, typed: Any) -> bool:
    """A datetime as the legacy format shows it and as the typed one does: the same ISO text."""
    kind = transcoded(legacy)
    return kind is not None and kind[0] == "datetime_iso" and kind[1] == typed


@settings(max_examples=30, deadline=None, database=None)
@given(data=st.data(), digest=st.binary(min_size=32, max_size=32))
def test_every_event_round_trips_through_the_typed_format(
    data: st.DataObject, digest: bytes
) -> None:
    codec = EventCodec(transcoder())
    for event_class in EVENTS.values():
        state = data.draw(typed_event(event_class))
        topic = get_topic(event_class)

        payload = codec.encode(topic, state)
        decoded = codec.decode(topic, payload)

        assert payload.startswith(TYPED), event_class.__name__
        assert decoded == state
        assert {k: type(v) for k, v in decoded.items()} == {k: type(v) for k, v in state.items()}
        for name, value in state.items():
            if isinstance(value, datetime):
                assert decoded[name].isoformat() == value.isoformat()
        # Readers that know no event class see what they saw in the legacy format.
        plain, legacy = fields(digest + payload), fields(digest + transcoder().encode(state))
        assert plain.keys() == legacy.keys()
        for name, value in plain.items():
            assert value == legacy[name] or same_time(legacy[name], value), name
            if value is None or (isinstance(value, str) and not same_time(legacy[name], value)):
                assert text_field(digest + payload, name) == value
            if isinstance(state[name], datetime):
                assert seconds_field(digest + payload, name) == state[name].timestamp()


@pytest.mark.parametrize(
    "transaction",
    [
        {"at": datetime(2025, 1, 1, tzinfo=UTC)},  # msgspec would write it as text
        {"id": uuid4()},
        {"amount": float("nan")},
        {"lines": (1, 2)},
    ],
    ids=repr,
)
def test_what_the_typed_format_cannot_carry_exactly_stays_legacy(
    transaction: dict[str, Any],
) -> None:
    codec = EventCodec(transcoder())
    topic = get_topic(Payment.TransactionReported)
    state = {
        "timestamp": datetime(2025, 1, 1, tzinfo=UTC),
        "cause": "command:refresh",
        "source": "read",
        "event_type": None,
        "transaction": transaction,
    }

    payload = codec.encode(topic, state)

    assert payload == transcoder().encode(state)
    assert codec.decode(topic, payload) == transcoder().decode(payload)


def test_an_undeclared_attribute_stays_legacy() -> None:
    codec = EventCodec(transcoder())
    state = {"timestamp": datetime(2025, 1, 1, tzinfo=UTC), "cause": "x", "reason": "r", "y": 1}

    payload = codec.encode(get_topic(Payment.PaymentExpired), state)

    assert payload == transcoder().encode(state)


# -- EVENT_STATES and apply ---------------------------------------------------------------


def payment_in(state: PaymentState) -> Payment:
    """A payment standing in ``state``: events apply without guards, so any will do."""
    payment = Payment.create(
        payment_id=uuid4(),
        flow=Flow.AUTHORIZATION,
        amount=100,
        currency="EUR",
        reference="r",
        partner_account_id="",
        payment_request_id=None,
        request_lifetime=timedelta(hours=3),
        now=datetime(2025, 1, 1, tzinfo=UTC),
    )
    payment.collect_events()
    payment.state = state
    return payment


def applied(
    payment: Payment | None, event_class: type[Aggregate.Event], data: st.DataObject
) -> Any:
    envelope: dict[str, Any] = {
        "originator_id": uuid4() if payment is None else payment.id,
        "originator_version": 1 if payment is None else payment.version + 1,
        "timestamp": datetime(2025, 1, 2, tzinfo=UTC),
    }
    if payment is None:
        envelope["originator_topic"] = get_topic(Payment)
    event = event_class(**envelope, **data.draw(event_fields(event_class)))
    return event.mutate(payment)


@settings(max_examples=20, deadline=None, database=None)
@given(data=st.data())
def test_event_states_say_what_each_event_does_to_the_state(data: st.DataObject) -> None:
    assert set(EVENT_STATES) == set(EVENTS), "EVENT_STATES names each event Payment records"
    for name, event_class in EVENTS.items():
        if issubclass(event_class, Aggregate.Created):
            assert applied(None, event_class, data).state is EVENT_STATES[name], name
            continue
        for before in PaymentState:
            after = applied(payment_in(before), event_class, data).state
            assert after is (EVENT_STATES[name] or before), f"{name} applied in {before}"


# -- a rebuild equals catching up event by event --------------------------------------------


@attrs.define
class World:
    """Payments being driven at random, and what the test knows of them."""

    payments: Payments
    clock: ManualClock
    ids: dict[int, UUID] = attrs.field(factory=dict)
    # Payments given events without guards: commands leave them alone, as
    # their state may be one no command expects.
    freeform: set[int] = attrs.field(factory=set)

    def commanded(self, i: int) -> UUID | None:
        return None if i in self.freeform else self.ids.get(i)

    def record(self, i: int, command: Callable[[Payment, datetime], None]) -> None:
        """Run a domain command on payment ``i`` and save what it recorded."""
        payment_id = self.commanded(i)
        if payment_id is None:
            return
        payment = self.payments.get(payment_id)
        try:
            command(payment, self.clock.now())
        except CommandRefused:
            return
        self.payments._store.save_payment(payment)


Step = Callable[[World], None]


def create(i: int, flow: Flow, request_id: str | None) -> Step:
    def step(w: World) -> None:
        with suppress(CommandRefused):  # the same reference with other terms
            w.ids[i] = w.payments.create(
                flow=flow,
                amount=100 + i,
                currency="EUR",
                reference=f"order-{i}",
                payment_request_id=request_id,
            )

    return step


def complete(i: int, ago: timedelta, request_id: str | None) -> Step:
    """``Payments.complete`` with the tokens the payment's flow needs."""

    def step(w: World) -> None:
        payment_id = w.commanded(i)
        if payment_id is None:
            return
        flow = w.payments.get(payment_id).flow
        with suppress(CommandRefused):
            w.payments.complete(
                payment_id,
                session_token=SESSION_TOKEN if flow.authorizes else None,
                customer_token=CUSTOMER_TOKEN if flow.tokenizes else None,
                completed_at=w.clock.now() - ago,
                payment_request_id=request_id,
            )

    return step


def on_payments(i: int, command: str, *args: Any) -> Step:
    """``Payments.<command>(payment id, *args)``: identify, expire, cancel."""

    def step(w: World) -> None:
        payment_id = w.commanded(i)
        if payment_id is not None:
            with suppress(CommandRefused):
                getattr(w.payments, command)(payment_id, *args)

    return step


def outcome(i: int, command: str, kwargs: dict[str, Any]) -> Step:
    """A domain command of authorization: ``payment.<command>(now=..., **kwargs)``."""

    def step(w: World) -> None:
        w.record(i, lambda p, now: getattr(p, command)(now=now, **kwargs))

    return step


def attempt(i: int, key: str, command: str, kwargs: dict[str, Any]) -> Step:
    """A whole attempt, each part skipped where refused: completion (from
    ``CREATED``), a request for authorization, and its outcome."""
    parts = [
        complete(i, timedelta(0), None),
        outcome(i, "request_authorization", {"idempotency_key": key}),
        outcome(i, command, kwargs),
    ]

    def step(w: World) -> None:
        for part in parts:
            part(w)

    return step


def unguarded(i: int, event_class: type[Aggregate.Event], event: dict[str, Any]) -> Step:
    """Any event on payment ``i``, recorded with no guard asked."""

    def step(w: World) -> None:
        payment_id = w.ids.get(i)
        if payment_id is None:
            return
        w.freeform.add(i)
        payment = w.payments.get(payment_id)
        payment.trigger_event(event_class, timestamp=w.clock.now(), **event)
        w.payments._store.save_payment(payment)

    return step


def advance(delta: timedelta) -> Step:
    def step(w: World) -> None:
        w.clock.advance(delta)

    return step


def look(w: World) -> None:
    """Read the live index: it catches up with the log written so far."""
    w.payments.read_model()


PAYMENT = st.integers(0, PAYMENTS - 1)
CORRELATION = st.none() | TEXT
OUTCOMES = st.one_of(
    st.tuples(st.just("request_authorization"), st.fixed_dictionaries({"idempotency_key": TEXT})),
    st.tuples(
        st.just("approve"),
        st.fixed_dictionaries(
            {
                "payment_transaction_id": KRN,
                "correlation_id": CORRELATION,
                "transaction_expires_at": st.none() | TIMES,
                "cause": CAUSES,
            }
        ),
    ),
    st.tuples(
        st.just("decline"),
        st.fixed_dictionaries(
            {"correlation_id": CORRELATION, "reason": st.none() | TEXT, "cause": CAUSES}
        ),
    ),
    st.tuples(
        st.just("require_step_up"),
        st.fixed_dictionaries(
            {
                "correlation_id": CORRELATION,
                "payment_request_id": st.none() | KRN | TEXT,
                "payment_request_url": st.none() | TEXT,
                "request_lifetime": st.sampled_from([timedelta(hours=3), timedelta(minutes=5)]),
                "cause": CAUSES,
            }
        ),
    ),
    *(
        st.tuples(
            st.just(command),
            st.fixed_dictionaries(
                {
                    "error": TEXT,
                    "status_code": st.none() | st.integers(400, 599),
                    "correlation_id": CORRELATION,
                    "cause": CAUSES,
                }
            ),
        )
        for command in ("fail", "mark_unresolved")
    ),
)
UNGUARDED = st.sampled_from(
    [e for e in EVENTS.values() if not issubclass(e, Aggregate.Created)]
).flatmap(lambda e: st.tuples(st.just(e), event_fields(e)))
STEPS = st.one_of(
    st.builds(create, PAYMENT, st.sampled_from(Flow), st.none() | KRN),
    st.builds(
        complete,
        PAYMENT,
        st.sampled_from([timedelta(0), timedelta(minutes=59), timedelta(minutes=61)]),
        st.none() | KRN,
    ),
    st.builds(on_payments, PAYMENT, st.just("identify_payment_request"), KRN),
    st.builds(on_payments, PAYMENT, st.sampled_from(["expire", "cancel"])),
    st.builds(lambda i, o: outcome(i, *o), PAYMENT, OUTCOMES),
    st.builds(lambda i, k, o: attempt(i, k, *o), PAYMENT, TEXT, OUTCOMES),
    st.builds(lambda i, e: unguarded(i, *e), PAYMENT, UNGUARDED),
    st.builds(advance, st.sampled_from([timedelta(minutes=m) for m in (1, 30, 61, 200)])),
    st.just(look),
)


@contextmanager
def opened(kind: str, clock: ManualClock) -> Iterator[Payments]:
    if kind == "memory":
        yield Payments({"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=clock)
        return
    folder = Path(tempfile.mkdtemp(prefix="klarna-flow-codec-", dir=FAST_TMP))
    payments = Payments.sqlite(folder / "p.sqlite", clock=clock, cipher=TokenCipher.ephemeral())
    try:
        yield payments
    finally:
        payments.close()
        shutil.rmtree(folder, ignore_errors=True)


def stepwise(recorder: ApplicationRecorder) -> list[IndexRow]:
    """The rows of :func:`project` folded over the whole log, one event at a time."""
    rows: dict[UUID, IndexRow] = {}
    for n in recorder.select_notifications(start=1, limit=1_000_000):
        payment_id = as_uuid(n.originator_id)
        row = project(rows.get(payment_id), n)
        if row is not None:
            rows[payment_id] = row
    return sorted(rows.values(), key=lambda r: str(r.payment_id))


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    creates=st.lists(
        st.builds(create, PAYMENT, st.sampled_from(Flow), st.none() | KRN), min_size=1
    ),
    steps=st.lists(STEPS, min_size=5, max_size=40),
    later=st.lists(STEPS, max_size=15),
)
def test_a_rebuild_equals_catching_up_event_by_event(
    kind: str, creates: list[Step], steps: list[Step], later: list[Step]
) -> None:
    clock = ManualClock()
    with opened(kind, clock) as payments:
        world = World(payments, clock)
        for step in creates + steps:
            step(world)
        recorder = payments._store.recorder
        expected = stepwise(recorder)

        assert payments.read_model() == expected  # the live index, caught up in batches
        assert payments.rebuild_read_models() == (recorder.max_notification_id() or 0)
        assert payments.read_model() == expected  # rebuilt (SQLite: read from its own table)
        apart = PaymentIndex(recorder, MemoryIndex())  # rebuilt from the recorder's log
        apart.rebuild()
        assert apart.store.all_rows() == expected

        # Catching up after a rebuild finds the rebuilt rows (keyed alike) and follows them.
        for step in later:
            step(world)
        rows = payments.read_model()
        assert rows == stepwise(recorder)
        for row in rows:  # and a row says what the payment says
            assert_row_is_the_payment(row, payments.get(row.payment_id))


def assert_row_is_the_payment(row: IndexRow, payment: Payment) -> None:
    terms = (payment.reference, payment.amount, payment.currency, payment.created_on.timestamp())
    assert (row.reference, row.amount, row.currency, row.created_at) == terms
    assert (row.state, row.flow, row.version) == (
        payment.state.value,
        payment.flow.value,
        payment.version,
    )
    assert row.payment_transaction_id == payment.payment_transaction_id
    assert row.payment_request_id == payment.payment_request_id


def test_an_index_row_holds_the_terms_and_the_transaction() -> None:
    """The later columns: reference, amount, currency, creation time, transaction id."""
    clock = ManualClock()
    with opened("sqlite", clock) as payments:
        world = World(payments, clock)
        create(0, Flow.AUTHORIZATION, None)(world)
        clock.advance(timedelta(minutes=3))
        approve = {
            "payment_transaction_id": "krn:payment:eu1:transaction:t-1",
            "correlation_id": None,
            "transaction_expires_at": None,
            "cause": "command:authorize",
        }
        attempt(0, "key-1", "approve", approve)(world)
        payments.rebuild_read_models()

        [row] = payments.read_model()

    assert (row.reference, row.amount, row.currency) == ("order-0", 100, "EUR")
    assert row.created_at == datetime(2025, 1, 1, 12, tzinfo=UTC).timestamp()
    assert row.since == row.created_at + 180
    assert row.payment_transaction_id == "krn:payment:eu1:transaction:t-1"


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@settings(max_examples=40, deadline=None, database=None)
@given(
    reference=st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40)
    | st.sampled_from(['o"1', "o\\1", 'a","amount":1', "é€😀"]),
    amount=st.integers(1, 10**9),
    currency=st.sampled_from(["EUR", "SEK", "USD"]),
)
def test_a_payments_terms_rebuild_as_they_were_recorded(
    kind: str, reference: str, amount: int, currency: str
) -> None:
    """Reference, amount and currency read in place (the rebuild) equal those decoded."""
    clock = ManualClock()
    with opened(kind, clock) as payments:
        try:
            payments.create(
                flow=Flow.AUTHORIZATION, amount=amount, currency=currency, reference=reference
            )
        except CommandRefused:  # a reference the application refuses
            return
        expected = stepwise(payments._store.recorder)
        payments.rebuild_read_models()
        [row] = payments.read_model()

    assert [row] == expected
    assert (row.reference, row.amount, row.currency) == (reference, amount, currency)
