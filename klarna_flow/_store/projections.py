"""Read models fed from the application's notification log.

:class:`PaymentIndex` follows the notification log in order and keeps one row
per payment (state, flow, deadlines, version), from which the expiry sweep,
reconcile and the state counts are answered without scanning payments. It
reads stored records through :mod:`klarna_flow._store.codec`, never decoding
a whole event: the row needs a handful of fields. Catching up applies
:func:`project` event by event (payloads read as JSON); a rebuild folds the
whole log first and reads each row's fields once, in place, which keeps it
close to the raw read rate. ``tests/test_store_codec.py`` keeps the two equal.
Updates are tracked (see :mod:`klarna_flow._store.read_models`), so each event
is applied exactly once, whichever worker applies it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from uuid import UUID

import attrs
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import ApplicationRecorder, Notification

from klarna_flow._domain.lifecycle import AUTHORIZATION_WINDOW
from klarna_flow._domain.payment import EVENT_STATES, Payment
from klarna_flow._store.codec import (
    DIGEST_SIZE,
    event_name,
    fields,
    seconds,
    seconds_field,
    text_field,
)
from klarna_flow._store.read_models import IndexRow, ReadModelStore, RowValues, SQLIndex, as_uuid

__all__ = ["PaymentIndex"]

_WINDOW = AUTHORIZATION_WINDOW.total_seconds()
# The state each event leaves a payment in, as the read model stores it.
_STATE_OF = {name: state.value for name, state in EVENT_STATES.items() if state is not None}
# The payload fields a row is made of, besides the event's time.
_ROW_FIELDS = frozenset(
    {"flow", "payment_request_id", "request_expires_at", "completed_at", "payment_transaction_id"}
)
_BATCH = 2000
_CACHE_LIMIT = 200_000

Progress = Callable[[int, int], None]
LogRecord = tuple[int, Any, int, str, bytes]
"""(notification id, originator id, version, topic, stored state) of one record."""


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
        authorize_by = seconds(payload["completed_at"]) + _WINDOW
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

        A rebuild folds the log in memory, reading only the few fields the
        final rows need, and writes every row in one transaction; past
        ``_CACHE_LIMIT`` payments it writes what it has and catches up the rest.
        """
        self.store.clear()
        fold = _Fold()
        position = 0
        total = (self.recorder.max_notification_id() or 0) if progress else 0
        # A store beside the events reads the log itself, leaner than the recorder.
        store = self.store
        read = store.read_log if isinstance(store, SQLIndex) and store.reads_log else self._read_log
        while len(fold) < _CACHE_LIMIT:
            batch = read(position, _BATCH)
            if not batch:
                break
            fold.add(batch)
            position = batch[-1][0]
            if progress:
                progress(position, total)
        if not self.store.load(fold.values(), expected=0, position=position):
            return self.catch_up(progress=progress)  # a worker caught up meanwhile
        return fold.events + self.catch_up(progress=progress)


class _Folded:
    """One payment's records, as far as its row needs them."""

    __slots__ = (
        "changed",
        "completed",
        "created",
        "naming",
        "payment_id",
        "renewed",
        "state",
        "transacting",
        "version",
    )

    def __init__(self, payment_id: Any, created: bytes, version: int) -> None:
        self.payment_id = payment_id  # as stored: a UUID or its text
        self.created = created  # the flow and the first request lifetime
        self.state = "CREATED"
        self.version = version
        self.changed = created  # the record that last changed the state: its time is `since`
        self.completed: bytes | None = None  # the last completion, unless a step-up followed
        self.renewed: bytes | None = None  # the last step-up: its request lifetime counts
        self.naming = [created]  # records that may name the payment request, oldest first
        self.transacting: list[bytes] = []  # records that set the transaction id, oldest first

    def row(self) -> RowValues:
        """The row, as folding :func:`project` over the same records makes it."""
        created = self.created
        flow, amount, currency, reference = _terms(created)
        created_at = seconds_field(created, "timestamp")
        request_expires_at = seconds_field(self.renewed or created, "request_expires_at")
        authorize_by = None
        if self.completed is not None and flow != "TOKENIZATION":
            authorize_by = seconds_field(self.completed, "completed_at") + _WINDOW
        since = created_at if self.changed is created else seconds_field(self.changed, "timestamp")
        return (
            self.payment_id,
            self.state,
            flow,
            self.version,
            since,
            request_expires_at,
            authorize_by,
            _last_named(self.naming, "payment_request_id"),
            reference,
            amount,
            currency,
            created_at,
            _last_named(self.transacting, "payment_transaction_id"),
        )


