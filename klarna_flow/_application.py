"""``Payments``: the eventsourcing application every command goes through.

It wires the pieces together: the clock, the token cipher, the chained mapper,
eventsourcing's persistence (in-memory, SQLite or PostgreSQL, chosen by
eventsourcing's environment variables or an explicit constructor), and the
Klarna client. Commands check input, load the payment, let the domain decide,
and save; eventsourcing's errors are translated at this boundary.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import EventSourcingError
from eventsourcing.persistence import (
    ApplicationRecorder,
    JSONTranscoder,
    Mapper,
    PersistenceError,
    RecordConflictError,
    Recording,
    Transcoding,
)
from eventsourcing.popo import POPOFactory
from eventsourcing.utils import EnvType, strtobool

from klarna_flow._authorization import (
    AuthorizationOutcome,
    Intent,
    outcome_of,
    record_intent,
    record_outcome,
    resume_intent,
)
from klarna_flow._chain import ChainedMapper, genesis
from klarna_flow._cipher import TokenCipher
from klarna_flow._clock import Clock, SystemClock
from klarna_flow._errors import (
    CommandRefused,
    ConcurrentModification,
    ConfigurationError,
    InvalidInput,
    KlarnaError,
    PaymentNotFound,
    ReferenceConflict,
    StorageError,
)
from klarna_flow._lifecycle import DEFAULT_REQUEST_LIFETIME, Flow, PaymentState
from klarna_flow._notifications import NotificationHandler
from klarna_flow._payment import Payment
from klarna_flow._projections import PaymentIndex, Progress
from klarna_flow._read_models import IndexRow, MemoryIndex, ReadModelStore, SQLIndex
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
from klarna_flow._webhooks import NotificationResult
from klarna_flow.klarna import AsyncKlarnaClient, AuthorizationResponse, KlarnaClient

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
        klarna: the :class:`KlarnaClient` ``authorize`` and ``reconcile`` use.
        async_klarna: the :class:`AsyncKlarnaClient` of the ``*_async`` methods.
        signing_keys: notification signing keys by ``Klarna-Signing-Key-Id``.

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
        klarna: KlarnaClient | None = None,
        async_klarna: AsyncKlarnaClient | None = None,
        signing_keys: Mapping[str, bytes] | None = None,
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
        except (EventSourcingError, OSError, ImportError, ValueError, sqlite3.Error) as e:
            raise StorageError(f"cannot open the event store: {e}") from e
        self.cipher = self._construct_cipher(cipher, allow_plaintext)
        self.klarna = klarna
        self.async_klarna = async_klarna
        self.notifications = NotificationHandler(self, signing_keys or {})
        with _storage_errors():
            self.index = PaymentIndex(self.recorder, self._construct_read_model_store())

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

    def _construct_read_model_store(self) -> ReadModelStore:
        datastore = getattr(self.factory, "datastore", None)
        if datastore is None:
            return MemoryIndex()
        create = bool(getattr(self.factory, "env_create_table", lambda: True)())
        schema = getattr(datastore, "schema", None)
        if schema is not None:  # PostgreSQL
            prefix, placeholder = f"{schema}.{self.name.lower()}", "%s"
        else:
            prefix, placeholder = self.name.lower(), "?"
        return SQLIndex(datastore, prefix=prefix, placeholder=placeholder, create=create)

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
            self.save_payment(payment)  # the store's uniqueness decides: no read first
        except ConcurrentModification:
            _check_same_terms(self.get(payment_id), terms, payment_request_id)
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
        _check_completion(session_token, customer_token, payment_request_id)
        if completed_at is not None:
            check_aware(completed_at, "completed_at")
        return self.complete_loaded(
            self.get(payment_id),
            session_token=session_token,
            customer_token=customer_token,
            completed_at=completed_at,
            payment_request_id=payment_request_id,
            cause=cause,
        )

    def complete_loaded(
        self,
        payment: Payment,
        *,
        session_token: str | None,
        customer_token: str | None,
        completed_at: datetime | None,
        payment_request_id: str | None,
        cause: str,
    ) -> Payment:
        """:meth:`complete` on a payment already loaded (saved only if unchanged since).

        Raises:
            ConcurrentModification: the payment changed after it was loaded.
        """
        _check_completion(session_token, customer_token, payment_request_id)
        now = self.now()
        when = now if completed_at is None else check_aware(completed_at, "completed_at")
        if when > now + _CLOCK_SKEW:
            raise InvalidInput("completed_at", "lies in the future")
        payment_id = payment.id
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

    # -- authorization --------------------------------------------------------

    def authorize(self, payment_id: UUID) -> AuthorizationOutcome:
        """Authorize a completed payment with Klarna, exactly once.

        Records ``AuthorizationRequested`` (with an idempotency key fixed for
        this payment and attempt) before calling Klarna, then the outcome.

        Returns:
            The recorded outcome: ``APPROVED``, ``DECLINED``,
            ``STEP_UP_REQUIRED``, ``FAILED`` (Klarna refused without acting;
            another attempt is allowed) or ``PENDING`` (unknown whether Klarna
            acted: ``reconcile`` will find out).

        Raises:
            WrongFlow: a pure tokenization payment (no request is sent).
            InvalidTransition: the payment is not ``COMPLETED``.
            AuthorizationWindowElapsed: 60 minutes passed; ``PaymentExpired``
                was recorded.
            AuthorizationInProgress: another worker requested it first.
            ConfigurationError: no Klarna client was given.
        """
        client = self._client()
        intent = record_intent(self, payment_id)
        return self._send(client, intent, cause="command:authorize")

    def _client(self) -> KlarnaClient:
        if self.klarna is None:
            msg = "Payments was constructed without klarna=KlarnaClient(...)"
            raise ConfigurationError(msg)
        return self.klarna

    def _async_client(self) -> AsyncKlarnaClient:
        if self.async_klarna is None:
            msg = "Payments was constructed without async_klarna=AsyncKlarnaClient(...)"
            raise ConfigurationError(msg)
        return self.async_klarna

    def _send(self, client: KlarnaClient, intent: Intent, *, cause: str) -> AuthorizationOutcome:
        response: AuthorizationResponse | None = None
        error: KlarnaError | None = None
        try:
            response = client.authorize(**intent.request())
        except KlarnaError as e:
            error = e
        return record_outcome(self, intent, response, error, cause=cause)

    def reconcile(
        self, *, older_than: timedelta = timedelta(minutes=5)
    ) -> list[AuthorizationOutcome]:
        """Resolve payments left ``AUTHORIZING`` for longer than ``older_than``.

        Each is re-sent with its recorded idempotency key, so Klarna answers
        with its original result and never creates a second transaction.
        """
        client = self._client()
        return [
            self._send(client, intent, cause="command:reconcile")
            for intent in self._stale_intents(older_than)
        ]

    def _stale_intents(self, older_than: timedelta) -> list[Intent]:
        if not isinstance(older_than, timedelta) or older_than < timedelta(0):
            raise InvalidInput("older_than", "must be a non-negative timedelta")
        cutoff = (self.now() - older_than).timestamp()
        intents = []
        for row in self.read_model("AUTHORIZING"):
            if row.since > cutoff:
                continue
            payment = self.get(row.payment_id)
            if payment.state is PaymentState.AUTHORIZING:
                intents.append(resume_intent(self, payment))
        return intents

    async def authorize_async(self, payment_id: UUID) -> AuthorizationOutcome:
        """:meth:`authorize` with ``AsyncKlarnaClient``; storage runs in a thread."""
        client = self._async_client()
        intent = await asyncio.to_thread(record_intent, self, payment_id)
        return await self._send_async(client, intent, cause="command:authorize")

    async def _send_async(
        self, client: AsyncKlarnaClient, intent: Intent, *, cause: str
    ) -> AuthorizationOutcome:
        response: AuthorizationResponse | None = None
        error: KlarnaError | None = None
        try:
            response = await client.authorize(**intent.request())
        except KlarnaError as e:
            error = e
        return await asyncio.to_thread(record_outcome, self, intent, response, error, cause=cause)

    async def reconcile_async(
        self, *, older_than: timedelta = timedelta(minutes=5)
    ) -> list[AuthorizationOutcome]:
        """:meth:`reconcile` with ``AsyncKlarnaClient``, calls sent concurrently."""
        client = self._async_client()
        intents = await asyncio.to_thread(self._stale_intents, older_than)
        return list(
            await asyncio.gather(
                *(self._send_async(client, i, cause="command:reconcile") for i in intents)
            )
        )

    def outcome(self, payment_id: UUID) -> AuthorizationOutcome:
        """The authorization outcome as recorded now."""
        return outcome_of(self.get(payment_id))

    # -- expiry and notifications ----------------------------------------------

    def expire_overdue(self) -> list[UUID]:
        """Expire every payment whose time ran out; returns the ids expired.

        Reads the payment index (open payments by deadline), not every payment.
        """
        expired = []
        with _storage_errors():
            self.index.catch_up()
            due = self.index.store.due(self.now().timestamp())
        for payment_id in due:
            try:
                self.expire(payment_id, cause="command:expire_overdue")
            except CommandRefused:
                continue  # changed meanwhile (authorized, canceled, already expired)
            expired.append(payment_id)
        return expired

    def handle_notification(self, body: bytes, headers: Mapping[str, str]) -> NotificationResult:
        """Verify and apply one Klarna notification.

        Returns:
            What the endpoint should answer: 2xx to acknowledge, 400 for a bad
            signature or body, 404 for a payment request not known (yet), 503
            when the store failed (Klarna will retry).
        """
        if not isinstance(body, bytes):
            raise InvalidInput("body", "must be the raw request body as bytes")
        return self.notifications.handle(body, headers)

    async def handle_notification_async(
        self, body: bytes, headers: Mapping[str, str]
    ) -> NotificationResult:
        """:meth:`handle_notification` with storage off the event loop."""
        return await asyncio.to_thread(self.handle_notification, body, headers)

    def find_by_payment_request(self, payment_request_id: str | None) -> UUID | None:
        """The payment that holds Klarna's ``payment_request_id``, if any."""
        if not payment_request_id:
            return None
        with _storage_errors():
            self.index.catch_up()
            return self.index.store.by_payment_request(payment_request_id)

    # -- read models ----------------------------------------------------------

    def read_model(self, state: PaymentState | str | None = None) -> list[IndexRow]:
        """Index rows (all, or those in ``state``), caught up first."""
        with _storage_errors():
            self.index.catch_up()
            if state is None:
                return self.index.store.all_rows()
            return self.index.store.in_state(PaymentState(state).value)

    def counts_by_state(self) -> dict[str, int]:
        """How many payments are in each state (from the read model)."""
        with _storage_errors():
            self.index.catch_up()
            return self.index.store.counts()

    def rebuild_read_models(self, *, progress: Progress | None = None) -> int:
        """Drop the read models and rebuild them from the notification log."""
        with _storage_errors():
            return self.index.rebuild(progress=progress)

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
            InvalidInput: ``payment_id`` is not a UUID.
            PaymentNotFound: no event is stored for this id.
        """
        payment_id = _check_id(payment_id)
        with _storage_errors():
            events: list[Payment.Event] = list(self.events.get(payment_id))  # type: ignore[arg-type]
        if not events:
            raise PaymentNotFound(payment_id)
        return iter(events)

    # -- audit ---------------------------------------------------------------
    # klarna_flow._audit builds on Payments, so it is imported where it is used;
    # type checkers read it here.
    from typing import TYPE_CHECKING  # noqa: PLC0415  (this block's own import)

    if TYPE_CHECKING:
        from klarna_flow import _audit  # noqa: PLC0415  (_audit imports this module)
    del TYPE_CHECKING

    def audit_log(self) -> _audit.AuditLog:
        """Audit access to this application's store (see :class:`AuditLog`)."""
        from klarna_flow._audit import AuditLog  # noqa: PLC0415  (see above)

        return AuditLog(self)

    def audit_trail(self, payment_id: UUID) -> list[_audit.AuditEntry]:
        """Every event of the payment, oldest first: time, event, states, cause, details.

        Read from the stored records alone (no key needed); secrets are masked.

        Raises:
            PaymentNotFound: no event is stored for this id.
        """
        return self.audit_log().trail(payment_id)

    def export_audit(
        self,
        out: _audit.TextOut,
        payment_id: UUID | None = None,
        *,
        progress: Progress | None = None,
    ) -> int:
        """Write the audit trail of one payment, or of all, as JSON Lines; returns the count."""
        return self.audit_log().export(out, payment_id, progress=progress)

    def verify(
        self, payment_id: UUID | None = None, *, progress: Progress | None = None
    ) -> _audit.VerificationReport:
        """Check the stored records' hash chain (one payment, or the whole log).

        Returns:
            A report naming the first payment and version that was altered,
            is missing, reordered, unreadable or truncated; ``report.ok`` when
            there is none.
        """
        return self.audit_log().verify(payment_id, progress=progress)


def _project(events: list[Any]) -> Payment:
    payment: Any = None
    for event in events:
        payment = event.mutate(payment)
    assert isinstance(payment, Payment)
    return payment


def _check_completion(
    session_token: str | None, customer_token: str | None, payment_request_id: str | None
) -> None:
    if session_token is not None:
        check_secret_krn(session_token, "session_token")
    if customer_token is not None:
        check_secret_krn(customer_token, "customer_token")
    if payment_request_id is not None:
        check_krn(payment_request_id, "payment_request_id")


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
