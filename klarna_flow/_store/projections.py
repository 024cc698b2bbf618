"""Read models fed from the application's notification log.

:class:`PaymentIndex` follows the notification log in order and keeps one row
per payment (state, flow, deadlines, version), from which the expiry sweep,
reconcile and the state counts are answered without scanning payments. It
reads stored records through :mod:`klarna_flow._store.codec`, never decoding
a whole event: the row needs a handful of fields. Catching up applies
:func:`project` event by event (payloads read as JSON); a rebuild streams the
log through a window that folds each payment's records and reads each row's
fields once, in place, which keeps it close to the raw read rate, in memory
that does not grow with the log. ``tests/test_store_codec.py`` and
``tests/store/test_replay_streaming.py`` keep the two equal.
Updates are tracked (see :mod:`klarna_flow._store.read_models`), so each event
is applied exactly once, whichever worker applies it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import attrs
import msgspec
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import ApplicationRecorder, Notification

from klarna_flow._domain.lifecycle import AUTHORIZATION_WINDOW
from klarna_flow._domain.payment import EVENT_STATES, Payment
from klarna_flow._store.codec import (
    DIGEST_SIZE,
    TYPED,
    event_name,
    fields,
    seconds,
    seconds_field,
)
from klarna_flow._store.read_models import (
    EventLog,
    IndexRow,
    LogRecord,
    ReadModelStore,
    RowValues,
    SQLIndex,
    as_uuid,
)

__all__ = ["PaymentIndex"]

_WINDOW_SECONDS = AUTHORIZATION_WINDOW.total_seconds()
# The state each event leaves a payment in, as the read model stores it.
_STATE_OF = {name: state.value for name, state in EVENT_STATES.items() if state is not None}
# The payload fields a row is made of, besides the event's time.
_ROW_FIELDS = frozenset(
    {"flow", "payment_request_id", "request_expires_at", "completed_at", "payment_transaction_id"}
)
_BATCH = 2000  # records per read of the log
_WINDOW = 40_000  # records a rebuild folds between two writes of rows
_CACHE_LIMIT = 200_000
_TOPICS_KEPT = 1024

Progress = Callable[[int, int], None]


def _declared(event: type) -> frozenset[str]:
    """The fields an event class declares, its own and inherited."""
    return frozenset(
        name for klass in event.__mro__ for name in vars(klass).get("__annotations__", {})
    )


def _kinds_declaring(names: Iterable[str]) -> frozenset[str]:
    """The Payment events that declare any of ``names``."""
    wanted = frozenset(names)
    return frozenset(
        name
        for name, event in vars(Payment).items()
        if isinstance(event, type)
        and issubclass(event, Aggregate.Event)
        and _declared(event) & wanted
    )


# Events read beyond their time, and those that may name the payment request:
# taken from the event classes, so the two ways of making rows cannot disagree
# on a new event.
_READ_IN_FULL = _kinds_declaring(_ROW_FIELDS)
_MAY_NAME_REQUEST = _kinds_declaring({"payment_request_id"})
# Events that give the payment its transaction id. Not every event naming a
# transaction does: one may report a transaction the payment's record
# contradicts, and leaves the payment's id as it was.
_SETS_TRANSACTION = frozenset({"AuthorizationApproved", "ResolvedWithTransaction"})


def project(previous: IndexRow | None, n: Notification) -> IndexRow | None:
    """The row after notification ``n``, given the row before it."""
    kind = event_name(n.topic)
    if kind == "PaymentCreated":
        return _created(n)
    if previous is None:  # events of a payment whose creation was not seen
        return None
    state = _STATE_OF.get(kind, previous.state)
    if kind not in _READ_IN_FULL:  # most events: only the time is read, not the whole payload
        if state == previous.state:
            return attrs.evolve(previous, version=n.originator_version)
        since = seconds_field(n.state, "timestamp")
        return attrs.evolve(previous, state=state, version=n.originator_version, since=since)
    return _read_in_full(previous, n, kind, state)


def _created(n: Notification) -> IndexRow:
    payload = fields(n.state)
    created_at = seconds(payload["timestamp"])
    return IndexRow(
        payment_id=as_uuid(n.originator_id),
        state="CREATED",
        flow=payload["flow"],
        version=n.originator_version,
        since=created_at,
        request_expires_at=seconds(payload["request_expires_at"]),
        authorize_by=None,
        payment_request_id=payload.get("payment_request_id"),
        reference=payload.get("reference"),
        amount=payload.get("amount"),
        currency=payload.get("currency"),
        created_at=created_at,
    )


def _read_in_full(previous: IndexRow, n: Notification, kind: str, state: str) -> IndexRow:
    payload = fields(n.state)
    since = previous.since if state == previous.state else seconds(payload["timestamp"])
    request_expires_at, authorize_by = previous.request_expires_at, previous.authorize_by
    if kind == "PurchaseCompleted" and previous.flow != "TOKENIZATION":
        authorize_by = seconds(payload["completed_at"]) + _WINDOW_SECONDS
    if kind == "StepUpRequired":
        request_expires_at = seconds(payload["request_expires_at"])
        authorize_by = None
    elif kind == "PaymentRequestReported" and payload.get("request_expires_at") is not None:
        request_expires_at = seconds(payload["request_expires_at"])  # Klarna's new deadline
    payment_request_id = payload.get("payment_request_id")
    transaction_id = payload.get("payment_transaction_id") if kind in _SETS_TRANSACTION else None
    return attrs.evolve(
        previous,
        state=state,
        version=n.originator_version,
        since=since,
        request_expires_at=request_expires_at,
        authorize_by=authorize_by,
        payment_request_id=(
            previous.payment_request_id if payment_request_id is None else payment_request_id
        ),
        payment_transaction_id=(
            previous.payment_transaction_id if transaction_id is None else transaction_id
        ),
    )


class PaymentIndex:
    """The payment index, kept up to date from the notification log."""

    def __init__(self, recorder: ApplicationRecorder, store: ReadModelStore) -> None:
        self.recorder = recorder
        self.store = store

    def catch_up(self, *, progress: Progress | None = None) -> int:
        """Apply every notification not yet applied; returns how many this call applied."""
        applied = 0
        cache: dict[UUID, IndexRow] = {}
        fresh = self.store.position() == 0
        total = (self.recorder.max_notification_id() or 0) if progress else 0
        while True:
            position = self.store.position()
            batch = self.recorder.select_notifications(start=position + 1, limit=_BATCH)
            if not batch:
                return applied
            changed = self._project_batch(batch, cache, lookup=not fresh)
            if self.store.apply(changed, expected=position, position=batch[-1].id):
                applied += len(batch)
                if progress:
                    progress(batch[-1].id, total)
            else:  # another worker applied these first: start again from its position
                cache.clear()
                fresh = False
            if len(cache) > _CACHE_LIMIT:
                cache.clear()
                fresh = False

    def _project_batch(
        self, batch: Sequence[Notification], cache: dict[UUID, IndexRow], *, lookup: bool
    ) -> dict[UUID, IndexRow]:
        if lookup:
            ids = {as_uuid(n.originator_id) for n in batch}
            missing = [i for i in ids if i not in cache]
            cache.update(self.store.rows(missing))
        changed: dict[UUID, IndexRow] = {}
        for n in batch:
            oid = as_uuid(n.originator_id)
            row = project(cache.get(oid), n)
            if row is not None:
                cache[oid] = changed[oid] = row
        return changed

    def _read_log(self, after: int, limit: int) -> list[LogRecord]:
        """(id, originator id, version, topic, state) of the next records."""
        return [
            (n.id, n.originator_id, n.originator_version, n.topic, n.state)
            for n in self.recorder.select_notifications(start=after + 1, limit=limit)
        ]

    def rebuild(self, *, progress: Progress | None = None) -> int:
        """Drop the read models and rebuild them from the whole notification log.

        Streams: the log is read a page at a time and folded per payment,
        reading only the few fields the rows need; every ``_WINDOW`` records
        the rows of the payments they touched are written, with the position
        they reach, in one transaction (so a rebuild stopped half way leaves
        read models that a catch-up continues, or a rebuild starts again).
        Memory holds two windows' payments and one window's rows, whatever
        the length of the log.
        """
        self.store.clear()
        log = EventLog.of(self.recorder)  # SQL stores: read leaner than through the recorder
        read = self._read_log if log is None else log.page
        total = (self.recorder.max_notification_id() or 0) if progress else 0
        window = _Window(self.store)
        written = position = applied = 0
        while batch := read(position, _BATCH):
            window.add(batch)
            position = batch[-1][0]
            if window.events >= _WINDOW:
                if not self._load(window.values(), written, position, last=False):
                    return applied + self.catch_up(progress=progress)  # a worker went ahead
                applied += window.events
                written = position
                window.written()
            if progress:
                progress(position, total)
        if not self._load(window.values(), written, position, last=True):
            return applied + self.catch_up(progress=progress)
        return applied + window.events + self.catch_up(progress=progress)

    def _load(self, values: list[RowValues], expected: int, position: int, *, last: bool) -> bool:
        """One write of a rebuild (an SQL store defers its secondary indexes to the last)."""
        if isinstance(self.store, SQLIndex):
            return self.store.load(values, expected=expected, position=position, last=last)
        return self.store.load(values, expected=expected, position=position)


class _CreatedTerms(msgspec.Struct):
    """The fields a row takes from a PaymentCreated payload, decoded as plain
    JSON (as :func:`fields` decodes them; the others are skipped unread)."""

    timestamp: Any
    request_expires_at: Any
    flow: Any = None
    amount: Any = None
    currency: Any = None
    reference: Any = None
    payment_request_id: Any = None


class _Read(msgspec.Struct, gc=False):
    """The fields a row takes from an event read in full, decoded as plain
    JSON in one pass (as :func:`fields` decodes them; the others are skipped
    unread). A time the payload lacks stays ``UNSET``: :func:`_at` raises
    KeyError for it, as ``fields(...)[name]`` does."""

    timestamp: Any = msgspec.UNSET
    completed_at: Any = msgspec.UNSET
    request_expires_at: Any = msgspec.UNSET
    payment_request_id: Any = None
    payment_transaction_id: Any = None


_CREATED_TERMS = msgspec.json.Decoder(_CreatedTerms)
_READ = msgspec.json.Decoder(_Read)
_NO_TIME = (None, msgspec.UNSET)  # a request lifetime an event does not name
# A typed record starts with its event's time.
_TYPED_TIME = TYPED + b'{"timestamp":"'
_TIME_AT = DIGEST_SIZE + len(_TYPED_TIME)

Terms = tuple[Any, Any, Any, Any, float, float | None, Any]
"""(flow, amount, currency, reference, created at, request expiry, payment
request id) of a PaymentCreated record."""


def _payload(stored: bytes) -> memoryview:
    """The JSON of a stored record, in either format, without a copy."""
    start = DIGEST_SIZE + 1 if stored.startswith(TYPED, DIGEST_SIZE) else DIGEST_SIZE
    return memoryview(stored)[start:]


def _seconds(value: Any) -> float:
    """:func:`seconds` of a decoded time (ISO text read without the detour)."""
    return datetime.fromisoformat(value).timestamp() if type(value) is str else seconds(value)


def _at(value: Any, name: str) -> float:
    """:func:`_seconds` of the field ``name`` of a :class:`_Read`; KeyError if it was missing."""
    if value is msgspec.UNSET:
        raise KeyError(name)
    return _seconds(value)


def _created_terms(created: bytes) -> Terms:
    """Every field a row takes from a payment's PaymentCreated record, in either format."""
    try:
        t = _CREATED_TERMS.decode(_payload(created))
    except msgspec.MsgspecError:  # what only Python's JSON reads, or a field missing
        payload = fields(created)
        t = _CreatedTerms(payload["timestamp"], payload["request_expires_at"])
        for name in ("flow", "amount", "currency", "reference", "payment_request_id"):
            setattr(t, name, payload.get(name))
    created_at = _seconds(t.timestamp)
    expires = _seconds(t.request_expires_at)
    return (t.flow, t.amount, t.currency, t.reference, created_at, expires, t.payment_request_id)


