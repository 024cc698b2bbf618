"""``Payments``: the application every command goes through.

Built on :class:`~klarna_flow._store.payment_store.PaymentStore` (persistence,
sealing, history), it joins the domain and the Klarna client: commands check
input, load the payment, let the domain decide and save; authorization is
recorded before the call to Klarna; notifications, the expiry sweep, read
models and audit trails are reached from here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TypeVar
from uuid import UUID

from eventsourcing.utils import EnvType

from klarna_flow._app.authorization import (
    AUTHORIZE,
    RECONCILE,
    AuthorizationOutcome,
    Intent,
    outcome_of,
    record_intent,
    record_outcome,
    resume_intent,
)
from klarna_flow._app.notifications import NotificationHandler
from klarna_flow._domain.lifecycle import DEFAULT_REQUEST_LIFETIME, Flow, PaymentState, is_final
from klarna_flow._domain.payment import Payment
from klarna_flow._domain.sealed import SealedSecret
from klarna_flow._errors import (
    CommandRefused,
    ConcurrentModification,
    ConfigurationError,
    InvalidInput,
    InvalidTransition,
    KlarnaError,
    KlarnaFlowError,
    PaymentNotFound,
    ReferenceConflict,
)
from klarna_flow._shared.clock import Clock
from klarna_flow._shared.validation import (
    check_amount,
    check_aware,
    check_cause,
    check_currency,
    check_krn,
    check_reference,
    check_secret_krn,
)
from klarna_flow._store.cipher import TokenCipher
from klarna_flow._store.payment_store import (
    PaymentStore,
    check_payment_id,
    payment_id_for,
    storage_errors,
)
from klarna_flow._store.projections import Progress
from klarna_flow._store.read_models import IndexRow
from klarna_flow.klarna import AsyncKlarnaClient, AuthorizationResponse, KlarnaClient
from klarna_flow.klarna._webhooks import Headers, NotificationResult

__all__ = ["Payments"]

logger = logging.getLogger("klarna_flow")

_CLOCK_SKEW = timedelta(minutes=5)


class Payments(PaymentStore):
    """Klarna payments as event-sourced aggregates: commands, authorization,
    notifications, expiry, read models and audit (storage: :class:`PaymentStore`).

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
        signing_keys: Mapping[str, bytes | str] | None = None,
    ) -> None:
        super().__init__(
            env,
            clock=clock,
            partner_account_id=partner_account_id,
            cipher=cipher,
            allow_plaintext=allow_plaintext,
            request_lifetime=request_lifetime,
        )
        self.klarna = _check_type(klarna, KlarnaClient, "klarna")
        self.async_klarna = _check_type(async_klarna, AsyncKlarnaClient, "async_klarna")
        self.notifications = NotificationHandler(self, {} if signing_keys is None else signing_keys)

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
            existing = self.get(payment_id)
            _check_same_terms(existing, terms, payment_request_id)
            if payment_request_id is not None and existing.payment_request_id is None:
                # The same payment, now with Klarna's request id: keep it, or
                # notifications could never find the payment.
                self.identify_payment_request(
                    payment_id, payment_request_id, cause="command:create"
                )
        return payment_id

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
        self.save_payment(payment)
        return payment

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
        _check_completion(session_token, customer_token, payment_request_id)
        check_cause(cause)
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
        check_cause(cause)
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
        check_cause(cause)
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
        check_cause(cause)
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
        return self._send(client, intent, cause=AUTHORIZE)

    def _client(self) -> KlarnaClient:
        """The client, checked able to send before anything is recorded."""
        if self.klarna is None:
            msg = "Payments was constructed without klarna=KlarnaClient(...)"
            raise ConfigurationError(msg)
        return _usable(self.klarna)

    def _async_client(self) -> AsyncKlarnaClient:
        if self.async_klarna is None:
            msg = "Payments was constructed without async_klarna=AsyncKlarnaClient(...)"
            raise ConfigurationError(msg)
        return _usable(self.async_klarna)

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
        with its original result and never creates a second transaction. A
        payment that cannot be re-sent (its token's key is not configured, a
        store failure) is logged and skipped; the others go on.
        """
        client = self._client()
        outcomes = []
        for intent in self._stale_intents(older_than):
            try:
                outcomes.append(self._send(client, intent, cause=RECONCILE))
            except KlarnaFlowError as e:
                _skipped(intent.payment_id, e)
        return outcomes

    def _stale_intents(self, older_than: timedelta) -> list[Intent]:
        if not isinstance(older_than, timedelta) or older_than < timedelta(0):
            raise InvalidInput("older_than", "must be a non-negative timedelta")
        cutoff = (self.now() - older_than).timestamp()
        intents = []
        for row in self.read_model("AUTHORIZING"):
            if row.since > cutoff:
                continue
            try:
                payment = self.get(row.payment_id)
                if payment.state is PaymentState.AUTHORIZING:
                    intents.append(resume_intent(self, payment))
            except KlarnaFlowError as e:
                _skipped(row.payment_id, e)
        return intents

    async def authorize_async(self, payment_id: UUID) -> AuthorizationOutcome:
        """:meth:`authorize` with ``AsyncKlarnaClient``; storage runs in a thread."""
        client = self._async_client()
        intent = await asyncio.to_thread(record_intent, self, payment_id)
        return await self._send_async(client, intent, cause=AUTHORIZE)

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

        async def resend(intent: Intent) -> AuthorizationOutcome | None:
            try:
                return await self._send_async(client, intent, cause=RECONCILE)
            except KlarnaFlowError as e:
                _skipped(intent.payment_id, e)
                return None

        outcomes = await asyncio.gather(*(resend(i) for i in intents))
        return [o for o in outcomes if o is not None]

    def outcome(self, payment_id: UUID) -> AuthorizationOutcome | None:
        """The outcome of the payment's last authorization attempt, as recorded now.

        Returns:
            None when authorization was never requested (Klarna was never
            asked, so there is no outcome to report).
        """
        payment = self.get(payment_id)
        return None if payment.last_result is None else outcome_of(payment)

    def unresolved(self) -> list[IndexRow]:
        """Payments whose authorization may have reached Klarna and waits for evidence.

        Each is still ``AUTHORIZING``: a re-send was answered with an error that
        proves nothing about the call before it (see the audit trail for the
        answer). Found through the payment index, then checked on the payment.
        """
        rows = []
        for row in self.read_model(PaymentState.AUTHORIZING):
            try:
                if self.get(row.payment_id).is_unresolved:
                    rows.append(row)
            except PaymentNotFound:
                continue  # deleted from the store under the index: verify reports it
        return rows

    # -- expiry and notifications ----------------------------------------------

    def expire_overdue(self) -> list[UUID]:
        """Expire every payment whose time ran out; returns the ids expired.

        Reads the payment index (open payments by deadline), not every payment.
        """
        expired = []
        with storage_errors():
            self.index.catch_up()
            due = self.index.store.due(self.now().timestamp())
        for payment_id in due:
            try:
                self.expire(payment_id, cause="command:expire_overdue")
            except (CommandRefused, ConcurrentModification):
                continue  # changed meanwhile (authorized, canceled, already expired)
            expired.append(payment_id)
        return expired

    def handle_notification(self, body: bytes, headers: Headers) -> NotificationResult:
        """Verify and apply one Klarna notification.

        Returns:
            What the endpoint should answer: 2xx to acknowledge, 400 for a bad
            signature or body, 404 for a payment request not known (yet), 503
            when the store failed (Klarna will retry).
        """
        if not isinstance(body, bytes):
            raise InvalidInput("body", "must be the raw request body as bytes")
        return self.notifications.handle(body, headers)

    async def handle_notification_async(self, body: bytes, headers: Headers) -> NotificationResult:
        """:meth:`handle_notification` with storage off the event loop."""
        return await asyncio.to_thread(self.handle_notification, body, headers)

    def find_by_payment_request(self, payment_request_id: str | None) -> UUID | None:
        """The payment that holds Klarna's ``payment_request_id``, if any."""
        if not payment_request_id:
            return None
        with storage_errors():
            self.index.catch_up()
            return self.index.store.by_payment_request(payment_request_id)

    # -- read models ----------------------------------------------------------

    def read_model(self, state: PaymentState | str | None = None) -> list[IndexRow]:
        """Index rows (all, or those in ``state``), caught up first."""
        with storage_errors():
            self.index.catch_up()
            if state is None:
                return self.index.store.all_rows()
            return self.index.store.in_state(_check_state(state).value)

    def counts_by_state(self) -> dict[str, int]:
        """How many payments are in each state (from the read model)."""
        with storage_errors():
            self.index.catch_up()
            return self.index.store.counts()

    def rebuild_read_models(self, *, progress: Progress | None = None) -> int:
        """Drop the read models and rebuild them from the notification log."""
        with storage_errors():
            return self.index.rebuild(progress=progress)

    # -- audit ---------------------------------------------------------------
    # klarna_flow._audit.log builds on Payments, so it is imported where it is used;
    # type checkers read it here.
    from typing import TYPE_CHECKING  # noqa: PLC0415  (this block's own import)

    if TYPE_CHECKING:
        from klarna_flow._audit import log as _audit  # noqa: PLC0415  (it imports this module)
    del TYPE_CHECKING

    def audit_log(self) -> _audit.AuditLog:
        """Audit access to this application's store (see :class:`AuditLog`)."""
        from klarna_flow._audit.log import AuditLog  # noqa: PLC0415  (see above)

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


