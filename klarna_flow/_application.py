"""``Payments``: the eventsourcing application every command goes through.

It wires the pieces together: the clock, the token cipher, the chained mapper,
eventsourcing's persistence (in-memory, SQLite or PostgreSQL, chosen by
eventsourcing's environment variables or an explicit constructor), and the
Klarna client. Commands check input, load the payment, let the domain decide,
and save; eventsourcing's errors are translated at this boundary.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import EventSourcingError
from eventsourcing.persistence import (
    ApplicationRecorder,
    JSONTranscoder,
    Mapper,
    PersistenceError,
    RecordConflictError,
    Transcoding,
)
from eventsourcing.popo import POPOFactory
from eventsourcing.utils import EnvType, strtobool

from klarna_flow._chain import ChainedMapper, genesis
from klarna_flow._cipher import TokenCipher
from klarna_flow._clock import Clock, SystemClock
from klarna_flow._errors import (
    ConcurrentModification,
    ConfigurationError,
    InvalidInput,
    PaymentNotFound,
    ReferenceConflict,
    StorageError,
)
from klarna_flow._lifecycle import DEFAULT_REQUEST_LIFETIME, Flow, PaymentState
from klarna_flow._payment import Payment
from klarna_flow._sealed import SealedSecret
from klarna_flow._stores import postgres_env
from klarna_flow._validation import (
    check_amount,
    check_aware,
    check_currency,
    check_krn,
    check_positive_duration,
    check_reference,
    check_secret_krn,
)

__all__ = ["ALLOW_PLAINTEXT_ENV", "Payments"]

ALLOW_PLAINTEXT_ENV = "KLARNA_FLOW_ALLOW_PLAINTEXT"
_PAYMENT_ID_NAMESPACE = uuid.UUID("5b0a3f3e-8c53-4d5e-9a63-1f0b7c2d9e41")
_CLOCK_SKEW = timedelta(minutes=5)


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


class Payments(Application[UUID]):
    """Klarna payments as event-sourced aggregates.

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
        **extensions: Any,
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
        try:
            super().__init__(env)
        except (EventSourcingError, OSError, ImportError, ValueError) as e:
            raise StorageError(f"cannot open the event store: {e}") from e
        self.cipher = self._construct_cipher(cipher, allow_plaintext)
        self._init_extensions(**extensions)

    def _init_extensions(self, **extensions: Any) -> None:
        if extensions:
            names = ", ".join(sorted(extensions))
            raise InvalidInput(names, "unexpected argument")

    # -- construction ---------------------------------------------------------

    @classmethod
    def sqlite(cls, path: str | os.PathLike[str], **kwargs: Any) -> Payments:
        """A ``Payments`` on an SQLite file (created if missing)."""
        env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)}
        env.update(kwargs.pop("env", None) or {})
        return cls(env, **kwargs)

    @classmethod
    def postgres(cls, url: str, **kwargs: Any) -> Payments:
        """A ``Payments`` on PostgreSQL, from ``postgresql://user:pw@host:port/db``."""
        env = postgres_env(url)
        env.update(kwargs.pop("env", None) or {})
        return cls(env, **kwargs)

    @classmethod
    def open(cls, db: str | os.PathLike[str], **kwargs: Any) -> Payments:
        """A PostgreSQL URL or an SQLite path, whichever ``db`` is."""
        text = os.fspath(db)
        if text.startswith(("postgres://", "postgresql://")):
            return cls.postgres(text, **kwargs)
        return cls.sqlite(text, **kwargs)

    def construct_mapper(self) -> Mapper[UUID]:
        mapper = ChainedMapper(
            transcoder=self.construct_transcoder(),
            compressor=self.factory.compressor(),
            cipher=self.factory.cipher(),
        )
        mapper.genesis = genesis(self.name)
        return mapper

    def construct_recorder(self) -> ApplicationRecorder:
        recorder = super().construct_recorder()
        assert isinstance(self.mapper, ChainedMapper)
        self.mapper.recorder = recorder
        return recorder

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
        if allow_plaintext is None:
            allow_plaintext = strtobool(os.environ.get(ALLOW_PLAINTEXT_ENV, "no") or "no")
        from_env = TokenCipher.from_env(os.environ, plaintext=allow_plaintext)
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
        payment_id = _check_id(payment_id)
        with _storage_errors():
            try:
                payment: Payment = self.repository.get(payment_id)
            except AggregateNotFoundError:
                raise PaymentNotFound(payment_id) from None
        assert isinstance(payment, Payment)
        return payment

    def save_payment(self, payment: Payment) -> None:
        """Save pending events; a concurrent writer makes this a typed error."""
        with _storage_errors():
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

    # -- commands ----------------------------------------------------------

    def create(
        self,
        *,
        flow: Flow | str,
        amount: int,
        currency: str,
        reference: str,
        partner_account_id: str | None = None,
        payment_request_id: str | None = None,
    ) -> UUID:
        """Record a new payment; idempotent on (partner account, reference).

        Returns:
            The payment id (the same id for the same call made twice).

        Raises:
            InvalidInput: a bad argument (nothing recorded).
            ReferenceConflict: the reference is taken by different terms.
        """
        flow = _check_flow(flow)
        check_amount(amount)
        check_currency(currency)
        check_reference(reference)
        account = partner_account_id or self.partner_account_id
        if account is not None:
            check_krn(account, "partner_account_id")
        if payment_request_id is not None:
            check_krn(payment_request_id, "payment_request_id")
        payment_id = payment_id_for(account, reference)
        terms = (flow, amount, currency, account or "")
        try:
            existing = self.get(payment_id)
        except PaymentNotFound:
            payment = Payment.create(
                payment_id=payment_id,
                flow=flow,
                amount=amount,
                currency=currency,
                reference=reference,
                partner_account_id=account or "",
                payment_request_id=payment_request_id,
                request_lifetime=self.request_lifetime,
                now=self.now(),
            )
            try:
                self.save_payment(payment)
            except ConcurrentModification:
                existing = self.get(payment_id)  # a racing create won: compare
            else:
                return payment_id
        _check_same_terms(existing, terms, payment_request_id)
        return payment_id

    def complete(
        self,
        payment_id: UUID,
        *,
        session_token: str | None = None,
        customer_token: str | None = None,
        completed_at: datetime | None = None,
        payment_request_id: str | None = None,
        cause: str = "command:complete",
    ) -> Payment:
        """Record that the customer completed the purchase in Klarna.

        Raises:
            InvalidInput: malformed token or naive/future ``completed_at``.
            MissingToken: the tokens do not fit the payment's flow.
            InvalidTransition: the payment is not ``CREATED``.
        """
        payment_id = _check_id(payment_id)
        if session_token is not None:
            check_secret_krn(session_token, "session_token")
        if customer_token is not None:
            check_secret_krn(customer_token, "customer_token")
        if payment_request_id is not None:
            check_krn(payment_request_id, "payment_request_id")
        now = self.now()
        when = now if completed_at is None else check_aware(completed_at, "completed_at")
        if when > now + _CLOCK_SKEW:
            raise InvalidInput("completed_at", "lies in the future")
        payment = self.get(payment_id)
        payment.complete(
            session_token=self._maybe_seal(payment_id, "session_token", session_token),
            customer_token=self._maybe_seal(payment_id, "customer_token", customer_token),
            completed_at=when,
            now=now,
            payment_request_id=payment_request_id,
            cause=cause,
        )
        self.save_payment(payment)
        return payment

    def _maybe_seal(self, payment_id: UUID, field: str, token: str | None) -> SealedSecret | None:
        return None if token is None else self.seal(payment_id, field, token)

    def expire(self, payment_id: UUID, *, cause: str = "command:expire") -> Payment:
        """Record that the payment's time ran out.

        Raises:
            NotYetExpired: the request lifetime or the authorization window is
                still open.
            InvalidTransition: the payment is final (a completed pure
                tokenization payment never expires).
        """
        payment = self.get(payment_id)
        reason = (
            "REQUEST_LIFETIME" if payment.state is PaymentState.CREATED else "AUTHORIZATION_WINDOW"
        )
        payment.expire(now=self.now(), reason=reason, cause=cause)
        self.save_payment(payment)
        return payment

    def cancel(self, payment_id: UUID, *, cause: str = "command:cancel") -> Payment:
        """Record that the payment was canceled before authorization was requested.

        Raises:
            InvalidTransition: authorization was requested, or the payment is final.
        """
        payment = self.get(payment_id)
        payment.cancel(now=self.now(), cause=cause)
        self.save_payment(payment)
        return payment

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
        payment_id = _check_id(payment_id)
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
            PaymentNotFound: no event is stored for this id.
        """
        with _storage_errors():
            events = list(self.events.get(payment_id))
        if not events:
            raise PaymentNotFound(payment_id)
        yield from events  # type: ignore[misc]


def _project(events: list[Any]) -> Payment:
    payment: Any = None
    for event in events:
        payment = event.mutate(payment)
    assert isinstance(payment, Payment)
    return payment


def _check_id(payment_id: object) -> UUID:
    if not isinstance(payment_id, UUID):
        raise InvalidInput("payment_id", f"must be a UUID, not {type(payment_id).__name__}")
    return payment_id


def _check_flow(flow: object) -> Flow:
    try:
        return Flow(str(flow)) if isinstance(flow, str) else Flow(flow)  # type: ignore[arg-type]
    except ValueError:
        names = ", ".join(f.value for f in Flow)
        raise InvalidInput("flow", f"must be one of {names}") from None


def _check_same_terms(
    existing: Payment, terms: tuple[Flow, int, str, str], payment_request_id: str | None
) -> None:
    if (
        existing.flow,
        existing.amount,
        existing.currency,
        existing.partner_account_id,
    ) != terms or (
        payment_request_id is not None
        and existing.payment_request_id not in (None, payment_request_id)
    ):
        raise ReferenceConflict(
            f"reference {existing.reference!r} is already used by payment "
            f"{existing.id} with different terms",
            payment_id=existing.id,
            command="create",
            state=existing.state.value,
        )


@contextmanager
def _storage_errors() -> Iterator[None]:
    """Translate eventsourcing's persistence failures into StorageError."""
    try:
        yield
    except RecordConflictError:
        raise
    except (PersistenceError, EventSourcingError) as e:
        if isinstance(e, AggregateNotFoundError):
            raise
        raise StorageError(f"event store failure: {type(e).__name__}: {e}") from e