def _read(stored: bytes) -> _Read:
    """The fields a row takes from a record read in full, in either format."""
    start = DIGEST_SIZE + 1 if stored.startswith(TYPED, DIGEST_SIZE) else DIGEST_SIZE
    try:
        return _READ.decode(memoryview(stored)[start:])
    except msgspec.MsgspecError:  # what only Python's JSON reads
        payload = fields(stored)
        return _Read(**{name: payload[name] for name in _Read.__struct_fields__ if name in payload})


Topic = tuple[str, str | None, bool]
"""(event name, state the event leaves a payment in or None, read in full) of a topic."""
_TOPICS: dict[str, Topic] = {}  # of each topic a rebuild has seen


def _topic(topic: str) -> Topic:
    """What a rebuild reads of an event, by its topic (bounded: a damaged store
    may hold any topic at all)."""
    if len(_TOPICS) >= _TOPICS_KEPT:
        _TOPICS.clear()
    kind = event_name(topic)
    known = _TOPICS[topic] = (kind, _STATE_OF.get(kind), kind in _READ_IN_FULL)
    return known


def _time(stored: bytes) -> float:
    """The event's time, as :func:`seconds_field` reads it."""
    if stored.startswith(_TYPED_TIME, DIGEST_SIZE):
        end = stored.find(b'"', _TIME_AT)
        if end > 0:
            return datetime.fromisoformat(stored[_TIME_AT:end].decode()).timestamp()
    return seconds_field(stored, "timestamp")


