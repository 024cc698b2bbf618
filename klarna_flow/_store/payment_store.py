"""The payment store: eventsourcing persistence wired for klarna_flow.

Chooses the store (eventsourcing's environment variables or an explicit
constructor), installs the chained mapper and the token cipher, opens the
read-model tables beside the events, loads and saves payments, rebuilds them
at any version or time, and translates eventsourcing's errors at this boundary.
:class:`~klarna_flow.Payments` builds its commands on top.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Self
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import EventSourcingError
from eventsourcing.persistence import (
    ApplicationRecorder,
    InfrastructureFactory,
    JSONTranscoder,
    Mapper,
    PersistenceError,
    RecordConflictError,
    Recording,
    Transcoding,
)
from eventsourcing.popo import POPOFactory
from eventsourcing.utils import Environment, EnvType, strtobool

from klarna_flow._domain.lifecycle import DEFAULT_REQUEST_LIFETIME
from klarna_flow._domain.payment import Payment
from klarna_flow._domain.sealed import SealedSecret
from klarna_flow._errors import (
    ConcurrentModification,
    ConfigurationError,
    InvalidInput,
    PaymentNotFound,
    StorageError,
)
from klarna_flow._shared.clock import Clock, SystemClock
from klarna_flow._shared.validation import (
    check_aware,
    check_krn,
    check_positive_duration,
)
from klarna_flow._store.chain import ChainedMapper, genesis
from klarna_flow._store.cipher import TokenCipher
from klarna_flow._store.heads import recorder_topic
from klarna_flow._store.locations import postgres_env
from klarna_flow._store.projections import PaymentIndex
from klarna_flow._store.read_models import MemoryIndex, ReadModelStore, SQLIndex

__all__ = [
    "ALLOW_PLAINTEXT_ENV",
    "PaymentStore",
    "check_payment_id",
    "payment_id_for",
    "storage_errors",
]

ALLOW_PLAINTEXT_ENV = "KLARNA_FLOW_ALLOW_PLAINTEXT"
_PAYMENT_ID_NAMESPACE = uuid.UUID("5b0a3f3e-8c53-4d5e-9a63-1f0b7c2d9e41")


class _SealedSecretAsDict(Transcoding):
    type = SealedSecret
    name = "sealed_secret"

    def encode(self, obj: SealedSecret) -> dict[str, str]:
        return {"k": obj.key_id, "n": obj.nonce, "c": obj.ciphertext}

    def decode(self, data: dict[str, str]) -> SealedSecret:
        return SealedSecret(data["k"], data["n"], data["c"])


def payment_id_for(partner_account_id: str | None, reference: str) -> UUID:
    """The deterministic id of the payment with this (account, reference)."""
    return uuid.uuid5(_PAYMENT_ID_NAMESPACE, f"{partner_account_id or ''}\x1f{reference}")


class PaymentStore(Application[UUID]):
    """The event store of payments: persistence, sealing, loading and history.

    :class:`Payments` adds the commands; this class wires eventsourcing's
    store (in-memory, SQLite or PostgreSQL), the chained mapper, the token
    cipher and the read-model store, and translates their errors.

    Args:
        env: eventsourcing's environment (``PERSISTENCE_MODULE``,
            ``SQLITE_DBNAME``, ``POSTGRES_*``...), merged over ``os.environ``.
        clock: where every recorded time comes from (default: system clock).
        partner_account_id: the default Klarna partner account for ``create``.
        cipher: the :class:`TokenCipher` sealing tokens at rest. Default:
            ``KLARNA_FLOW_CIPHER_KEY``; an in-memory store without one uses a
            key that lives as long as the process.
        allow_plaintext: store tokens unencrypted on a durable store with no
            key (local development only; also ``KLARNA_FLOW_ALLOW_PLAINTEXT=1``).
        request_lifetime: how long a payment request lives (Klarna's default
            is 3 hours).

    Raises:
        ConfigurationError: a durable store without a cipher key (and no
            plaintext opt-in), or an invalid setting.
        StorageError: the store cannot be opened.
    """

    name = "Payments"

    def __init__(
        self,
        env: EnvType | None = None,
        *,
        clock: Clock | None = None,
        partner_account_id: str | None = None,
        cipher: TokenCipher | None = None,
        allow_plaintext: bool | None = None,
        request_lifetime: timedelta = DEFAULT_REQUEST_LIFETIME,
    ) -> None:
        self.clock: Clock = clock if clock is not None else SystemClock()
        if not callable(getattr(self.clock, "now", None)):
            raise InvalidInput("clock", "must have a now() method")
        self.partner_account_id = (
            check_krn(partner_account_id, "partner_account_id")
            if partner_account_id is not None
            else None
        )
        self.request_lifetime = check_positive_duration(request_lifetime, "request_lifetime")
        if cipher is not None and not isinstance(cipher, TokenCipher):
            raise InvalidInput("cipher", f"must be a TokenCipher, not {type(cipher).__name__}")
        try:
            super().__init__(env)
        except (EventSourcingError, OSError, ImportError, ValueError, sqlite3.Error) as e:
            raise StorageError(f"cannot open the event store: {e}") from e
        self.cipher = self._construct_cipher(cipher, allow_plaintext)
        with storage_errors():
            self.index = PaymentIndex(self.recorder, self._construct_read_model_store())

    # -- construction ---------------------------------------------------------

    @classmethod
    def sqlite(cls, path: str | os.PathLike[str], **kwargs: Any) -> Self:
        """A ``Payments`` on an SQLite file (created if missing)."""
        env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)}
        env.update(kwargs.pop("env", None) or {})
        return cls(env, **kwargs)

    @classmethod
    def postgres(cls, url: str, **kwargs: Any) -> Self:
        """A ``Payments`` on PostgreSQL, from ``postgresql://user:pw@host:port/db``."""
        env = postgres_env(url)
        env.update(kwargs.pop("env", None) or {})
        return cls(env, **kwargs)

    @classmethod
    def open(cls, db: str | os.PathLike[str], **kwargs: Any) -> Self:
        """A PostgreSQL URL or an SQLite path, whichever ``db`` is."""
        text = os.fspath(db)
        if text.startswith(("postgres://", "postgresql://")):
            return cls.postgres(text, **kwargs)
        return cls.sqlite(text, **kwargs)

    def _construct_read_model_store(self) -> ReadModelStore:
        datastore = getattr(self.factory, "datastore", None)
        if datastore is None:
            return MemoryIndex()
        create = bool(getattr(self.factory, "env_create_table", lambda: True)())
        schema = getattr(datastore, "schema", None)
        events = getattr(self.recorder, "events_table_name", None)
        if schema is not None:  # PostgreSQL
            prefix, placeholder = f"{schema}.{self.name.lower()}", "%s"
            log = (f"{schema}.{events}", "notification_id") if events else None
        else:
            prefix, placeholder = self.name.lower(), "?"
            log = (events, "rowid") if events else None
        return SQLIndex(datastore, prefix=prefix, placeholder=placeholder, create=create, log=log)

    def construct_factory(self, env: Environment) -> InfrastructureFactory[Any]:
        # The recorder that keeps chain heads in the events' transaction
        # (eventsourcing's public hook for choosing the recorder class).
        topic = recorder_topic(env.get("PERSISTENCE_MODULE") or "")
        if topic is not None and not env.get("APPLICATION_RECORDER_TOPIC"):
            env["APPLICATION_RECORDER_TOPIC"] = topic
        return super().construct_factory(env)

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

    def _record(self, processing_event: ProcessingEvent[UUID]) -> list[Recording[UUID]]:
        assert isinstance(self.mapper, ChainedMapper)
        try:
            recordings = super()._record(processing_event)
        except BaseException:
            self.mapper.discard()
            raise
        self.mapper.settle(r.notification for r in recordings)
        return recordings

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(_SealedSecretAsDict())

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

    # -- time and persistence helpers ----------------------------------------

    def now(self) -> datetime:
        """The clock's current time (checked to be timezone-aware)."""
        return check_aware(self.clock.now(), "clock.now()")

    def get(self, payment_id: UUID) -> Payment:
        """The payment as it stands now.

        Raises:
            PaymentNotFound: no payment with this id.
            StorageError: the store failed.
        """
        payment_id = check_payment_id(payment_id)
        with storage_errors():
            try:
                payment: Payment = self.repository.get(payment_id)
            except AggregateNotFoundError:
                raise PaymentNotFound(payment_id) from None
        assert isinstance(payment, Payment)
        return payment

    def save_payment(self, payment: Payment) -> None:
        """Save pending events; a concurrent writer makes this a typed error."""
        with storage_errors():
            try:
                self.save(payment)
            except RecordConflictError as e:
                raise ConcurrentModification(
                    f"payment {payment.id} was changed by another writer",
                    payment_id=payment.id,
                    state=payment.state.value,
                ) from e

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


def _project(events: list[Any]) -> Payment:
    payment: Any = None
    for event in events:
        payment = event.mutate(payment)
    assert isinstance(payment, Payment)
    return payment


def check_payment_id(payment_id: object) -> UUID:
    if not isinstance(payment_id, UUID):
        raise InvalidInput("payment_id", f"must be a UUID, not {type(payment_id).__name__}")
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
