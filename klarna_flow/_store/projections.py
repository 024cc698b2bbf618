"""Read models fed from the application's notification log.

:class:`PaymentIndex` follows the notification log in order and keeps one row
per payment (state, flow, deadlines, version), from which the expiry sweep,
reconcile and the state counts are answered without scanning payments. It
reads each stored record's payload as JSON directly: the row needs a handful
of fields, and skipping full event decoding keeps replays close to the raw
read rate. Updates are tracked (see :mod:`klarna_flow._store.read_models`), so each
event is applied exactly once, whichever worker applies it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import ApplicationRecorder, Notification

from klarna_flow._domain.lifecycle import AUTHORIZATION_WINDOW
from klarna_flow._domain.payment import EVENT_STATES
from klarna_flow._store.chain import DIGEST_SIZE
from klarna_flow._store.read_models import IndexRow, ReadModelStore, RowValues, SQLIndex, as_uuid

__all__ = ["PaymentIndex"]

_WINDOW = AUTHORIZATION_WINDOW.total_seconds()
# The state each event leaves a payment in, as the read model stores it.
_STATE_OF = {name: state.value for name, state in EVENT_STATES.items() if state is not None}
# Events whose payload holds nothing the index keeps but their time (and no
# payment_request_id): their rows are updated from the timestamp alone.
_TIME_ONLY = frozenset(
    {
        "AuthorizationRequested",
        "AuthorizationUnresolved",
        "AuthorizationApproved",
        "AuthorizationDeclined",
        "AuthorizationFailed",
        "PaymentExpired",
        "PaymentCanceled",
    }
)
# How eventsourcing's JSON transcoder writes an event's time, first in its payload.
_TIMESTAMP = b'{"timestamp":{"_type_":"datetime_iso","_data_":"'
_BATCH = 2000
_CACHE_LIMIT = 200_000

Progress = Callable[[int, int], None]
LogRecord = tuple[int, Any, int, str, bytes]
"""(notification id, originator id, version, topic, stored state) of one record."""


def _seconds(value: Any) -> float:
    """POSIX seconds of a transcoded datetime (``{"_type_", "_data_"}``)."""
    text = value["_data_"] if isinstance(value, dict) else value
    return datetime.fromisoformat(text).timestamp()


def project(previous: IndexRow | None, n: Notification) -> IndexRow | None:
    """The row after notification ``n``, given the row before it."""
    kind = n.topic[n.topic.rfind(".") + 1 :]
    if kind == "PaymentCreated":
        fields = json.loads(n.state[DIGEST_SIZE:])
        return IndexRow(
            payment_id=as_uuid(n.originator_id),
            state="CREATED",
            flow=fields["flow"],
            version=n.originator_version,
            since=_seconds(fields["timestamp"]),
            request_expires_at=_seconds(fields["request_expires_at"]),
            authorize_by=None,
            payment_request_id=fields.get("payment_request_id"),
        )
    if previous is None:  # events of a payment whose creation was not seen
        return None
    state = _STATE_OF.get(kind, previous.state)
    if kind in _TIME_ONLY:  # most events: only the time is read, not the whole payload
        since = previous.since if state == previous.state else _timestamp(n.state)
        return IndexRow(
            previous.payment_id,
            state,
            previous.flow,
            n.originator_version,
            since,
            previous.request_expires_at,
            previous.authorize_by,
            previous.payment_request_id,
        )
    fields = json.loads(n.state[DIGEST_SIZE:])
    since = previous.since if state == previous.state else _seconds(fields["timestamp"])
    request_expires_at, authorize_by = previous.request_expires_at, previous.authorize_by
    if kind == "PurchaseCompleted" and previous.flow != "TOKENIZATION":
        authorize_by = _seconds(fields["completed_at"]) + _WINDOW
    if kind == "StepUpRequired":
        request_expires_at = _seconds(fields["request_expires_at"])
        authorize_by = None
    payment_request_id = fields.get("payment_request_id")
    return IndexRow(
        previous.payment_id,
        state,
        previous.flow,
        n.originator_version,
        since,
        request_expires_at,
        authorize_by,
        previous.payment_request_id if payment_request_id is None else payment_request_id,
    )


def _timestamp(stored: bytes) -> float:
    """POSIX seconds of the event's time, which leads the payload as written."""
    if stored.startswith(_TIMESTAMP, DIGEST_SIZE):
        start = DIGEST_SIZE + len(_TIMESTAMP)
        return datetime.fromisoformat(
            stored[start : stored.index(b'"', start)].decode()
        ).timestamp()
    return _seconds(json.loads(stored[DIGEST_SIZE:])["timestamp"])


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


