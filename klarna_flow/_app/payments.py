"""``Payments``: the application every command goes through.

It composes the private :class:`~klarna_flow._store.payment_store.PaymentStore`
(an eventsourcing application users never reach) and a
:class:`~klarna_flow._app.ledger.Ledger` over it, and joins the domain and the
Klarna clients: commands check input, load the payment, let the domain decide
and save; authorization is recorded before the call to Klarna; notifications,
the expiry sweep, read models and audit trails are reached from here.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self
from uuid import UUID

from eventsourcing.utils import EnvType

from klarna_flow._app import authorizer, cancellation, transactions
from klarna_flow._app.authorization import AuthorizationOutcome, Intent
from klarna_flow._app.checks import (
    check_flow,
    check_same_terms,
    check_type,
    usable,
)
from klarna_flow._app.initiation import InitiateOptions
from klarna_flow._app.ledger import Ledger, check_completion
from klarna_flow._app.notifications import NotificationHandler
from klarna_flow._app.observed import traced
from klarna_flow._app.queries import PaymentQueries
from klarna_flow._app.token_charges import charge_token
from klarna_flow._domain.lifecycle import (
    DEFAULT_REQUEST_LIFETIME,
    Flow,
    PaymentState,
    is_final,
)
from klarna_flow._domain.payment import Payment
from klarna_flow._errors import (
    CommandRefused,
    ConcurrentModification,
    ConfigurationError,
    InvalidInput,
    InvalidTransition,
)
from klarna_flow._shared.clock import Clock, SystemClock
from klarna_flow._shared.validation import (
    check_amount,
    check_aware,
    check_cause,
    check_currency,
    check_krn,
    check_positive_duration,
    check_reference,
)
from klarna_flow._store.cipher import TokenCipher
from klarna_flow._store.locations import is_postgres_url, postgres_env, sqlite_env
from klarna_flow._store.payment_store import PaymentStore, check_payment_id, payment_id_for
from klarna_flow.klarna import (
    AsyncKlarnaClient,
    Capture,
    CustomerTokenScope,
    KlarnaClient,
    StepUpConfig,
    SupplementaryPurchaseData,
)
from klarna_flow.klarna._webhooks import Headers, NotificationResult, check_signing_keys

__all__ = ["Payments"]


class Payments(PaymentQueries):
    """Klarna payments as event-sourced aggregates: commands, authorization,
    notifications, expiry, read models and audit.

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
        signing_keys: Mapping[str, bytes | str] | None = None,
    ) -> None:
        clock = clock if clock is not None else SystemClock()
        if not callable(getattr(clock, "now", None)):
            raise InvalidInput("clock", "must have a now() method")
        if partner_account_id is not None:
            check_krn(partner_account_id, "partner_account_id")
        check_positive_duration(request_lifetime, "request_lifetime")
        self.klarna = check_type(klarna, KlarnaClient, "klarna")
        self.async_klarna = check_type(async_klarna, AsyncKlarnaClient, "async_klarna")
        keys = check_signing_keys({} if signing_keys is None else signing_keys)
        # Everything is checked before the store is opened: a refused
        # configuration creates nothing.
        self._store = PaymentStore(env, cipher=cipher, allow_plaintext=allow_plaintext)
        self._ledger = Ledger(self._store, clock, partner_account_id, request_lifetime)
        self._notifications = NotificationHandler(self._ledger, keys)

    # -- construction -----------------------------------------------------------

    @classmethod
    def sqlite(cls, path: str | os.PathLike[str], **kwargs: Any) -> Self:
        """A ``Payments`` on an SQLite file (created if missing)."""
        env = sqlite_env(os.fspath(path))
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
        if is_postgres_url(text):
            return cls.postgres(text, **kwargs)
        return cls.sqlite(text, **kwargs)

    @property
    def clock(self) -> Clock:
        """Where every recorded time comes from."""
        return self._ledger.clock

    @property
    def partner_account_id(self) -> str | None:
        """The default Klarna partner account of ``create``."""
        return self._ledger.partner_account_id

    @property
    def request_lifetime(self) -> timedelta:
        """How long a payment request lives when Klarna does not say."""
        return self._ledger.request_lifetime

    @property
    def cipher(self) -> TokenCipher:
        """The cipher sealing tokens at rest (``current_key_id`` names its key)."""
        return self._store.cipher

    @property
    def is_durable(self) -> bool:
        """False for the in-memory store, True for SQLite and PostgreSQL."""
        return self._store.is_durable

    @property
    def notification_counts(self) -> Mapping[str, int]:
        """How many notifications ended in each outcome (unknown types included)."""
        return dict(self._notifications.counts)

    def close(self) -> None:
        """Close the store's connections (the Klarna clients are the caller's)."""
        self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "durable" if self.is_durable else "in-memory"
        return f"Payments({kind}, partner_account_id={self.partner_account_id!r})"

    # -- commands ----------------------------------------------------------

    @traced("create")
    def create(
        self,
        *,
        flow: Flow | str,
        amount: int,
        currency: str,
        reference: str,
        partner_account_id: str | None = None,
        payment_request_id: str | None = None,
        customer_token: str | None = None,
        customer_token_of: UUID | None = None,
        customer_present: bool = False,
    ) -> UUID:
        """Record a new payment; idempotent on (partner account, reference).

        Args:
            customer_token: make it a charge of this stored customer token
                (an ``AUTHORIZATION``; sealed at rest), sent with
                ``initiate`` as ``Klarna-Customer-Token``.
            customer_token_of: charge the customer token held by this
                tokenization payment instead.
            customer_present: a token charge with the customer taking part
                (it may step up); False: customer not present (Klarna answers
                only approved or declined).

        Returns:
            The payment id (the same id for the same call made twice).

        Raises:
            InvalidInput: a bad argument (nothing recorded).
            MissingToken: ``customer_token_of`` holds no customer token.
            ReferenceConflict: the reference is taken by different terms.
        """
        flow = check_flow(flow)
        check_amount(amount)
        check_currency(currency)
        check_reference(reference)
        account = partner_account_id or self.partner_account_id
        if account is not None:
            check_krn(account, "partner_account_id")
        if payment_request_id is not None:
            check_krn(payment_request_id, "payment_request_id")
        payment_id = payment_id_for(account, reference)
        sealed, present = charge_token(
            self._ledger,
            payment_id,
            flow=flow,
            customer_token=customer_token,
            customer_token_of=customer_token_of,
            customer_present=customer_present,
            payment_request_id=payment_request_id,
        )
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
            charge_token=sealed,
            customer_present=present,
        )
        try:
            self._ledger.save(payment)  # the store's uniqueness decides: no read first
        except ConcurrentModification:
            existing = self.get(payment_id)
            check_same_terms(existing, terms, payment_request_id)
            if payment_request_id is not None and existing.payment_request_id is None:
                # The same payment, now with Klarna's request id: keep it, or
                # notifications could never find the payment.
                self.identify_payment_request(
                    payment_id, payment_request_id, cause="command:create"
                )
        return payment_id

    @traced("identify_payment_request")
    def identify_payment_request(
        self, payment_id: UUID, payment_request_id: str, *, cause: str = "command:identify"
    ) -> Payment:
        """Record Klarna's ``payment_request_id`` of a payment, learned after creation.

        Notifications find their payment by it. Recording the id it already
        has records nothing.

        Raises:
            InvalidInput: not a KRN.
            InvalidTransition: the payment is final.
        """
        check_krn(payment_request_id, "payment_request_id")
        check_cause(cause)
        payment = self.get(check_payment_id(payment_id))
        if is_final(payment.state, payment.flow):
            raise InvalidTransition(
                f"payment {payment_id} is {payment.state.value}: its request is settled",
                payment_id=payment.id,
                command="identify_payment_request",
                state=payment.state.value,
            )
        payment.identify_payment_request(payment_request_id, now=self.now(), cause=cause)
        self._ledger.save(payment)
        return payment

    @traced("complete")
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
        payment_id = check_payment_id(payment_id)
        check_completion(session_token, customer_token, payment_request_id)
        check_cause(cause)
        if completed_at is not None:
            check_aware(completed_at, "completed_at")
        return self._ledger.complete(
            self.get(payment_id),
            session_token=session_token,
            customer_token=customer_token,
            completed_at=completed_at,
            payment_request_id=payment_request_id,
            cause=cause,
        )

    @traced("expire")
    def expire(self, payment_id: UUID, *, cause: str = "command:expire") -> Payment:
        """Record that the payment's time ran out.

        Raises:
            NotYetExpired: the request lifetime or the authorization window is
                still open.
            InvalidTransition: the payment is final (a completed pure
                tokenization payment never expires).
        """
        check_cause(cause)
        payment = self.get(payment_id)
        reason = (
            "REQUEST_LIFETIME" if payment.state is PaymentState.CREATED else "AUTHORIZATION_WINDOW"
        )
        payment.expire(now=self.now(), reason=reason, cause=cause)
        self._ledger.save(payment)
        return payment

    @traced("cancel")
    def cancel(self, payment_id: UUID, *, cause: str = "command:cancel") -> Payment:
        """Cancel the payment before a final authorization was requested.

        When a payment request is open and a Klarna client is configured, the
        request is canceled at Klarna first (``DELETE .../payment/requests/{id}``),
        as Klarna recommends for abandoned requests; ``PaymentCanceled`` then
        records ``at_klarna``. Without a client it is canceled here only (and
        a warning is logged).

        Raises:
            InvalidTransition: authorization was requested, or the payment is final.
            CancelRefused: Klarna would not cancel the request (the customer
                completed it already, say); nothing was recorded.
            KlarnaError: Klarna could not be reached; nothing was recorded
                (canceling again is safe).
        """
        check_cause(cause)
        payment_id = check_payment_id(payment_id)
        return cancellation.cancel(self._ledger, self._optional_client(), payment_id, cause)

    @traced("cancel")
    async def cancel_async(self, payment_id: UUID, *, cause: str = "command:cancel") -> Payment:
        """:meth:`cancel` with ``AsyncKlarnaClient``; storage runs in a thread."""
        check_cause(cause)
        payment_id = check_payment_id(payment_id)
        client = None if self.async_klarna is None else usable(self.async_klarna)
        return await cancellation.cancel_async(self._ledger, client, payment_id, cause)

    def _optional_client(self) -> KlarnaClient | None:
        return None if self.klarna is None else usable(self.klarna)

    # -- authorization --------------------------------------------------------

    @traced("initiate")
    def initiate(
        self,
        payment_id: UUID,
        *,
        step_up: StepUpConfig | None = None,
        purchase: SupplementaryPurchaseData | None = None,
        session_token: str | None = None,
        capture: Capture | str | None = None,
        payment_option_id: str | None = None,
        customer_token_scopes: Sequence[CustomerTokenScope | str] | None = None,
    ) -> AuthorizationOutcome:
        """Send the initial authorize call of a ``CREATED`` payment, exactly once.

        Records ``AuthorizationRequested`` (with its idempotency key and what
        the call sends) before calling Klarna, then the outcome. The call
        carries what the payment's flow asks for: a payment transaction
        (``AUTHORIZATION``), a customer token (``TOKENIZATION``), or both.

        Args:
            step_up: how the customer steps up (required unless
                ``session_token`` is given).
            purchase: ``supplementary_purchase_data``.
            session_token: a token from an earlier journey (Express checkout,
                Sign in with Klarna); sealed at rest like every token.
            capture: ``NOW`` to capture at authorization, or ``LATER``.
            payment_option_id: Klarna's payment option, when chosen before.
            customer_token_scopes: the scopes of the requested customer token
                (tokenization flows; default customer not present).

        Returns:
            The recorded outcome: ``APPROVED`` (the transaction is recorded,
            or for a pure tokenization the customer token, and the payment
            is ``COMPLETED``), ``DECLINED``, ``STEP_UP_REQUIRED`` (the payment
            waits for the customer in ``CREATED`` with Klarna's request id,
            URL and ``expires_at``), ``FAILED`` (Klarna refused without
            acting; the payment is ``CREATED`` again) or ``PENDING``.

        Raises:
            InvalidInput: a bad argument (nothing recorded, nothing sent).
            InvalidTransition: the payment is not ``CREATED``, or a payment
                request is already open.
            AuthorizationInProgress: another worker initiated it first.
            ConfigurationError: no Klarna client was given.
        """
        options = InitiateOptions(
            step_up, purchase, session_token, capture, payment_option_id, customer_token_scopes
        )
        client = self._client()
        return authorizer.initiate(self._ledger, client, check_payment_id(payment_id), options)

    @traced("initiate")
    async def initiate_async(
        self,
        payment_id: UUID,
        *,
        step_up: StepUpConfig | None = None,
        purchase: SupplementaryPurchaseData | None = None,
        session_token: str | None = None,
        capture: Capture | str | None = None,
        payment_option_id: str | None = None,
        customer_token_scopes: Sequence[CustomerTokenScope | str] | None = None,
    ) -> AuthorizationOutcome:
        """:meth:`initiate` with ``AsyncKlarnaClient``; storage runs in a thread."""
        options = InitiateOptions(
            step_up, purchase, session_token, capture, payment_option_id, customer_token_scopes
        )
        client = self._async_client()
        payment_id = check_payment_id(payment_id)
        return await authorizer.initiate_async(self._ledger, client, payment_id, options)

    @traced("authorize")
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
        return authorizer.authorize(self._ledger, self._client(), payment_id)

    def _client(self) -> KlarnaClient:
        """The client, checked able to send before anything is recorded."""
        if self.klarna is None:
            msg = "Payments was constructed without klarna=KlarnaClient(...)"
            raise ConfigurationError(msg)
        return usable(self.klarna)

    def _async_client(self) -> AsyncKlarnaClient:
        if self.async_klarna is None:
            msg = "Payments was constructed without async_klarna=AsyncKlarnaClient(...)"
            raise ConfigurationError(msg)
        return usable(self.async_klarna)

    @traced("reconcile")
    def reconcile(
        self, *, older_than: timedelta = timedelta(minutes=5)
    ) -> list[AuthorizationOutcome]:
        """Resolve payments left ``AUTHORIZING`` for longer than ``older_than``.

        Each is re-sent with its recorded idempotency key and session token,
        so Klarna answers with its original result and never creates a second
        transaction. A re-send is never booked as failed: a refusal that
        re-sending cannot change marks the payment unresolved (see
        :meth:`unresolved`). A payment that cannot be re-sent (its token's key
        is not configured, a store failure) is logged and skipped; the others
        go on.
        """
        client = self._client()
        return authorizer.reconcile(self._ledger, client, self._stale_intents(older_than))

    def _stale_intents(self, older_than: timedelta) -> list[Intent]:
        authorizing = self._store.read_model(PaymentState.AUTHORIZING)
        return authorizer.stale_intents(self._ledger, authorizing, older_than)

    @traced("authorize")
    async def authorize_async(self, payment_id: UUID) -> AuthorizationOutcome:
        """:meth:`authorize` with ``AsyncKlarnaClient``; storage runs in a thread."""
        return await authorizer.authorize_async(self._ledger, self._async_client(), payment_id)

    @traced("reconcile")
    async def reconcile_async(
        self, *, older_than: timedelta = timedelta(minutes=5)
    ) -> list[AuthorizationOutcome]:
        """:meth:`reconcile` with ``AsyncKlarnaClient``, calls sent concurrently."""
        client = self._async_client()
        intents = await asyncio.to_thread(self._stale_intents, older_than)
        return await authorizer.reconcile_async(self._ledger, client, intents)

    @traced("resolve")
    def resolve(
        self,
        payment_id: UUID,
        *,
        by: str,
        evidence: str,
        transaction_id: str | None = None,
        no_transaction: bool = False,
    ) -> Payment:
        """Record an operator's resolution of a pending (or unresolved) authorization.

        The last rung of the resolution ladder, for a payment whose call may
        have reached Klarna and that neither a re-send nor a notification
        settled: a human looked (in Klarna's portal, say) and records what
        they found, with ``evidence``, under the cause ``operator:<by>``.

        Args:
            by: who resolves (letters, digits, ``._@+-``; shown in the audit trail).
            evidence: what the resolution rests on (shown in the audit trail).
            transaction_id: the transaction Klarna holds: the payment becomes
                ``AUTHORIZED`` with it.
            no_transaction: Klarna holds none: the payment goes back to where
                the attempt began (``COMPLETED``, or ``CREATED`` for an initial
                call). A transaction Klarna reports later is recorded as a
                conflict and logged at ERROR.

        Raises:
            InvalidInput: a bad argument, or not exactly one of the two.
            InvalidTransition: the payment is not ``AUTHORIZING``.
            WrongFlow: a transaction for a pure tokenization payment.
            ConcurrentModification: it changed meanwhile; nothing recorded.
        """
        return transactions.resolve(
            self._ledger,
            check_payment_id(payment_id),
            by=by,
            evidence=evidence,
            transaction_id=transaction_id,
            no_transaction=no_transaction,
        )

    @traced("refresh_transaction")
    def refresh_transaction(self, payment_id: UUID) -> Payment:
        """Read the payment's transaction at Klarna and record what changed.

        ``GET .../payment/transactions/{id}``; a ``TransactionReported`` event
        is recorded only when Klarna reports something new (see
        ``Payment.transaction_view``).

        Raises:
            InvalidTransition: the payment holds no transaction.
            KlarnaError: Klarna could not be read; nothing recorded.
            ConfigurationError: no Klarna client was given.
        """
        return transactions.refresh(self._ledger, self._client(), check_payment_id(payment_id))

    @traced("refresh_transaction")
    async def refresh_transaction_async(self, payment_id: UUID) -> Payment:
        """:meth:`refresh_transaction` with ``AsyncKlarnaClient``."""
        client = self._async_client()
        return await transactions.refresh_async(self._ledger, client, check_payment_id(payment_id))

    # -- expiry and notifications ----------------------------------------------

    @traced("expire_overdue")
    def expire_overdue(self) -> list[UUID]:
        """Expire every payment whose time ran out; returns the ids expired.

        Reads the payment index (open payments by deadline), not every payment.
        """
        expired = []
        for payment_id in self._store.due(self.now()):
            try:
                self.expire(payment_id, cause="command:expire_overdue")
            except (CommandRefused, ConcurrentModification):
                continue  # changed meanwhile (authorized, canceled, already expired)
            expired.append(payment_id)
        return expired

    @traced("handle_notification")
    def handle_notification(self, body: bytes, headers: Headers) -> NotificationResult:
        """Verify and apply one Klarna notification.

        Returns:
            What the endpoint should answer: 2xx to acknowledge, 400 for a bad
            signature or body, 404 for a payment request not known (yet), 503
            when the store failed (Klarna will retry).
        """
        if not isinstance(body, bytes):
            raise InvalidInput("body", "must be the raw request body as bytes")
        return self._notifications.handle(body, headers)

    async def handle_notification_async(self, body: bytes, headers: Headers) -> NotificationResult:
        """:meth:`handle_notification` with storage off the event loop."""
        return await asyncio.to_thread(self.handle_notification, body, headers)
