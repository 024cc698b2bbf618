"""Audit trails and exports, read from the stored events alone.

An :class:`AuditEntry` is built from a stored record's bytes, never from a
decoded domain event: the payload is JSON that klarna_flow keeps readable (only
token fields are sealed), so a trail needs no cipher key and no event classes.
Secrets never leave this module in clear: a sealed value shows only the id of
the key that sealed it, any field whose name contains ``token`` is masked, and
a token-shaped KRN inside any other text is masked too.

:class:`AuditLog` is the read side an auditor is given. ``AuditLog.open(db)``
opens an existing store with no cipher key through a ``Payments`` that refuses
every write (commands raise :class:`ConfigurationError`), so handing someone
audit access never lets them record an event, least of all one with a token in
clear. It creates no table: a file that holds no klarna_flow store is refused,
and ``read_only=True`` writes nothing at all (SQLite's ``mode=ro``).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from types import TracebackType
from typing import IO, Any
from uuid import UUID

import attrs
from eventsourcing.domain import EventSourcingError
from eventsourcing.persistence import PersistenceError, Recording

from klarna_flow._audit.verify import ChainVerifier, VerificationReport
from klarna_flow._domain.lifecycle import PaymentState, parse_state
from klarna_flow._domain.payment import EVENT_STATES, Payment
from klarna_flow._domain.sealed import PLAINTEXT_KEY_ID, SealedSecret
from klarna_flow._errors import ConfigurationError, InvalidInput, PaymentNotFound, StorageError
from klarna_flow._shared.secrets import MASK, mask
from klarna_flow._store.chain import genesis
from klarna_flow._store.cipher import TokenCipher
from klarna_flow._store.codec import (
    SEALED_SECRET,
    UUID_HEX,
    event_name,
    fields,
    instant,
    sealed_key_id,
    transcoded,
)
from klarna_flow._store.locations import (
    is_postgres_url,
    postgres_env,
    postgres_tables,
    require_tables,
    require_wal,
    sqlite_env,
    sqlite_tables,
)
from klarna_flow._store.payment_store import PaymentStore
from klarna_flow._store.projections import Progress
from klarna_flow._store.read_models import IndexRow, MemoryIndex, ReadModelStore, RowValues, as_uuid

__all__ = ["AuditEntry", "AuditLog", "TextOut", "VerificationReport", "read_entry"]

TextOut = IO[str]
"""Where an export is written: any text stream (a file, ``sys.stdout``, ``StringIO``)."""

PAGE_SIZE = 1000
"""Notifications read per query when streaming the whole log."""

_OWN_FIELDS = frozenset({"timestamp", "originator_topic", "cause", "correlation_id"})
_TOKEN_KRN = re.compile(r"(krn:[^\s\"',;]*?token:)[^\s\"',;)]+")


@attrs.frozen
class AuditEntry:
    """One recorded event of one payment, as an auditor reads it.

    Attributes:
        payment_id: the payment.
        version: the event's position in the payment's history (1 = created).
        recorded_at: when it was recorded (the application's clock, UTC).
        event: the event's name, e.g. ``AuthorizationApproved``.
        state_before: the payment's state before it (None for the first event).
        state_after: the state it left the payment in; None when unchanged.
        cause_kind: ``command``, ``notification`` or ``operator``.
        cause: the command's name, the notification's ``event_id``, or
            the operator who resolved the payment.
        correlation_id: Klarna's correlation id, for events answering a call.
        details: the event's other fields, JSON-safe, secrets masked.
    """

    payment_id: UUID
    version: int
    recorded_at: datetime
    event: str
    state_before: PaymentState | None
    state_after: PaymentState | None
    cause_kind: str
    cause: str
    correlation_id: str | None = None
    details: Mapping[str, Any] = attrs.field(factory=dict, hash=False)

    def as_dict(self) -> dict[str, Any]:
        """The entry as JSON-safe values (one line of an export)."""
        return {
            "payment_id": str(self.payment_id),
            "version": self.version,
            "recorded_at": self.recorded_at.isoformat(),
            "event": self.event,
            "state_before": _value(self.state_before),
            "state_after": _value(self.state_after),
            "cause_kind": self.cause_kind,
            "cause": self.cause,
            "correlation_id": self.correlation_id,
            "details": dict(self.details),
        }


def _value(state: PaymentState | None) -> str | None:
    return None if state is None else state.value


# -- reading one stored record ------------------------------------------------


def read_entry(
    payment_id: UUID,
    version: int,
    topic: str,
    state: bytes,
    state_before: PaymentState | None,
) -> AuditEntry:
    """The audit entry of one stored record (``digest || JSON payload``).

    Raises:
        StorageError: the record is not readable JSON (``verify`` says more).
    """
    try:
        payload = fields(state)
        recorded_at = instant(payload["timestamp"])
    except (TypeError, ValueError, KeyError) as e:
        msg = f"stored event {version} of payment {payment_id} is unreadable; run verify"
        raise StorageError(msg) from e
    name = event_name(topic)
    kind, _, cause = str(payload.get("cause") or "").partition(":")
    correlation_id = payload.get("correlation_id")
    return AuditEntry(
        payment_id=payment_id,
        version=version,
        recorded_at=recorded_at,
        event=name,
        state_before=state_before,
        state_after=EVENT_STATES.get(name),
        cause_kind=kind if cause else "unknown",
        cause=cause if cause else kind,
        correlation_id=correlation_id if isinstance(correlation_id, str) else None,
        details={
            k: _plain(v, secret=_is_secret(k)) for k, v in payload.items() if k not in _OWN_FIELDS
        },
    )


def _is_secret(name: str) -> bool:
    return "token" in name.lower()


def _plain(value: Any, *, secret: bool) -> Any:
    """A transcoded JSON value made plain and safe to show."""
    if isinstance(value, dict):
        typed = transcoded(value)
        if typed is not None:
            return _typed(*typed, secret=secret)
        return {str(k): _plain(v, secret=secret or _is_secret(str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, secret=secret) for v in value]
    if isinstance(value, str):
        return mask(value) if secret else _mask_token_krns(value)
    if secret and value is not None:
        return MASK
    return value


def _typed(kind: str, data: Any, *, secret: bool) -> Any:
    if kind == SEALED_SECRET:
        key = sealed_key_id(data)
        if key == PLAINTEXT_KEY_ID:
            return f"{MASK} (stored unencrypted)"
        return MASK if key is None else f"{MASK} (key {key})"
    if kind == UUID_HEX and isinstance(data, str) and not secret:
        return str(UUID(data))
    return _plain(data, secret=secret)


def _mask_token_krns(text: str) -> str:
    """Mask any token-shaped KRN inside free text (e.g. an error message)."""
    return _TOKEN_KRN.sub(rf"\1{MASK}", text) if "token:" in text else text


def sealed_view(value: SealedSecret | None) -> str | None:
    """How a sealed token is shown: the key that sealed it, never the token."""
    if value is None:
        return None
    return str(_typed(SEALED_SECRET, {"k": value.key_id}, secret=True))


# -- trails and exports ------------------------------------------------------------


def entries(records: Iterable[tuple[UUID, int, str, bytes]]) -> Iterator[AuditEntry]:
    """Audit entries of one payment's records, oldest first."""
    state: PaymentState | None = None
    for oid, version, topic, stored in records:
        entry = read_entry(oid, version, topic, stored, state)
        state = entry.state_after or state
        yield entry


class AuditLog:
    """What an auditor reads: trails, a JSON Lines export, chain verification,
    past states and the read models. It records nothing and needs no key.

    Get one from ``payments.audit_log()``, or open a store with no cipher key
    with ``AuditLog.open(db)``.
    """

    def __init__(self, store: PaymentStore) -> None:
        if not isinstance(store, PaymentStore):
            msg = "AuditLog reads a store: use payments.audit_log() or AuditLog.open(db)"
            raise InvalidInput("store", msg)
        self._store = store

    @classmethod
    def open(
        cls,
        db: str | os.PathLike[str],
        *,
        read_only: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> AuditLog:
        """Open an existing SQLite file or PostgreSQL store for auditing; needs no cipher key.

        No table is ever created: a file or database without klarna_flow's
        tables is refused as it is.

        Args:
            db: an SQLite path or a ``postgresql://`` URL.
            read_only: write nothing at all: an SQLite file is opened
                read-only (``mode=ro``), and the read models are brought up to
                date in memory. Otherwise the read-model tables are kept up to
                date (and rebuilt by ``rebuild_read_models``); events are never
                written either way.
            env: more of eventsourcing's settings (``POSTGRES_SCHEMA``...).

        Raises:
            InvalidInput: ``db`` names an SQLite file that does not exist.
            ConfigurationError: ``db`` holds no klarna_flow store (a file or
                database of something else, or an empty one).
            StorageError: the store cannot be opened (the file is not an
                SQLite database; or, read-only, its journal is not in WAL mode).
        """
        text = os.fspath(db)
        postgres = is_postgres_url(text)
        settings = _env(text, read_only=read_only, extra=env)
        found = None if postgres else sqlite_tables(text)  # read before anything connects
        kind = _ReadOnlyStore if read_only else _KeylessStore
        try:
            store = kind(settings, cipher=_NO_KEY)
        except sqlite3.Error as e:  # e.g. "file is not a database", from the store's constructor
            raise StorageError(f"cannot open the event store at {text}: {e}") from e
        try:
            _require_store(store, text, found)
            if read_only and not postgres:
                require_wal(text)
        except BaseException:
            store.close()
            raise
        return cls(store)

    def trail(self, payment_id: UUID) -> list[AuditEntry]:
        """Every event of the payment, oldest first, with secrets masked.

        Raises:
            PaymentNotFound: no event is stored for this id.
            StorageError: the store failed, or a record is unreadable.
        """
        if not isinstance(payment_id, UUID):
            raise InvalidInput("payment_id", f"must be a UUID, not {type(payment_id).__name__}")
        with _read_errors():
            records = self._store.recorder.select_events(payment_id)
        if not records:
            raise PaymentNotFound(payment_id)
        return list(
            entries(
                (as_uuid(r.originator_id), r.originator_version, r.topic, r.state) for r in records
            )
        )

    def export(
        self,
        out: TextOut,
        payment_id: UUID | None = None,
        *,
        progress: Progress | None = None,
    ) -> int:
        """Write the audit trail as JSON Lines, one entry per line; returns the count.

        One payment's trail, or the whole log in recorded order, streamed a
        page at a time (memory holds one page and each payment's last state).
        """
        if payment_id is not None:
            written = 0
            for entry in self.trail(payment_id):
                out.write(_line(entry))
                written += 1
            return written
        return self._export_log(out, progress)

    def _export_log(self, out: TextOut, progress: Progress | None) -> int:
        recorder = self._store.recorder
        states: dict[UUID, PaymentState] = {}
        written = 0
        with _read_errors():
            total = (recorder.max_notification_id() or 0) if progress else 0
            start = 1
            while page := recorder.select_notifications(start=start, limit=PAGE_SIZE):
                for n in page:
                    oid = as_uuid(n.originator_id)
                    entry = read_entry(oid, n.originator_version, n.topic, n.state, states.get(oid))
                    if entry.state_after is not None:
                        states[oid] = entry.state_after
                    out.write(_line(entry))
                written += len(page)
                start = page[-1].id + 1
                if progress:
                    progress(page[-1].id, total)
        return written

    def verify(
        self, payment_id: UUID | None = None, *, progress: Progress | None = None
    ) -> VerificationReport:
        """Check the hash chain of one payment, or of the whole log.

        Recomputes every digest over the stored bytes (no key, no decoding),
        and compares each payment's last version with the payment index to
        notice a deleted last event.

        Raises:
            PaymentNotFound: ``payment_id`` is given and nothing is known of it.
        """
        store = self._store
        verifier = ChainVerifier(store.recorder, genesis(store.name), store.index.store)
        with _read_errors():
            if payment_id is None:
                return verifier.log(progress=progress)
            if not isinstance(payment_id, UUID):
                raise InvalidInput("payment_id", "must be a UUID")
            return verifier.payment(payment_id)

    def state_at(
        self, payment_id: UUID, *, version: int | None = None, at: datetime | None = None
    ) -> Payment:
        """The payment as it stood at ``version`` or ``at`` (see ``Payments.state_at``)."""
        return self._store.state_at(payment_id, version=version, at=at)

    def get(self, payment_id: UUID) -> Payment:
        """The payment as it stands now (its tokens stay sealed)."""
        return self._store.get(payment_id)

    def read_model(self, state: PaymentState | str | None = None) -> list[IndexRow]:
        """The payment index's rows (all, or those in ``state``), caught up first."""
        return self._store.read_model(None if state is None else parse_state(state))

    def counts_by_state(self) -> dict[str, int]:
        """How many payments are in each state (from the read model)."""
        return self._store.counts_by_state()

    def rebuild_read_models(self, *, progress: Progress | None = None) -> int:
        """Rebuild the read models from the log (kept in memory when read-only)."""
        return self._store.rebuild_read_models(progress=progress)

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


@contextmanager
def _read_errors() -> Iterator[None]:
    """Store failures as StorageError, without the driver's text.

    A driver's message may quote the stored bytes it could not read (a
    tampered record, or a token stored in clear under the plaintext opt-in),
    so only the error's type is kept in the message; the cause is chained.
    """
    try:
        yield
    except (PersistenceError, EventSourcingError) as e:
        msg = (
            f"the event store could not be read ({type(e).__name__}); "
            "a stored record may be damaged or tampered with"
        )
        raise StorageError(msg) from e


def _line(entry: AuditEntry) -> str:
    return json.dumps(entry.as_dict(), separators=(",", ":"), ensure_ascii=False) + "\n"


# -- keyless, write-refusing access -------------------------------------------------

_READ_ONLY = (
    "this store was opened for auditing (no cipher key): it records nothing; "
    "open it with Payments and a key to run commands"
)

# A cipher is required to construct Payments on a durable store. This one holds
# no key and is never used to seal: _KeylessPayments refuses to seal and to save.
_NO_KEY = TokenCipher(None, plaintext=True)


class _KeylessStore(PaymentStore):
    """A store that reads and never records (no save, no seal, no unseal)."""

    name = PaymentStore.name  # same tables, same chain genesis as the writer's

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        raise ConfigurationError(_READ_ONLY)

    def seal(self, payment_id: UUID, field: str, token: str) -> SealedSecret:
        raise ConfigurationError(_READ_ONLY)

    def unseal(self, payment_id: UUID, field: str, sealed: SealedSecret) -> str:
        raise ConfigurationError(_READ_ONLY)


class _ReadOnlyStore(_KeylessStore):
    """A ``_KeylessStore`` that writes nothing, read models included."""

    name = PaymentStore.name

    def _construct_read_model_store(self) -> ReadModelStore:
        return _UpdatedInMemory(super()._construct_read_model_store())


def _env(db: str, *, read_only: bool, extra: Mapping[str, str] | None) -> dict[str, str]:
    """eventsourcing's settings for auditing ``db``: never creating a table."""
    env = postgres_env(db) if is_postgres_url(db) else sqlite_env(db, read_only=read_only)
    env.update(extra or {})
    env["CREATE_TABLE"] = "n"  # an audit never creates the store it reads
    return env


def _require_store(store: PaymentStore, db: str, tables: frozenset[str] | None) -> None:
    """Refuse a store without klarna_flow's events and payment index tables.

    ``tables`` are an SQLite file's, listed before the store was opened; a
    PostgreSQL schema's are listed here.
    """
    needed = (
        store.events_table_name,
        f"{store.name.lower()}_payment_index",  # as SQLIndex names it
    )
    if tables is None:
        tables = postgres_tables(getattr(store.factory, "datastore", None))
    require_tables(tables, needed, db)


class _UpdatedInMemory:
    """The read models as stored, with every update kept in memory.

    Reads go to the stored tables until the first update (a catch-up or a
    rebuild); from then on to a copy in memory, so a read-only audit still
    sees read models that follow the whole log.
    """

    def __init__(self, stored: ReadModelStore) -> None:
        self._stored = stored
        self._memory: MemoryIndex | None = None

    def _reads(self) -> ReadModelStore:
        return self._stored if self._memory is None else self._memory

    def _updates(self) -> MemoryIndex:
        if self._memory is None:
            memory = MemoryIndex()
            position = self._stored.position()
            rows = {r.payment_id: r for r in self._stored.all_rows()}
            memory.apply(rows, expected=0, position=position)
            self._memory = memory
        return self._memory

    def position(self) -> int:
        return self._reads().position()

    def rows(self, ids: Iterable[UUID]) -> dict[UUID, IndexRow]:
        return self._reads().rows(ids)

    def apply(self, rows: Mapping[UUID, IndexRow], *, expected: int, position: int) -> bool:
        return self._updates().apply(rows, expected=expected, position=position)

    def load(self, values: Sequence[RowValues], *, expected: int, position: int) -> bool:
        return self._updates().load(values, expected=expected, position=position)

    def by_payment_request(self, payment_request_id: str) -> UUID | None:
        return self._reads().by_payment_request(payment_request_id)

    def due(self, now: float) -> list[UUID]:
        return self._reads().due(now)

    def in_state(self, state: str) -> list[IndexRow]:
        return self._reads().in_state(state)

    def counts(self) -> dict[str, int]:
        return self._reads().counts()

    def all_rows(self) -> list[IndexRow]:
        return self._reads().all_rows()

    def versions(self) -> list[tuple[UUID, int]]:
        return self._reads().versions()

    def clear(self) -> None:
        self._memory = MemoryIndex()