_STEP_UP_OR_COMPLETED = frozenset({"PurchaseCompleted", "StepUpRequired"})
_MAY_NAME_REQUEST = frozenset(
    {"PaymentCreated", "PurchaseCompleted", "PaymentRequestIdentified", "StepUpRequired"}
)


class _Fold:
    """The whole log folded per payment, keeping only the records rows are made of.

    Per payment: [created, state, version, last state change, last completion
    or step-up, records that may name the payment request, last step-up]. Rows come out
    equal to folding :func:`project` over the same records.
    """

    def __init__(self) -> None:
        self._acc: dict[UUID | str, list[Any]] = {}
        self._kinds: dict[str, str] = {}
        self.events = 0

    def __len__(self) -> int:
        return len(self._acc)

    def add(self, batch: Sequence[LogRecord]) -> None:
        acc, kinds, state_of = self._acc, self._kinds, _STATE_OF
        for n in batch:
            _, oid, version, topic, _ = n
            kind = kinds.get(topic)
            if kind is None:
                kind = kinds[topic] = topic[topic.rfind(".") + 1 :]
            if kind == "PaymentCreated":
                acc[oid] = [n, "CREATED", version, n, None, [n], None]
                continue
            a = acc.get(oid)
            if a is None:
                continue
            a[2] = version
            state = state_of.get(kind)
            if state is not None and state != a[1]:
                a[1], a[3] = state, n
            if kind in _STEP_UP_OR_COMPLETED:
                a[4] = n
                if kind == "StepUpRequired":
                    a[6] = n
            if kind in _MAY_NAME_REQUEST:
                a[5].append(n)
        self.events += len(batch)

    def values(self) -> list[RowValues]:
        return [_row(a) for a in self._acc.values()]


def _row(a: list[Any]) -> RowValues:
    created, state, version, change, last_cs, named, step_up = a
    flow = _field(created[4], b"flow")
    request_expires_at = _instant((step_up or created)[4], b"request_expires_at")
    authorize_by = None
    if last_cs is not None and last_cs is not step_up and flow != "TOKENIZATION":
        authorize_by = _instant(last_cs[4], b"completed_at") + _WINDOW
    request_id = None
    for n in reversed(named):
        request_id = _field(n[4], b"payment_request_id")
        if request_id is not None:
            break
    return (
        created[1],
        state,
        flow,
        version,
        _timestamp(change[4]),
        request_expires_at,
        authorize_by,
        request_id,
    )


_DATETIME = b'{"_type_":"datetime_iso","_data_":"'


def _key(key: bytes) -> bytes:
    return b'"' + key + b'":'


# The byte patterns rows are read by, built once.
_KEYS = {k: _key(k) for k in (b"flow", b"payment_request_id")}
_INSTANTS = {k: _key(k) + _DATETIME for k in (b"request_expires_at", b"completed_at")}


def _field(stored: bytes, key: bytes) -> Any:
    """A top-level string (or null) field of a stored payload, read in place.

    JSON escapes every quote inside a string, so ``"key":`` can only match the
    key itself; anything unexpected falls back to decoding the whole payload.
    """
    pattern = _KEYS.get(key) or _key(key)
    at = stored.find(pattern, DIGEST_SIZE)
    if at >= 0:
        value = at + len(pattern)
        if stored.startswith(b"null", value):
            return None
        if stored.startswith(b'"', value):
            end = stored.find(b'"', value + 1)
            if end > 0 and stored[end - 1] != 0x5C:  # no escaped quote to unpick
                return stored[value + 1 : end].decode()
    return json.loads(stored[DIGEST_SIZE:]).get(key.decode())


def _instant(stored: bytes, key: bytes) -> float:
    """POSIX seconds of a top-level datetime field, read in place."""
    pattern = _INSTANTS.get(key) or _key(key) + _DATETIME
    at = stored.find(pattern, DIGEST_SIZE)
    if at >= 0:
        value = at + len(pattern)
        return datetime.fromisoformat(
            stored[value : stored.index(b'"', value)].decode()
        ).timestamp()
    return _seconds(json.loads(stored[DIGEST_SIZE:])[key.decode()])