# PaymentCreated's terms as its records hold them (fields in declared order, no
# escape in the strings): one search instead of four reads. A quote inside a
# string is escaped, so ``"flow":"`` can only match the key. Anything else is
# read field by field.
_TERMS = re.compile(
    rb'"flow":"([^"\\]*)","amount":(\d+),"currency":"([^"\\]*)","reference":"([^"\\]*)"'
)


def _terms(created: bytes) -> tuple[Any, Any, Any, Any]:
    """(flow, amount, currency, reference) of a PaymentCreated record."""
    found = _TERMS.search(created, DIGEST_SIZE)
    if found is not None:
        flow, amount, currency, reference = found.groups()
        return flow.decode(), int(amount), currency.decode(), reference.decode()
    return (
        text_field(created, "flow"),
        _int_field(created, "amount"),
        text_field(created, "currency"),
        text_field(created, "reference"),
    )


def _int_field(state: bytes, name: str) -> Any:
    """A top-level integer field read in place, as :func:`fields` would give it
    (whatever the JSON holds, should it hold something else)."""
    pattern = b'"' + name.encode() + b'":'
    at = state.find(pattern, DIGEST_SIZE)
    if at >= 0:
        start = end = at + len(pattern)
        while end < len(state) and 48 <= state[end] <= 57:  # ASCII digits
            end += 1
        if end > start and state[end : end + 1] in {b",", b"}"}:
            return int(state[start:end])
    return fields(state).get(name)


def _last_named(records: Sequence[bytes], name: str) -> Any:
    """The field ``name`` of the newest record that holds a value for it, else None."""
    for stored in reversed(records):
        value = text_field(stored, name)
        if value is not None:
            return value
    return None


def _names_expiry(stored: bytes) -> bool:
    return fields(stored).get("request_expires_at") is not None


class _Fold:
    """The whole log folded per payment, keeping only the records rows are made of.

    Reads no payload while folding: each row's few fields are read once, at
    the end, from the records that last set them.
    """

    def __init__(self) -> None:
        self._acc: dict[UUID | str, _Folded] = {}
        self.events = 0

    def __len__(self) -> int:
        return len(self._acc)

    def add(self, batch: Sequence[LogRecord]) -> None:
        acc, state_of = self._acc, _STATE_OF
        read_in_full, naming, transacting = _READ_IN_FULL, _MAY_NAME_REQUEST, _SETS_TRANSACTION
        for _, oid, version, topic, stored in batch:
            kind = event_name(topic)
            if kind == "PaymentCreated":
                acc[oid] = _Folded(oid, stored, version)
                continue
            a = acc.get(oid)
            if a is None:  # events of a payment whose creation was not seen
                continue
            a.version = version
            state = state_of.get(kind)
            if state is not None and state != a.state:
                a.state, a.changed = state, stored
            if kind in read_in_full:  # the few events whose fields rows are made of
                if kind in naming:
                    a.naming.append(stored)
                if kind in transacting:
                    a.transacting.append(stored)
                if kind == "PurchaseCompleted":
                    a.completed = stored
                elif kind == "StepUpRequired":
                    a.completed, a.renewed = None, stored
                elif kind == "PaymentRequestReported" and _names_expiry(stored):
                    a.renewed = stored  # Klarna named a new deadline for the request
        self.events += len(batch)

    def values(self) -> list[RowValues]:
        return [a.row() for a in self._acc.values()]