def _skipped(payment_id: UUID, error: KlarnaFlowError) -> None:
    logger.warning("reconcile skipped payment %s: %s: %s", payment_id, type(error).__name__, error)


def _check_completion(
    session_token: str | None, customer_token: str | None, payment_request_id: str | None
) -> None:
    if session_token is not None:
        check_secret_krn(session_token, "session_token")
    if customer_token is not None:
        check_secret_krn(customer_token, "customer_token")
    if payment_request_id is not None:
        check_krn(payment_request_id, "payment_request_id")


_Typed = TypeVar("_Typed")


def _check_type(value: _Typed | None, kind: type[_Typed], field: str) -> _Typed | None:
    if value is not None and not isinstance(value, kind):
        raise InvalidInput(field, f"must be a {kind.__name__}, not {type(value).__name__}")
    return value


_Client = TypeVar("_Client", KlarnaClient, AsyncKlarnaClient)


def _usable(client: _Client) -> _Client:
    if client.is_closed:
        msg = f"the {type(client).__name__} given to Payments is closed; nothing was recorded"
        raise ConfigurationError(msg)
    return client


def _check_state(state: object) -> PaymentState:
    try:
        return PaymentState(str(state))
    except ValueError:
        names = ", ".join(s.value for s in PaymentState)
        raise InvalidInput("state", f"must be one of {names}") from None


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