class _Folded(msgspec.Struct, gc=False):
    """One payment's records, as far as its row needs them.

    Holds what sets the row's fields: the events read in full, decoded as
    they come (:class:`_Read`: a few fields each, in one pass), and the
    record that last changed the state, whose time is read when the row is
    wanted (:meth:`row`). The row written is kept; a payment folded on in
    the next window goes on from its values (:meth:`settle`), holding only
    what came since. (Outside the garbage collector's view, as a window holds
    many, and none refers back to another object.)
    """

    payment_id: Any  # as stored: a UUID or its hex digits
    created: bytes | None  # read once, into `terms`
    version: int
    terms: Terms | None = None
    state: str = "CREATED"
    # The event that last changed the state (decoded if read in full, else
    # as stored): its time is `since` (else this one, else creation's).
    changed: _Read | bytes | None = None
    since: float | None = None
    completed: _Read | None = None  # the last completion, unless a step-up followed
    authorize_by: float | None = None  # (else this deadline)
    renewed: _Read | None = None  # the last event naming a new request lifetime
    named: Any = None  # the payment request an event named last (else the terms')
    transaction: Any = None  # the transaction id an event set last
    written: RowValues | None = None  # the row written last, until folded on (settle)

    def row(self) -> RowValues:
        """The row, as folding :func:`project` over the same records makes it."""
        terms = self.terms
        if terms is None:
            assert self.created is not None
            terms = self.terms = _created_terms(self.created)
            self.created = None
        flow, amount, currency, reference, created_at, expires, request = terms
        if self.renewed is not None:
            expires = _at(self.renewed.request_expires_at, "request_expires_at")
        authorize_by = self.authorize_by
        if self.completed is not None and flow != "TOKENIZATION":
            authorize_by = _at(self.completed.completed_at, "completed_at") + _WINDOW_SECONDS
        changed = self.changed
        if changed is None:
            since = created_at if self.since is None else self.since
        elif isinstance(changed, _Read):
            since = _at(changed.timestamp, "timestamp")
        else:
            since = _time(changed)
        return (
            self.payment_id,
            self.state,
            flow,
            self.version,
            since,
            expires,
            authorize_by,
            request if self.named is None else self.named,
            reference,
            amount,
            currency,
            created_at,
            self.transaction,
        )

    def settle(self) -> None:
        """Fold on from the row written last (its values instead of what they
        were read from): done only for a payment that has events after it."""
        row = self.written
        assert row is not None
        self.written = None
        terms = self.terms
        assert terms is not None
        self.terms = (*terms[:5], row[5], row[7])
        self.since, self.changed = row[4], None
        self.authorize_by, self.completed = row[6], None
        self.renewed = self.named = None

    def fold_in(self, kind: str, read: _Read) -> None:
        """An event read in full, folded in as :func:`project` reads it."""
        if kind in _MAY_NAME_REQUEST and read.payment_request_id is not None:
            self.named = read.payment_request_id
        if kind in _SETS_TRANSACTION and read.payment_transaction_id is not None:
            self.transaction = read.payment_transaction_id
        if kind == "PurchaseCompleted":
            self.completed = read
        elif kind == "StepUpRequired":
            self.completed, self.authorize_by, self.renewed = None, None, read
        elif kind == "PaymentRequestReported" and read.request_expires_at not in _NO_TIME:
            self.renewed = read  # Klarna named a new deadline for the request


