"""The payment store: eventsourcing persistence wired for klarna_flow.

:class:`PaymentStore` is the private eventsourcing ``Application`` that
``Payments`` and ``AuditLog`` hold (they compose it; users never reach it).
It chooses the store from eventsourcing's environment variables, installs the
chained mapper and the token cipher, opens the read-model tables beside the
events, loads and saves payments, rebuilds them at any version or time,
answers the read models, and translates eventsourcing's errors at this
boundary.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import EventSourcingError, MutableOrImmutableAggregate
from eventsourcing.persistence import (
    ApplicationRecorder,
    InfrastructureFactory,
    JSONTranscoder,
    Mapper,
    PersistenceError,
    RecordConflictError,
    Recording,
)
from eventsourcing.popo import POPOFactory
from eventsourcing.sqlite import SQLiteFactory
from eventsourcing.utils import Environment, EnvType, strtobool

from klarna_flow._domain.lifecycle import PaymentState
from klarna_flow._domain.payment import Payment
from klarna_flow._domain.sealed import SealedSecret
from klarna_flow._errors import (
    ConcurrentModification,
    ConfigurationError,
    InvalidInput,
    PaymentNotFound,
    StorageError,
)
from klarna_flow._shared.validation import check_aware
from klarna_flow._store.chain import ChainedMapper, genesis
from klarna_flow._store.cipher import TokenCipher
from klarna_flow._store.codec import SealedSecretTranscoding
from klarna_flow._store.heads import recorder_topic
from klarna_flow._store.projections import PaymentIndex, Progress
from klarna_flow._store.read_models import IndexRow, MemoryIndex, ReadModelStore, SQLIndex
from klarna_flow._store.sqlite_pool import cache_statements

__all__ = [
    "ALLOW_PLAINTEXT_ENV",
    "PaymentStore",
    "check_payment_id",
    "payment_id_for",
    "storage_errors",
]

ALLOW_PLAINTEXT_ENV = "KLARNA_FLOW_ALLOW_PLAINTEXT"
_PAYMENT_ID_NAMESPACE = uuid.UUID("5b0a3f3e-8c53-4d5e-9a63-1f0b7c2d9e41")


def payment_id_for(partner_account_id: str | None, reference: str) -> UUID:
    """The deterministic id of the payment with this (account, reference)."""
    return uuid.uuid5(_PAYMENT_ID_NAMESPACE, f"{partner_account_id or ''}\x1f{reference}")


class PaymentStore(Application[UUID]):
    """The event store of payments: persistence, sealing, loading, history, read models.

    Private: ``Payments`` and ``AuditLog`` hold one and expose their own
    commands and queries, so none of eventsourcing's members (``repository``,
    ``save``, ``take_snapshot``...) reach users.

    Args:
        env: eventsourcing's environment (``PERSISTENCE_MODULE``,
            ``SQLITE_DBNAME``, ``POSTGRES_*``...), merged over ``os.environ``.
        cipher: the :class:`TokenCipher` sealing tokens at rest. Default:
            ``KLARNA_FLOW_CIPHER_KEY``; an in-memory store without one uses a
            key that lives as long as the process.
        allow_plaintext: store tokens unencrypted on a durable store with no
            key (local development only; also ``KLARNA_FLOW_ALLOW_PLAINTEXT=1``).

    Raises:
        ConfigurationError: a durable store without a cipher key (and no
            plaintext opt-in), or an invalid setting.
        StorageError: the store cannot be opened.
    """

    name = "Payments"  # names the tables and the chain's genesis: never change it

    def __init__(
        self,
        env: EnvType | None = None,
        *,
        cipher: TokenCipher | None = None,
        allow_plaintext: bool | None = None,
    ) -> None:
        if cipher is not None and not isinstance(cipher, TokenCipher):
            raise InvalidInput("cipher", f"must be a TokenCipher, not {type(cipher).__name__}")
        try:
            super().__init__(env)
        except (EventSourcingError, OSError, ImportError, ValueError, sqlite3.Error) as e:
            raise StorageError(f"cannot open the event store: {e}") from e
        self.cipher = self._construct_cipher(cipher, allow_plaintext)
        self._requests = _RequestIds()
        with storage_errors():
            self.index = PaymentIndex(self.recorder, self._construct_read_model_store())

    # -- construction (eventsourcing's public hooks) ---------------------------

    def _construct_read_model_store(self) -> ReadModelStore:
        factory = self.factory
        if isinstance(factory, POPOFactory):
            return MemoryIndex()
        events = self.events_table_name
        if isinstance(factory, SQLiteFactory):
            return SQLIndex(
                factory.datastore,
                prefix=self.name.lower(),
                placeholder="?",
                create=factory.env_create_table(),
                log=(events, "rowid"),
            )
        from eventsourcing.postgres import PostgresFactory  # noqa: PLC0415  (optional extra)

        if not isinstance(factory, PostgresFactory):
            msg = f"unsupported persistence module: {type(factory).__module__}"
            raise ConfigurationError(msg)
        schema = factory.datastore.schema
        return SQLIndex(
            factory.datastore,
            prefix=f"{schema}.{self.name.lower()}",
            placeholder="%s",
            create=factory.env_create_table(),
            log=(f"{schema}.{events}", "notification_id"),
        )

    @property
    def events_table_name(self) -> str:
        """The events table of an SQL store (eventsourcing names it)."""
        name = getattr(self.recorder, "events_table_name", "")
        return str(name)

    def construct_factory(self, env: Environment) -> InfrastructureFactory[Any]:
        # The recorder that keeps chain heads in the events' transaction
        # (eventsourcing's public hook for choosing the recorder class).
        module = env.get("PERSISTENCE_MODULE") or ""
        topic = recorder_topic(module)
        if topic is not None and not env.get("APPLICATION_RECORDER_TOPIC"):
            env["APPLICATION_RECORDER_TOPIC"] = topic
        if module == "eventsourcing.postgres":
            _small_pool(env)
        factory = super().construct_factory(env)
        if isinstance(factory, SQLiteFactory):
            cache_statements(factory.datastore)
        return factory

    def construct_mapper(self) -> Mapper[UUID]:
        if self.factory.cipher() is not None or self.factory.compressor() is not None:
            msg = (
                "klarna_flow seals secret fields itself and keeps the rest of each "
                "event readable for audits: unset eventsourcing's CIPHER_TOPIC and "
                "COMPRESSOR_TOPIC"
            )
            raise ConfigurationError(msg)
        mapper = ChainedMapper(
            transcoder=self.construct_transcoder(),
        )
        mapper.genesis = genesis(self.name)
        return mapper

    def construct_recorder(self) -> ApplicationRecorder:
        recorder = super().construct_recorder()
        assert isinstance(self.mapper, ChainedMapper)
        self.mapper.recorder = recorder
        return recorder

    def save(
        self, *objs: MutableOrImmutableAggregate[UUID] | Any, **kwargs: Any
    ) -> list[Recording[UUID]]:
        # A digest becomes the chain head only once its insert succeeded.
        assert isinstance(self.mapper, ChainedMapper)
        try:
            recordings = self._save(objs, kwargs)
        except BaseException:
            self.mapper.discard()
            raise
        self.mapper.settle(r.notification for r in recordings)
        return recordings

    def _save(self, objs: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Recording[UUID]]:
        """eventsourcing's ``Application.save``, collecting a payment's events
        without its two runtime Protocol checks per object (a tenth of a save)."""
        if not all(type(obj) is Payment for obj in objs):
            return super().save(*objs, **kwargs)
        processing: ProcessingEvent[UUID] = ProcessingEvent()
        for payment in objs:
            processing.events.extend(payment.collect_events())
            processing.aggregates[payment.id] = payment
        processing.saved_kwargs.update(kwargs)
        recordings = self._record(processing)
        self._take_snapshots(processing)
        self._notify(recordings)
        self.notify(processing.events)  # eventsourcing's deprecated hook, as its save calls it
        return recordings

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(SealedSecretTranscoding())

    @property
    def is_durable(self) -> bool:
        """False for the in-memory store, True for SQLite and PostgreSQL."""
        return not isinstance(self.factory, POPOFactory)

    def _construct_cipher(
        self, cipher: TokenCipher | None, allow_plaintext: bool | None
    ) -> TokenCipher:
        if cipher is not None:
            return cipher
        # self.env is eventsourcing's: os.environ overlaid with the env argument.
        if allow_plaintext is None:
            allow_plaintext = strtobool(self.env.get(ALLOW_PLAINTEXT_ENV, "no") or "no")
        from_env = TokenCipher.from_env(self.env, plaintext=allow_plaintext)
        if from_env is not None:
            return from_env
        if not self.is_durable:
            return TokenCipher.ephemeral()
        msg = (
            "a durable store needs a token cipher key: set KLARNA_FLOW_CIPHER_KEY "
            "(base64 of 32 random bytes) or pass cipher=TokenCipher(key); for local "
            "development only, KLARNA_FLOW_ALLOW_PLAINTEXT=1 or allow_plaintext=True"
        )
        raise ConfigurationError(msg)

    # -- persistence ---------------------------------------------------------

    def get(self, payment_id: UUID) -> Payment:
        """The payment as it stands now.

        Raises:
            PaymentNotFound: no payment with this id.
            StorageError: the store failed.
        """
        payment_id = check_payment_id(payment_id)
        with storage_errors():
            try:
                payment: Payment = self.repository.get(payment_id, projector_func=_mutate_all)
            except AggregateNotFoundError:
                raise PaymentNotFound(payment_id) from None
        assert isinstance(payment, Payment)
        return payment

    def save_payment(self, payment: Payment) -> None:
        """Save pending events; a concurrent writer makes this a typed error."""
        with storage_errors():
            try:
                recordings = self.save(payment)
            except RecordConflictError as e:
                raise ConcurrentModification(
                    f"payment {payment.id} was changed by another writer",
                    payment_id=payment.id,
                    state=payment.state.value,
                ) from e
        for recording in recordings:  # committed: the request ids they name are final
            request_id = getattr(recording.domain_event, "payment_request_id", None)
            if request_id is not None:
                self._requests.remember(request_id, payment.id)

    def seal(self, payment_id: UUID, field: str, token: str) -> SealedSecret:
        return self.cipher.seal(token, aad=payment_id.bytes + field.encode())

    def unseal(self, payment_id: UUID, field: str, sealed: SealedSecret) -> str:
        return self.cipher.open(sealed, aad=payment_id.bytes + field.encode())

    # -- history ------------------------------------------------------------

    def state_at(
        self,
        payment_id: UUID,
        *,
        version: int | None = None,
        at: datetime | None = None,
    ) -> Payment:
        """The payment rebuilt from its stored events up to ``version`` or ``at``.

        Raises:
            InvalidInput: neither or both given, a bad version, a naive ``at``.
            PaymentNotFound: no such payment, or it did not exist yet at ``at``.
        """
        payment_id = check_payment_id(payment_id)
        if (version is None) == (at is None):
            raise InvalidInput("version/at", "give exactly one of version= or at=")
        if version is not None:
            if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                raise InvalidInput("version", "must be a positive int")
            events = list(self.stored_events(payment_id))
            if version > len(events):
                raise InvalidInput("version", f"payment has {len(events)} events")
            return _project(events[:version])
        instant = check_aware(at, "at")
        events = [e for e in self.stored_events(payment_id) if e.timestamp <= instant]
        if not events:
            raise PaymentNotFound(payment_id)
        return _project(events)

    def stored_events(self, payment_id: UUID) -> Iterator[Payment.Event]:
        """The payment's events, decoded, in order.

        Raises:
            InvalidInput: ``payment_id`` is not a UUID.
            PaymentNotFound: no event is stored for this id.
        """
        payment_id = check_payment_id(payment_id)
        with storage_errors():
            events: list[Payment.Event] = list(self.events.get(payment_id))  # type: ignore[arg-type]
        if not events:
            raise PaymentNotFound(payment_id)
        return iter(events)

    # -- read models ------------------------------------------------------------

    def read_model(self, state: PaymentState | None = None) -> list[IndexRow]:
        """Index rows (all, or those in ``state``), caught up first."""
        with storage_errors():
            self.index.catch_up()
            if state is None:
                return self.index.store.all_rows()
            return self.index.store.in_state(state.value)

    def counts_by_state(self) -> dict[str, int]:
        """How many payments are in each state (from the read model)."""
        with storage_errors():
            self.index.catch_up()
            return self.index.store.counts()

    def rebuild_read_models(self, *, progress: Progress | None = None) -> int:
        """Drop the read models and rebuild them from the notification log."""
        with storage_errors():
            return self.index.rebuild(progress=progress)

    def find_by_payment_request(self, payment_request_id: str) -> UUID | None:
        """The payment that holds Klarna's ``payment_request_id``, if any.

        A request id, once recorded, names its payment for good, so an answer
        this process saw recorded, or one the index already holds, needs no
        catching up; only a miss catches the index up and looks again.
        """
        known = self._requests.get(payment_request_id)
        if known is not None:
            return known
        with storage_errors():
            found = self.index.store.by_payment_request(payment_request_id)
            if found is None:
                self.index.catch_up()
                found = self.index.store.by_payment_request(payment_request_id)
        if found is not None:
            self._requests.remember(payment_request_id, found)
        return found

    def due(self, now: datetime) -> list[UUID]:
        """Open payments whose deadline is at or before ``now``."""
        with storage_errors():
            self.index.catch_up()
            return self.index.store.due(now.timestamp())


def _small_pool(env: Environment) -> None:
    """One PostgreSQL connection kept open per store, unless configured.

    eventsourcing keeps five (``POSTGRES_POOL_SIZE``) and opens up to ten more
    on demand (``POSTGRES_MAX_OVERFLOW``). A worker uses one at a time, two
    while it catches up a read model, so five idle connections per worker
    only brought the server's connection limit closer (100 by default: 16
    workers). The pool still grows to the same fifteen under concurrent use
    (threads, ``*_async``) and shrinks back when they idle.
    """
    if not env.get("POSTGRES_POOL_SIZE"):
        env["POSTGRES_POOL_SIZE"] = "1"
        if not env.get("POSTGRES_MAX_OVERFLOW"):
            env["POSTGRES_MAX_OVERFLOW"] = "14"


class _RequestIds:
    """Payment request id -> payment id, as this process saw them recorded (bounded)."""

    def __init__(self, limit: int = 100_000) -> None:
        self._ids: OrderedDict[str, UUID] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def get(self, payment_request_id: str) -> UUID | None:
        with self._lock:
            return self._ids.get(payment_request_id)

    def remember(self, payment_request_id: str, payment_id: UUID) -> None:
        with self._lock:
            self._ids[payment_request_id] = payment_id
            self._ids.move_to_end(payment_request_id)
            if len(self._ids) > self._limit:
                self._ids.popitem(last=False)


def _mutate_all(payment: Any, events: Iterable[Any]) -> Any:
    """eventsourcing's ``project_aggregate`` without its per-event ``assert
    isinstance(event, CanMutateProtocol)``: a runtime Protocol check that cost
    a third of each load (every stored event of a payment has ``mutate``)."""
    for event in events:
        payment = event.mutate(payment)
    return payment


def _project(events: list[Any]) -> Payment:
    payment: Any = None
    for event in events:
        payment = event.mutate(payment)
    assert isinstance(payment, Payment)
    return payment


def check_payment_id(payment_id: object, field: str = "payment_id") -> UUID:
    if not isinstance(payment_id, UUID):
        raise InvalidInput(field, f"must be a UUID, not {type(payment_id).__name__}")
    return payment_id


@contextmanager
def storage_errors() -> Iterator[None]:
    """Translate eventsourcing's persistence failures into StorageError."""
    try:
        yield
    except (PersistenceError, EventSourcingError) as e:
        if isinstance(e, AggregateNotFoundError):
            raise
        raise StorageError(f"event store failure: {type(e).__name__}: {e}") from e
