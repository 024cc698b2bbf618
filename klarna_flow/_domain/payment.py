"""The ``Payment`` aggregate and its events: pure domain, no I/O.

Commands are verbs (``complete``, ``request_authorization``...) that ask the
lifecycle table whether they are allowed, then record one past-tense event.
Events only assign what they say happened: replaying them never checks a
guard, so a payment authorized a year ago still rebuilds as ``AUTHORIZED``.

Every event carries ``cause``: ``command:<name>`` or ``notification:<event_id>``,
which the audit trail shows.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from klarna_flow._domain.lifecycle import (
    AUTHORIZATION_WINDOW,
    Facts,
    Flow,
    PaymentState,
    decide,
)
from klarna_flow._domain.sealed import SealedSecret
from klarna_flow._domain.transaction import TransactionView
from klarna_flow._errors import InvalidInput, InvalidTransition

__all__ = ["EVENT_STATES", "Payment"]


class Payment(Aggregate):
    """One Klarna payment and everything that happened to it.

    Attributes:
        state: the current :class:`PaymentState`.
        flow: the :class:`Flow` fixed at creation.
        amount: minor units.
        currency: ISO 4217 code.
        reference: the partner's payment transaction reference.
        partner_account_id: the Klarna partner account.
        payment_request_id: Klarna's payment request id, when known.
        completed_at: when the customer completed the purchase.
        authorization_attempts: how many authorizations were requested.
        idempotency_key: the key of the current (or last) authorization.
        requested_at: when the current (or last) authorize call was requested.
        payment_transaction_id: Klarna's transaction id once authorized.
        last_result: how the last authorization attempt ended (``PENDING``,
            ``APPROVED``, ``DECLINED``, ``STEP_UP_REQUIRED``, ``FAILED``), or
            None when authorization was never requested.
        unresolved_reason: why the pending authorization is unresolved (a
            re-send got an answer that proves nothing), else None.
    """

    class PaymentCreated(Aggregate.Created):
        flow: str
        amount: int
        currency: str
        reference: str
        partner_account_id: str
        payment_request_id: str | None
        request_expires_at: datetime
        cause: str
        charge_token: SealedSecret | None = None
        customer_present: bool | None = None

    class Event(Aggregate.Event):
        cause: str

        def mutate(self, aggregate: Any) -> Any:
            payment = super().mutate(aggregate)
            if payment is not None and self.cause.startswith("notification:"):
                payment.notification_ids = payment.notification_ids | {self.cause[13:]}
            return payment

    class PurchaseCompleted(Event):
        completed_at: datetime
        session_token: SealedSecret | None
        customer_token: SealedSecret | None
        payment_request_id: str | None

        def apply(self, payment: Payment) -> None:
            payment.state = PaymentState.COMPLETED
            payment.completed_at = self.completed_at
            payment.session_token = self.session_token
            payment.customer_token = self.customer_token
            if self.payment_request_id is not None:
                payment.payment_request_id = self.payment_request_id

    class PaymentRequestIdentified(Event):
        payment_request_id: str

        def apply(self, payment: Payment) -> None:
            payment.payment_request_id = self.payment_request_id

    class AuthorizationRequested(Event):
        """An authorize call is about to be sent with ``idempotency_key``.

        ``call`` is ``INITIAL`` (the first call, with the purchase and the
        step-up configuration in ``payload``, and the session token given to
        it, sealed) or ``FINAL`` (with the completion's session token).
        """

        idempotency_key: str
        attempt: int
        call: str = "FINAL"
        payload: dict[str, Any] | None = None
        session_token: SealedSecret | None = None

        def apply(self, payment: Payment) -> None:
            payment.state = PaymentState.AUTHORIZING
            payment.idempotency_key = self.idempotency_key
            payment.requested_at = self.timestamp
            payment.authorization_attempts = self.attempt
            payment.last_result = "PENDING"
            payment.unresolved_reason = None
            payment.pending_call = self.call
            if self.call == "INITIAL":
                payment.initial_payload = self.payload
                payment.session_token = self.session_token
            else:
                payment.final_requested = True

    class AuthorizationUnresolved(Event):
        """A re-send got an answer that proves nothing: the payment waits for evidence."""

        error: str
        status_code: int | None
        correlation_id: str | None

        def apply(self, payment: Payment) -> None:
            payment.unresolved_reason = self.error
            payment.correlation_id = self.correlation_id

    class AuthorizationApproved(Event):
        """Klarna approved: ``transaction`` is the transaction as Klarna returned it."""

        payment_transaction_id: str
        correlation_id: str | None
        transaction_expires_at: datetime | None
        customer_token: SealedSecret | None = None
        transaction: dict[str, Any] | None = None

        def apply(self, payment: Payment) -> None:
            payment.state = PaymentState.AUTHORIZED
            payment.payment_transaction_id = self.payment_transaction_id
            payment.correlation_id = self.correlation_id
            payment.last_result = "APPROVED"
            payment.transaction = self.transaction
            if self.customer_token is not None:
                payment.customer_token = self.customer_token

    class TokenizationApproved(Event):
        """Klarna issued the customer token of a pure tokenization at the initial call."""

        correlation_id: str | None
        customer_token: SealedSecret
        customer_token_reference: str | None
        scopes: list[str]

        def apply(self, payment: Payment) -> None:
            payment.state = PaymentState.COMPLETED
            payment.completed_at = self.timestamp
            payment.customer_token = self.customer_token
            payment.correlation_id = self.correlation_id
            payment.last_result = "APPROVED"

    class AuthorizationDeclined(Event):
        correlation_id: str | None
        reason: str | None

        def apply(self, payment: Payment) -> None:
            payment.state = PaymentState.DECLINED
            payment.correlation_id = self.correlation_id
            payment.decline_reason = self.reason
            payment.last_result = "DECLINED"

    class StepUpRequired(Event):
        """Klarna answered with a payment request the customer must go through.

        ``request_expires_at`` is Klarna's ``expires_at`` when it gave one
        (``expiry_from_klarna``), else the configured default lifetime.
        """

        correlation_id: str | None
        payment_request_id: str | None
        payment_request_url: str | None
        request_expires_at: datetime
        method: str | None = None
        expiry_from_klarna: bool = False

        def apply(self, payment: Payment) -> None:
            payment.state = PaymentState.CREATED
            payment.request_expires_at = self.request_expires_at
            payment.correlation_id = self.correlation_id
            payment.session_token = None
            payment.completed_at = None
            if self.payment_request_id is not None:
                payment.payment_request_id = self.payment_request_id
            payment.payment_request_url = self.payment_request_url
            payment.request_method = self.method
            payment.final_requested = False
            payment.pending_call = None
            payment.last_result = "STEP_UP_REQUIRED"

    class AuthorizationFailed(Event):
        """Klarna refused the final call without acting: ``COMPLETED`` again."""

        correlation_id: str | None
        error: str
        status_code: int | None

        def apply(self, payment: Payment) -> None:
            payment.state = PaymentState.COMPLETED
            payment.correlation_id = self.correlation_id
            payment.last_error = self.error
            payment.last_result = "FAILED"
            payment.pending_call = None

    class InitiationFailed(Event):
        """Klarna refused the initial call without acting: ``CREATED`` again."""

        correlation_id: str | None
        error: str
        status_code: int | None

        def apply(self, payment: Payment) -> None:
            payment.state = PaymentState.CREATED
            payment.correlation_id = self.correlation_id
            payment.last_error = self.error
            payment.last_result = "FAILED"
            payment.pending_call = None

    class TransactionReported(Event):
        """Klarna reported the transaction (a notification, or a read): its view changes.

        ``transaction`` holds the fields Klarna reported (``state``,
        ``payment_funding``, ``captured_amount``, ``payment_captures``,
        ``expires_at``...); the lifecycle state stays ``AUTHORIZED``.
        """

        source: str
        event_type: str | None
        transaction: dict[str, Any]

        def apply(self, payment: Payment) -> None:
            payment.transaction = {**(payment.transaction or {}), **self.transaction}

    class TransactionConflict(Event):
        """Klarna reported a transaction the payment's record contradicts.

        A transaction for a payment resolved (or failed) as having none, or a
        second transaction for an authorized one. Recorded, logged at ERROR,
        listed for a human; the state is unchanged.
        """

        payment_transaction_id: str
        event_type: str
        detail: str

        def apply(self, payment: Payment) -> None:
            payment.conflicts = [*payment.conflicts, self.detail]

    class ResolvedWithTransaction(Event):
        """An operator resolved a pending authorization: Klarna holds this transaction."""

        by: str
        evidence: str
        payment_transaction_id: str

        def apply(self, payment: Payment) -> None:
            payment.state = PaymentState.AUTHORIZED
            payment.payment_transaction_id = self.payment_transaction_id
            payment.last_result = "APPROVED"
            payment.resolution = f"transaction {self.payment_transaction_id} ({self.by})"

    class ResolvedWithoutTransaction(Event):
        """An operator resolved a pending final authorization: no transaction exists."""

        by: str
        evidence: str

        def apply(self, payment: Payment) -> None:
            payment.state = PaymentState.COMPLETED
            payment.last_result = "FAILED"
            payment.pending_call = None
            payment.resolution = f"no transaction ({self.by})"

    class InitiationResolvedWithoutTransaction(Event):
        """An operator resolved a pending initial call: no transaction exists."""

        by: str
        evidence: str

        def apply(self, payment: Payment) -> None:
            payment.state = PaymentState.CREATED
            payment.last_result = "FAILED"
            payment.pending_call = None
            payment.resolution = f"no transaction ({self.by})"

    class PaymentExpired(Event):
        reason: str

        def apply(self, payment: Payment) -> None:
            payment.state = PaymentState.EXPIRED
            payment.expiry_reason = self.reason

    class PaymentCanceled(Event):
        """Canceled; ``at_klarna`` when Klarna canceled the open payment request first."""

        at_klarna: bool = False

        def apply(self, payment: Payment) -> None:
            payment.state = PaymentState.CANCELED

    class PaymentRequestDeclined(Event):
        """Klarna reported that it declined the payment request (before any authorize call)."""

        reason: str

        def apply(self, payment: Payment) -> None:
            payment.state = PaymentState.DECLINED
            payment.decline_reason = self.reason

    class PaymentRequestReported(Event):
        """Klarna reported news of the open payment request; the state stays ``CREATED``.

        ``event_type`` is the notification's type; ``klarna_state`` the request's
        state at Klarna when the notification names one (``SUBMITTED``,
        ``IN_PROGRESS``...), else None.
        """

        event_type: str
        klarna_state: str | None
        request_expires_at: datetime | None = None

        def apply(self, payment: Payment) -> None:
            # Recorded for the audit trail (and deduplication); a new expiry
            # Klarna names is the request's deadline from now on.
            if self.request_expires_at is not None:
                payment.request_expires_at = self.request_expires_at

    def __init__(  # noqa: PLR0917  (eventsourcing passes event fields by name)
        self,
        flow: str,
        amount: int,
        currency: str,
        reference: str,
        partner_account_id: str,
        payment_request_id: str | None,
        request_expires_at: datetime,
        cause: str,
        charge_token: SealedSecret | None = None,
        customer_present: bool | None = None,
    ) -> None:
        del cause  # kept in the event for the audit trail
        self.charge_token = charge_token
        self.customer_present = customer_present
        self.state = PaymentState.CREATED
        self.flow = Flow(flow)
        self.amount = amount
        self.currency = currency
        self.reference = reference
        self.partner_account_id = partner_account_id
        self.payment_request_id = payment_request_id
        self.request_expires_at = request_expires_at
        self.completed_at: datetime | None = None
        self.session_token: SealedSecret | None = None
        self.customer_token: SealedSecret | None = None
        self.idempotency_key: str | None = None
        self.requested_at: datetime | None = None
        self.authorization_attempts = 0
        self.payment_transaction_id: str | None = None
        self.correlation_id: str | None = None
        self.decline_reason: str | None = None
        self.payment_request_url: str | None = None
        self.request_method: str | None = None
        self.pending_call: str | None = None
        self.initial_payload: dict[str, Any] | None = None
        self.final_requested = False
        self.transaction: dict[str, Any] | None = None
        self.last_error: str | None = None
        self.expiry_reason: str | None = None
        self.last_result: str | None = None
        self.unresolved_reason: str | None = None
        self.resolution: str | None = None
        self.conflicts: list[str] = []
        self.notification_ids: frozenset[str] = frozenset()

    # -- creation ---------------------------------------------------------

    @classmethod
    def create(
        cls,
        *,
        payment_id: UUID,
        flow: Flow,
        amount: int,
        currency: str,
        reference: str,
        partner_account_id: str,
        payment_request_id: str | None,
        request_lifetime: timedelta,
        now: datetime,
        cause: str = "command:create",
        charge_token: SealedSecret | None = None,
        customer_present: bool | None = None,
    ) -> Payment:
        """Record ``PaymentCreated``; inputs are checked by the application.

        ``charge_token`` makes it a charge of a stored customer token
        (``customer_present`` says whether the customer takes part).
        """
        return cls._create(
            cls.PaymentCreated,
            id=payment_id,
            timestamp=now,
            flow=flow.value,
            amount=amount,
            currency=currency,
            reference=reference,
            partner_account_id=partner_account_id,
            payment_request_id=payment_request_id,
            request_expires_at=now + request_lifetime,
            cause=cause,
            charge_token=charge_token,
            customer_present=customer_present,
        )

    # -- derived ----------------------------------------------------------

    @property
    def authorize_by(self) -> datetime | None:
        """End of the 60-minute window, for completed authorization flows."""
        if self.completed_at is None or not self.flow.authorizes:
            return None
        return self.completed_at + AUTHORIZATION_WINDOW

    @property
    def is_unresolved(self) -> bool:
        """True while an authorization that may have reached Klarna waits for evidence."""
        return self.state is PaymentState.AUTHORIZING and self.unresolved_reason is not None

    @property
    def deadline(self) -> datetime | None:
        """When :meth:`expire` becomes allowed, or None if it never will."""
        if self.state is PaymentState.CREATED:
            return self.request_expires_at
        if self.state is PaymentState.COMPLETED:
            return self.authorize_by
        return None

    def facts(self, now: datetime, *, reported_by_klarna: bool = False) -> Facts:
        """What the lifecycle guards see for a command decided at ``now``."""
        return Facts(
            flow=self.flow,
            state=self.state,
            now=now,
            completed_at=self.completed_at,
            request_expires_at=self.request_expires_at,
            has_session_token=self.session_token is not None,
            has_customer_token=self.customer_token is not None,
            reported_by_klarna=reported_by_klarna,
            authorization_requested=self.final_requested,
            request_open=self.state is PaymentState.CREATED and self.payment_request_id is not None,
            initial_call_pending=self.is_initial_call_pending,
        )

    @property
    def is_token_charge(self) -> bool:
        """True for a payment that charges a stored customer token."""
        return self.charge_token is not None

    @property
    def transaction_view(self) -> TransactionView | None:
        """The transaction as Klarna last reported it, or None before authorization."""
        if self.payment_transaction_id is None:
            return None
        return TransactionView.of(self.payment_transaction_id, self.transaction or {})

    @property
    def step_up_url(self) -> str | None:
        """Deprecated name of :attr:`payment_request_url`."""
        return self.payment_request_url

    @property
    def is_initial_call_pending(self) -> bool:
        """True while the initial authorize call's outcome is unknown."""
        return self.state is PaymentState.AUTHORIZING and self.pending_call == "INITIAL"

    # -- commands -----------------------------------------------------------

    def complete(
        self,
        *,
        session_token: SealedSecret | None,
        customer_token: SealedSecret | None,
        completed_at: datetime,
        now: datetime,
        payment_request_id: str | None = None,
        cause: str = "command:complete",
    ) -> None:
        """Record ``PurchaseCompleted`` (tokens must fit the flow)."""
        facts = Facts(
            flow=self.flow,
            state=self.state,
            now=now,
            has_session_token=session_token is not None,
            has_customer_token=customer_token is not None,
        )
        decide("complete", facts, payment_id=self.id)
        self._record(
            self.PurchaseCompleted,
            now,
            cause,
            completed_at=completed_at,
            session_token=session_token,
            customer_token=customer_token,
            payment_request_id=payment_request_id,
        )

    def identify_payment_request(
        self, payment_request_id: str, *, now: datetime, cause: str
    ) -> None:
        """Record Klarna's payment request id, learned after creation."""
        if payment_request_id != self.payment_request_id:
            self._record(
                self.PaymentRequestIdentified,
                now,
                cause,
                payment_request_id=payment_request_id,
            )

    def initiate(
        self,
        *,
        idempotency_key: str,
        payload: dict[str, Any],
        session_token: SealedSecret | None,
        now: datetime,
        cause: str = "command:initiate",
    ) -> None:
        """Record ``AuthorizationRequested`` of the initial call (no request open yet)."""
        decide("initiate", self.facts(now), payment_id=self.id)
        self._record(
            self.AuthorizationRequested,
            now,
            cause,
            idempotency_key=idempotency_key,
            attempt=self.authorization_attempts + 1,
            call="INITIAL",
            payload=payload,
            session_token=session_token,
        )

    def request_authorization(
        self, *, idempotency_key: str, now: datetime, cause: str = "command:authorize"
    ) -> None:
        """Record ``AuthorizationRequested``: the key is fixed before any call."""
        decide("request_authorization", self.facts(now), payment_id=self.id)
        self._record(
            self.AuthorizationRequested,
            now,
            cause,
            idempotency_key=idempotency_key,
            attempt=self.authorization_attempts + 1,
        )

    def approve(
        self,
        *,
        payment_transaction_id: str,
        correlation_id: str | None,
        transaction_expires_at: datetime | None,
        now: datetime,
        cause: str,
        customer_token: SealedSecret | None = None,
        transaction: dict[str, Any] | None = None,
    ) -> None:
        decide("approve", self.facts(now), payment_id=self.id)
        self._record(
            self.AuthorizationApproved,
            now,
            cause,
            payment_transaction_id=payment_transaction_id,
            correlation_id=correlation_id,
            transaction_expires_at=transaction_expires_at,
            customer_token=customer_token,
            transaction=transaction,
        )

    def approve_tokenization(
        self,
        *,
        customer_token: SealedSecret,
        customer_token_reference: str | None,
        scopes: list[str],
        correlation_id: str | None,
        now: datetime,
        cause: str,
    ) -> None:
        """Record ``TokenizationApproved``: a pure tokenization's initial call got its token."""
        decide("approve_tokenization", self.facts(now), payment_id=self.id)
        self._record(
            self.TokenizationApproved,
            now,
            cause,
            correlation_id=correlation_id,
            customer_token=customer_token,
            customer_token_reference=customer_token_reference,
            scopes=scopes,
        )

    def decline(
        self,
        *,
        correlation_id: str | None,
        reason: str | None,
        now: datetime,
        cause: str,
    ) -> None:
        decide("decline", self.facts(now), payment_id=self.id)
        self._record(
            self.AuthorizationDeclined,
            now,
            cause,
            correlation_id=correlation_id,
            reason=reason,
        )

    def require_step_up(
        self,
        *,
        correlation_id: str | None,
        payment_request_id: str | None,
        payment_request_url: str | None,
        now: datetime,
        cause: str,
        request_expires_at: datetime | None = None,
        request_lifetime: timedelta | None = None,
        method: str | None = None,
        expiry_from_klarna: bool = False,
    ) -> None:
        """Record ``StepUpRequired``: back to ``CREATED`` with a new payment request.

        The request expires at ``request_expires_at`` (Klarna's), or
        ``request_lifetime`` from ``now``: exactly one is given.
        """
        if (request_expires_at is None) == (request_lifetime is None):
            raise InvalidInput("request_expires_at", "give it or request_lifetime, not both")
        if request_expires_at is None:
            assert request_lifetime is not None
            request_expires_at = now + request_lifetime
        decide("require_step_up", self.facts(now), payment_id=self.id)
        self._record(
            self.StepUpRequired,
            now,
            cause,
            correlation_id=correlation_id,
            payment_request_id=payment_request_id,
            payment_request_url=payment_request_url,
            request_expires_at=request_expires_at,
            method=method,
            expiry_from_klarna=expiry_from_klarna,
        )

    def fail(
        self,
        *,
        error: str,
        status_code: int | None,
        correlation_id: str | None,
        now: datetime,
        cause: str,
    ) -> None:
        """Record that Klarna refused the pending call without acting.

        The initial call's refusal is :meth:`fail_initiation` (back to ``CREATED``).
        """
        if self.is_initial_call_pending:
            self.fail_initiation(
                error=error,
                status_code=status_code,
                correlation_id=correlation_id,
                now=now,
                cause=cause,
            )
            return
        decide("fail", self.facts(now), payment_id=self.id)
        self._record(
            self.AuthorizationFailed,
            now,
            cause,
            error=error,
            status_code=status_code,
            correlation_id=correlation_id,
        )

    def fail_initiation(
        self,
        *,
        error: str,
        status_code: int | None,
        correlation_id: str | None,
        now: datetime,
        cause: str,
    ) -> None:
        """Record ``InitiationFailed``: the initial call was refused; ``CREATED`` again."""
        decide("fail_initiation", self.facts(now), payment_id=self.id)
        self._record(
            self.InitiationFailed,
            now,
            cause,
            error=error,
            status_code=status_code,
            correlation_id=correlation_id,
        )

    def mark_unresolved(
        self,
        *,
        error: str,
        status_code: int | None,
        correlation_id: str | None,
        now: datetime,
        cause: str,
    ) -> None:
        """Record ``AuthorizationUnresolved`` once per attempt; the state stays the same."""
        if self.state is not PaymentState.AUTHORIZING:
            raise InvalidTransition(
                f"payment {self.id} is {self.state.value}: no authorization is pending",
                payment_id=self.id,
                command="mark_unresolved",
                state=self.state.value,
            )
        if self.unresolved_reason is None:
            self._record(
                self.AuthorizationUnresolved,
                now,
                cause,
                error=error,
                status_code=status_code,
                correlation_id=correlation_id,
            )

    def expire(
        self,
        *,
        now: datetime,
        reason: str,
        reported_by_klarna: bool = False,
        cause: str = "command:expire",
    ) -> None:
        """Record ``PaymentExpired`` once the payment's time has run out."""
        facts = self.facts(now, reported_by_klarna=reported_by_klarna)
        decide("expire", facts, payment_id=self.id)
        self._record(self.PaymentExpired, now, cause, reason=reason)

    def report_transaction(
        self,
        *,
        transaction: dict[str, Any],
        source: str,
        event_type: str | None,
        now: datetime,
        cause: str,
    ) -> bool:
        """Record ``TransactionReported`` when it tells something new; True if recorded.

        Raises:
            InvalidTransition: the payment holds no transaction.
        """
        if self.payment_transaction_id is None:
            raise InvalidTransition(
                f"payment {self.id} is {self.state.value}: it holds no transaction",
                payment_id=self.id,
                command="report_transaction",
                state=self.state.value,
            )
        known = self.transaction or {}
        if all(known.get(k) == v for k, v in transaction.items()):
            return False
        self._record(
            self.TransactionReported,
            now,
            cause,
            source=source,
            event_type=event_type,
            transaction=transaction,
        )
        return True

    def note_conflict(
        self,
        *,
        payment_transaction_id: str,
        event_type: str,
        detail: str,
        now: datetime,
        cause: str,
    ) -> None:
        """Record ``TransactionConflict``: Klarna reported what the record contradicts."""
        self._record(
            self.TransactionConflict,
            now,
            cause,
            payment_transaction_id=payment_transaction_id,
            event_type=event_type,
            detail=detail,
        )

    def resolve(
        self,
        *,
        by: str,
        evidence: str,
        payment_transaction_id: str | None,
        now: datetime,
        cause: str,
    ) -> None:
        """Record an operator's resolution of the pending authorize call.

        With a transaction id: ``ResolvedWithTransaction`` (``AUTHORIZED``).
        Without: the call made no transaction, and the payment is back where
        the attempt began (``COMPLETED``, or ``CREATED`` for an initial call).
        """
        if self.state is not PaymentState.AUTHORIZING:
            raise InvalidTransition(
                f"payment {self.id} is {self.state.value}: no authorize call is pending",
                payment_id=self.id,
                command="resolve",
                state=self.state.value,
            )
        facts = self.facts(now)
        if payment_transaction_id is not None:
            decide("approve", facts, payment_id=self.id)
            self._record(
                self.ResolvedWithTransaction,
                now,
                cause,
                by=by,
                evidence=evidence,
                payment_transaction_id=payment_transaction_id,
            )
        elif self.is_initial_call_pending:
            decide("fail_initiation", facts, payment_id=self.id)
            self._record(
                self.InitiationResolvedWithoutTransaction, now, cause, by=by, evidence=evidence
            )
        else:
            decide("fail", facts, payment_id=self.id)
            self._record(self.ResolvedWithoutTransaction, now, cause, by=by, evidence=evidence)

    def check_cancel(self, now: datetime) -> None:
        """Raise what :meth:`cancel` would raise, recording nothing (before calling Klarna)."""
        decide("cancel", self.facts(now), payment_id=self.id)

    def cancel(
        self, *, now: datetime, cause: str = "command:cancel", at_klarna: bool = False
    ) -> None:
        decide("cancel", self.facts(now), payment_id=self.id)
        self._record(self.PaymentCanceled, now, cause, at_klarna=at_klarna)

    def decline_request(
        self, *, now: datetime, cause: str, reason: str = "PAYMENT_REQUEST_DECLINED"
    ) -> None:
        """Record ``PaymentRequestDeclined``: Klarna declined the open payment request."""
        decide("decline_request", self.facts(now), payment_id=self.id)
        self._record(self.PaymentRequestDeclined, now, cause, reason=reason)

    def note_request_report(
        self,
        *,
        event_type: str,
        klarna_state: str | None,
        now: datetime,
        cause: str,
        request_expires_at: datetime | None = None,
    ) -> None:
        """Record ``PaymentRequestReported`` while the payment request is open (``CREATED``).

        Raises:
            InvalidTransition: the payment is past ``CREATED``: a report about its
                request is late and would say nothing true about it.
        """
        if self.state is not PaymentState.CREATED:
            raise InvalidTransition(
                f"payment {self.id} is {self.state.value}: its payment request is no longer open",
                payment_id=self.id,
                command="note_request_report",
                state=self.state.value,
            )
        self._record(
            self.PaymentRequestReported,
            now,
            cause,
            event_type=event_type,
            klarna_state=klarna_state,
            request_expires_at=request_expires_at,
        )

    def _record(
        self, event_class: type[Payment.Event], now: datetime, cause: str, **kw: Any
    ) -> None:
        self.trigger_event(event_class, timestamp=now, cause=cause, **kw)


EVENT_STATES: dict[str, PaymentState | None] = {
    "PaymentCreated": PaymentState.CREATED,
    "PurchaseCompleted": PaymentState.COMPLETED,
    "PaymentRequestIdentified": None,
    "AuthorizationRequested": PaymentState.AUTHORIZING,
    "AuthorizationUnresolved": None,
    "AuthorizationApproved": PaymentState.AUTHORIZED,
    "TokenizationApproved": PaymentState.COMPLETED,
    "AuthorizationDeclined": PaymentState.DECLINED,
    "StepUpRequired": PaymentState.CREATED,
    "AuthorizationFailed": PaymentState.COMPLETED,
    "InitiationFailed": PaymentState.CREATED,
    "TransactionReported": None,
    "TransactionConflict": None,
    "ResolvedWithTransaction": PaymentState.AUTHORIZED,
    "ResolvedWithoutTransaction": PaymentState.COMPLETED,
    "InitiationResolvedWithoutTransaction": PaymentState.CREATED,
    "PaymentExpired": PaymentState.EXPIRED,
    "PaymentCanceled": PaymentState.CANCELED,
    "PaymentRequestDeclined": PaymentState.DECLINED,
    "PaymentRequestReported": None,
}
"""The state each event leaves a payment in (None: the state is unchanged)."""