def _projected(row: IndexRow, record: LogRecord) -> IndexRow:
    """:func:`project` of one record on the row before it."""
    position, oid, version, topic, stored = record
    after = project(row, Notification(oid, version, topic, stored, position))
    assert after is not None  # only a creation starts a row, and a row was given
    return after


class _Window:
    """A stretch of the log folded per payment, between two writes of rows.

    Each payment is folded from its creation (:class:`_Folded`, read no
    further than its row needs). At a write the folded payments stay in
    memory one window more, so a payment whose events straddle a write goes
    on folding; one created earlier still is followed from its stored row,
    event by event (:func:`project`), as a catch-up follows it. Memory
    holds the payments of two windows, not of the log.
    """

    def __init__(self, store: ReadModelStore) -> None:
        self.store = store
        self.folded: dict[Any, _Folded] = {}  # touched since the last write
        self.kept: dict[Any, _Folded] = {}  # written at the last write, still folding
        self.followed: dict[Any, IndexRow] = {}  # created before those, touched since
        self.followed_kept: dict[Any, IndexRow] = {}
        self.unknown: set[Any] = set()  # events of a payment whose creation was not seen
        self.events = 0

    def add(self, batch: Sequence[LogRecord]) -> None:
        folded, topics = self.folded, _TOPICS
        others: list[LogRecord] = []
        for record in batch:
            _, oid, version, topic, stored = record
            kind, state, in_full = topics.get(topic) or _topic(topic)
            if kind == "PaymentCreated":
                folded[oid] = _Folded(oid, stored, version)
                if self.followed or self.followed_kept or self.unknown:
                    self._forget(oid)
                continue
            a = folded.get(oid) or self._resumed(oid)
            if a is None:  # created before the last window, or never
                others.append(record)
                continue
            a.version = version
            if in_full:  # the few events whose fields rows are made of
                read = _read(stored)
                if state is not None and state != a.state:
                    a.state, a.changed = state, read
                a.fold_in(kind, read)
            elif state is not None and state != a.state:
                a.state, a.changed = state, stored
        if others:
            self._follow(others)
        self.events += len(batch)

    def _resumed(self, oid: Any) -> _Folded | None:
        """A payment folded in the window before, folded on in this one."""
        a = self.kept.pop(oid, None)
        if a is not None:
            a.settle()
            self.folded[oid] = a
        return a

    def _forget(self, oid: Any) -> None:
        """A creation starts the payment over: what was known of it goes."""
        self.followed.pop(oid, None)
        self.followed_kept.pop(oid, None)
        self.unknown.discard(oid)

    def _follow(self, records: Sequence[LogRecord]) -> None:
        """Apply records of payments created before the window, in log order,
        to their rows (read from the store once per window)."""
        pending: dict[Any, list[LogRecord]] = {}
        for record in records:
            oid = record[1]
            if oid in self.folded:  # created later in the same page: these came before it
                continue
            row = self.followed.get(oid)
            if row is None:
                row = self.followed_kept.pop(oid, None)
            if row is not None:
                self.followed[oid] = _projected(row, record)
            elif oid not in self.unknown:
                pending.setdefault(oid, []).append(record)
        if not pending:
            return
        ids = {oid: as_uuid(oid) for oid in pending}
        stored = self.store.rows(ids.values())
        for oid, waiting in pending.items():
            found = stored.get(ids[oid])
            if found is None:
                self.unknown.add(oid)
                continue
            for record in waiting:
                found = _projected(found, record)
            self.followed[oid] = found

    def values(self) -> list[RowValues]:
        """The rows of every payment touched since the last write."""
        values = []
        for a in self.folded.values():
            a.written = row = a.row()
            values.append(row)
        values += [row.values() for row in self.followed.values()]
        return values

    def written(self) -> None:
        """The rows are stored: start the next window."""
        self.kept, self.folded = self.folded, {}
        self.followed_kept, self.followed = self.followed, {}
        self.unknown.clear()
        self.events = 0
