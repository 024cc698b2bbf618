"""Intent-first authorization: record the request, call Klarna, record the outcome.

::

    load payment; check guards                    -> typed error, nothing recorded
    record AuthorizationRequested(key)            -> save: the one worker that saves goes on
    POST /payment/authorize with the key          (the client retries with the same key)
    record Approved | Declined | StepUpRequired | Failed -> save

A failure after which Klarna may have acted (5xx, timeout, dropped connection,
an answer we cannot read) leaves the payment ``AUTHORIZING``: ``reconcile``
re-sends the same key and session token later, and Klarna answers with the
original result. Only a refusal (4xx, rate limiting) of a first call none of
whose attempts may have reached Klarna records ``AuthorizationFailed`` and
reopens the payment for another attempt.

A re-send is never booked as failed: the call before it may have reached
Klarna, and an error now (past the 24-hour key window, say) proves nothing
about it. A refusal that re-sending cannot change records
``AuthorizationUnresolved``, logged at ERROR: the payment stays
``AUTHORIZING`` and waits for evidence.

A call without a session token (an initial call, a customer token charge)
is re-sent only inside Klarna's 24-hour key window: past it Klarna would
take it for a new call, and a second transaction could follow the first.
It is marked unresolved instead, without a call. A session token is single
use, so a re-send that carries one is answered with the original result or
refused, never acted on twice.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import attrs

from klarna_flow._app.ports import AuthorizationLedger
from klarna_flow._domain.lifecycle import Flow, PaymentState
from klarna_flow._errors import (
    AuthorizationInProgress,
    AuthorizationWindowElapsed,
    ConcurrentModification,
    ConfigurationError,
    KlarnaAPIError,
    KlarnaError,
    KlarnaRateLimited,
    KlarnaServerError,
    KlarnaUnexpectedResponse,
)
from klarna_flow.klarna import (
    AuthorizationResponse,
    AuthorizationResult,
    CustomerTokenRequest,
    StepUpConfig,
    SupplementaryPurchaseData,
)

if TYPE_CHECKING:
    from klarna_flow._domain.payment import Payment

__all__ = ["AuthorizationOutcome", "Intent", "OutcomeResult"]

logger = logging.getLogger("klarna_flow")

_KEY_NAMESPACE = uuid.UUID("0d8a1c52-62c4-4b36-9d7e-8f1b5a0c3e77")
RESEND_WINDOW = timedelta(hours=23)
"""How long after the request a call without a session token may be re-sent:
an hour inside the 24 hours Klarna honours an idempotency key."""
_NOT_RESENT = (
    "the call carries no session token and Klarna's 24-hour idempotency window has "
    "passed, so it is not re-sent (a re-send could create a second transaction)"
)
AUTHORIZE = "command:authorize"
RECONCILE = "command:reconcile"


class OutcomeResult(enum.StrEnum):
    """How an authorization attempt ended, as recorded."""

    APPROVED = "APPROVED"
    DECLINED = "DECLINED"
    STEP_UP_REQUIRED = "STEP_UP_REQUIRED"
    FAILED = "FAILED"
    """Klarna refused the request without acting; another attempt is allowed."""
    PENDING = "PENDING"
    """Unknown whether Klarna acted; ``reconcile`` will find out."""
    UNRESOLVED = "UNRESOLVED"
    """Klarna may have acted and a re-send could not tell: evidence is needed
    (the payment stays ``AUTHORIZING``; see ``Payments.unresolved``)."""


@attrs.frozen
class AuthorizationOutcome:
    """What ``authorize`` or ``reconcile`` recorded for one payment."""

    payment_id: UUID
    result: OutcomeResult
    state: PaymentState
    idempotency_key: str
    payment_transaction_id: str | None = None
    correlation_id: str | None = None
    payment_request_id: str | None = None
    payment_request_url: str | None = None
    error: KlarnaError | None = attrs.field(default=None, eq=False)


def idempotency_key(payment_id: UUID, attempt: int) -> str:
    """Deterministic per payment and attempt (a UUIDv5)."""
    return str(uuid.uuid5(_KEY_NAMESPACE, f"{payment_id}:{attempt}"))


@attrs.frozen
class Intent:
    """A recorded ``AuthorizationRequested``: everything the call needs.

    ``call`` is ``INITIAL`` or ``FINAL``; ``payload`` the initial call's
    recorded purchase data, step-up configuration, capture and token request
    (None for a payment that never made an initial call here). The final
    call repeats it without the step-up configuration, and names the
    payment request, as Klarna asks.
    """

    payment_id: UUID
    partner_account_id: str
    session_token: str | None = attrs.field(repr=False)
    currency: str
    amount: int
    reference: str
    idempotency_key: str
    payment: Payment | None = attrs.field(default=None, eq=False, repr=False)
    """The payment as saved with the request, so recording the outcome needs no reload."""
    call: str = "FINAL"
    flow: Flow = Flow.AUTHORIZATION
    payload: Mapping[str, Any] | None = attrs.field(default=None, repr=False)
    payment_request_id: str | None = None
    customer_token: str | None = attrs.field(default=None, repr=False)
    """The stored customer token a token charge sends."""
    requested_at: datetime | None = None
    """When ``AuthorizationRequested`` was recorded (the key's first use)."""

    def may_resend(self, now: datetime) -> bool:
        """True when a re-send cannot make Klarna act a second time.

        Inside the key window Klarna replays the original answer; a session
        token is single use (replayed or refused). Otherwise a re-send could
        create a second transaction.
        """
        if self.session_token is not None or self.requested_at is None:
            return True
        return now < self.requested_at + RESEND_WINDOW

    def request(self) -> dict[str, Any]:
        """Keyword arguments of ``KlarnaClient.authorize``."""
        payload = self.payload or {}
        kwargs: dict[str, Any] = {
            "partner_account_id": self.partner_account_id,
            "session_token": self.session_token,
            "currency": self.currency,
            "idempotency_key": self.idempotency_key,
            "correlation_id": str(self.payment_id),
            "customer_token": self.customer_token,
        }
        if self.flow.authorizes:
            kwargs["amount"] = self.amount
            kwargs["reference"] = self.reference
            kwargs["capture"] = payload.get("capture")
            kwargs["payment_option_id"] = payload.get("payment_option_id")
        if payload.get("purchase") is not None:
            kwargs["purchase"] = SupplementaryPurchaseData.from_wire(payload["purchase"])
        if payload.get("customer_token_request") is not None:
            request = payload["customer_token_request"]
            kwargs["customer_token_request"] = CustomerTokenRequest.from_wire(request)
        if self.call == "INITIAL":
            if payload.get("step_up") is not None:
                kwargs["step_up"] = StepUpConfig.from_wire(payload["step_up"])
        else:
            kwargs["payment_request_id"] = self.payment_request_id
        return kwargs


def record_intent(ledger: AuthorizationLedger, payment_id: UUID) -> Intent:
    """Check the guards and record ``AuthorizationRequested``; no I/O to Klarna.

    Raises:
        WrongFlow, InvalidTransition, MissingToken: refused, nothing recorded.
        AuthorizationInProgress: another worker requested authorization first.
        AuthorizationWindowElapsed: too late; ``PaymentExpired`` was recorded.
    """
    payment = ledger.get(payment_id)
    now = ledger.now()
    if payment.state is PaymentState.AUTHORIZING:
        raise AuthorizationInProgress(
            f"authorization of payment {payment_id} is already in progress",
            payment_id=payment_id,
            command="request_authorization",
            state=payment.state.value,
        )
    _expire_if_window_elapsed(ledger, payment, now)
    account = payment.partner_account_id or ledger.partner_account_id
    if not account:
        msg = f"payment {payment_id} has no partner account and Payments has no default"
        raise ConfigurationError(msg)
    token = None
    if payment.session_token is not None:  # opened first: a missing key records nothing
        token = ledger.unseal(payment_id, "session_token", payment.session_token)
    charge = charge_token_of(ledger, payment)
    key = idempotency_key(payment_id, payment.authorization_attempts + 1)
    payment.request_authorization(idempotency_key=key, now=now)
    try:
        ledger.save(payment)
    except ConcurrentModification as e:
        raise lost_race(ledger, payment) from e
    assert token is not None  # the guard requires a session token
    return intent_of(payment, account, token, charge)


def lost_race(ledger: AuthorizationLedger, payment: Payment) -> ConcurrentModification:
    """The error for a request that another writer beat: it names the state found."""
    found = ledger.get(payment.id)
    if found.authorization_attempts >= payment.authorization_attempts:
        return AuthorizationInProgress(
            f"another worker requested authorization of payment {payment.id} first "
            f"(it is now {found.state.value}); no call was made",
            payment_id=payment.id,
            command="request_authorization",
            state=found.state.value,
        )
    return ConcurrentModification(
        f"payment {payment.id} was changed by another writer (it is now "
        f"{found.state.value}); no call was made",
        payment_id=payment.id,
        command="request_authorization",
        state=found.state.value,
    )


def _expire_if_window_elapsed(ledger: AuthorizationLedger, payment: Payment, now: datetime) -> None:
    authorize_by = payment.authorize_by
    if payment.state is not PaymentState.COMPLETED or authorize_by is None:
        return
    if now < authorize_by:
        return
    payment.expire(now=now, reason="AUTHORIZATION_WINDOW", cause="command:authorize")
    try:
        ledger.save(payment)
        state = PaymentState.EXPIRED
    except ConcurrentModification:
        # Another writer changed it first: say what it did, not what we meant to.
        state = ledger.get(payment.id).state
        if state is PaymentState.AUTHORIZING:
            raise AuthorizationInProgress(
                f"another worker requested authorization of payment {payment.id} first",
                payment_id=payment.id,
                command="request_authorization",
                state=state.value,
            ) from None
    raise AuthorizationWindowElapsed(
        f"the authorization window of payment {payment.id} closed at "
        f"{authorize_by.isoformat()}; the payment is {state.value}",
        payment_id=payment.id,
        command="request_authorization",
        state=state.value,
    )


def intent_of(
    payment: Payment, account: str, session_token: str | None, customer_token: str | None
) -> Intent:
    """The intent the payment recorded last (it is ``AUTHORIZING``)."""
    assert payment.idempotency_key is not None
    return Intent(
        payment_id=payment.id,
        partner_account_id=account,
        session_token=session_token,
        currency=payment.currency,
        amount=payment.amount,
        reference=payment.reference,
        idempotency_key=payment.idempotency_key,
        payment=payment,
        call=payment.pending_call or "FINAL",
        flow=payment.flow,
        payload=payment.initial_payload,
        payment_request_id=payment.payment_request_id,
        customer_token=customer_token,
        requested_at=payment.requested_at,
    )


def charge_token_of(ledger: AuthorizationLedger, payment: Payment) -> str | None:
    """The stored customer token a token charge sends, opened for the call."""
    if payment.charge_token is None:
        return None
    return ledger.unseal(payment.id, "charge_token", payment.charge_token)


def resume_intent(ledger: AuthorizationLedger, payment: Payment) -> Intent:
    """The recorded intent of a payment left ``AUTHORIZING`` (for reconcile)."""
    token = None
    if payment.session_token is not None:
        token = ledger.unseal(payment.id, "session_token", payment.session_token)
    account = payment.partner_account_id or ledger.partner_account_id or ""
    return intent_of(payment, account, token, charge_token_of(ledger, payment))


def is_ambiguous(error: KlarnaError, *, resent: bool = False) -> bool:
    """True when Klarna may have acted on the call despite the error.

    Any attempt of the call that may have reached Klarna makes it ambiguous
    (``may_have_acted``), not only the last one. A re-send (``reconcile``)
    always is: the call before it may have reached Klarna, and no error now
    proves that it did not (past the 24-hour key window Klarna no longer
    replays; a refusal may come before Klarna looks at the key at all).
    """
    if resent or error.may_have_acted or not isinstance(error, KlarnaAPIError):
        return True
    return isinstance(error, KlarnaServerError)


def is_settled_refusal(error: KlarnaError) -> bool:
    """True for an answer that re-sending the same request cannot change.

    Rate limiting, 5xx and transport failures may pass; any other 4xx will not.
    """
    return (
        isinstance(error, KlarnaAPIError)
        and not isinstance(error, KlarnaRateLimited | KlarnaServerError)
        and 400 <= error.status_code < 500
    )


def record_outcome(
    ledger: AuthorizationLedger,
    intent: Intent,
    response: AuthorizationResponse | None,
    error: KlarnaError | None,
    *,
    cause: str,
) -> AuthorizationOutcome:
    """Record what Klarna answered (or the failure) on the payment."""
    payment = intent.payment if intent.payment is not None else ledger.get(intent.payment_id)
    for _ in range(3):
        if payment.state is not PaymentState.AUTHORIZING or (
            payment.idempotency_key != intent.idempotency_key
        ):
            return outcome_of(payment, error)  # someone else recorded it already
        was_unresolved = payment.is_unresolved
        if response is not None and (unusable := unusable_answer(payment, response)):
            response, error = None, unusable
        _apply(ledger, payment, response, error, cause=cause)
        try:
            ledger.save(payment)
        except ConcurrentModification:
            payment = ledger.get(intent.payment_id)  # someone else wrote: look again
            continue
        if payment.is_unresolved and not was_unresolved:
            _log_unresolved(payment)
        return outcome_of(payment, error)
    return outcome_of(ledger.get(intent.payment_id), error)


def record_not_resent(ledger: AuthorizationLedger, intent: Intent) -> AuthorizationOutcome:
    """Mark unresolved a pending call that may not be re-sent (no call is made).

    Past the key window a call without a session token could be acted on
    twice: the payment stays ``AUTHORIZING`` and waits for a notification or
    an operator (``AuthorizationUnresolved``, logged at ERROR once).
    """
    payment = intent.payment if intent.payment is not None else ledger.get(intent.payment_id)
    for _ in range(3):
        if (
            payment.state is not PaymentState.AUTHORIZING
            or payment.idempotency_key != intent.idempotency_key
            or payment.is_unresolved
        ):
            return outcome_of(payment)  # recorded already (by someone else, or before)
        payment.mark_unresolved(
            error=_NOT_RESENT,
            status_code=None,
            correlation_id=payment.correlation_id,
            now=ledger.now(),
            cause=RECONCILE,
        )
        try:
            ledger.save(payment)
        except ConcurrentModification:
            payment = ledger.get(intent.payment_id)
            continue
        logger.error(
            "authorization of payment %s is unresolved: Klarna may have acted and %s; "
            "it stays AUTHORIZING until a notification or an operator resolves it",
            payment.id,
            _NOT_RESENT,
        )
        return outcome_of(payment)
    return outcome_of(ledger.get(intent.payment_id))


def _apply(
    ledger: AuthorizationLedger,
    payment: Payment,
    response: AuthorizationResponse | None,
    error: KlarnaError | None,
    *,
    cause: str,
) -> None:
    now = ledger.now()
    if response is None:
        assert error is not None
        resent = cause == RECONCILE
        if isinstance(error, ImpossibleAnswer) or not is_ambiguous(error, resent=resent):
            _fail(payment, error, now, cause)
        elif cause == RECONCILE and is_settled_refusal(error):
            _mark_unresolved(payment, error, now, cause)
        # otherwise: stays AUTHORIZING for the next reconcile
    elif response.result is AuthorizationResult.APPROVED:
        _approve(ledger, payment, response, now, cause)
    elif response.result is AuthorizationResult.DECLINED:
        payment.decline(
            correlation_id=response.correlation_id,
            reason=response.result_reason,
            now=now,
            cause=cause,
        )
    else:
        step_up = response.step_up
        expires_at = step_up.expires_at if step_up else None
        payment.require_step_up(
            correlation_id=response.correlation_id,
            payment_request_id=step_up.payment_request_id if step_up else None,
            payment_request_url=step_up.payment_request_url if step_up else None,
            request_expires_at=expires_at or now + ledger.request_lifetime,
            method=step_up.method if step_up else None,
            expiry_from_klarna=expires_at is not None,
            now=now,
            cause=cause,
        )


class ImpossibleAnswer(KlarnaUnexpectedResponse):
    """An answer Klarna documents it never gives here (a step-up for a customer-not-present
    token charge): recorded as a failed attempt that says what happened."""


def unusable_answer(payment: Payment, response: AuthorizationResponse) -> KlarnaError | None:
    """The error for an approval that lacks what the payment's flow needs, else None.

    An approval of a payment transaction without the transaction, or of a
    pure tokenization without the customer token, cannot be recorded as
    such; Klarna acted, so the payment stays pending (never failed).
    """
    if (
        response.result is AuthorizationResult.STEP_UP_REQUIRED
        and payment.is_token_charge
        and not payment.customer_present
    ):
        return ImpossibleAnswer(
            f"Klarna answered STEP_UP_REQUIRED to the customer-not-present charge of "
            f"payment {payment.id}; only APPROVED or DECLINED are documented",
            status_code=response.status_code,
            correlation_id=response.correlation_id,
        )
    if response.result is not AuthorizationResult.APPROVED:
        return None
    if payment.flow is Flow.TOKENIZATION and payment.pending_call == "INITIAL":
        missing = "customer token" if response.customer_token is None else None
    else:
        missing = "payment transaction" if response.transaction is None else None
    if missing is None:
        return None
    return KlarnaUnexpectedResponse(
        f"Klarna approved payment {payment.id} without a {missing}",
        status_code=response.status_code,
        correlation_id=response.correlation_id,
    )


def _approve(
    ledger: AuthorizationLedger,
    payment: Payment,
    response: AuthorizationResponse,
    now: datetime,
    cause: str,
) -> None:
    token = response.customer_token
    sealed = None
    if token is not None and payment.flow.tokenizes:
        sealed = ledger.seal(payment.id, "customer_token", token.customer_token)
    if payment.flow is Flow.TOKENIZATION and payment.pending_call == "INITIAL":
        assert token is not None  # unusable_answer checked
        assert sealed is not None
        payment.approve_tokenization(
            customer_token=sealed,
            customer_token_reference=token.customer_token_reference,
            scopes=list(token.scopes),
            correlation_id=response.correlation_id,
            now=now,
            cause=cause,
        )
        return
    transaction = response.transaction
    assert transaction is not None  # unusable_answer checked
    payment.approve(
        payment_transaction_id=transaction.payment_transaction_id,
        correlation_id=response.correlation_id,
        transaction_expires_at=transaction.expires_at,
        customer_token=sealed,
        transaction=dict(transaction.raw) or None,
        now=now,
        cause=cause,
    )


def _fail(payment: Payment, error: KlarnaError, now: datetime, cause: str) -> None:
    payment.fail(
        error=f"{type(error).__name__}: {error}",
        status_code=getattr(error, "status_code", None),
        correlation_id=error.correlation_id,
        now=now,
        cause=cause,
    )


def _mark_unresolved(payment: Payment, error: KlarnaError, now: datetime, cause: str) -> None:
    payment.mark_unresolved(  # records once per attempt
        error=f"{type(error).__name__}: {error}",
        status_code=getattr(error, "status_code", None),
        correlation_id=error.correlation_id,
        now=now,
        cause=cause,
    )


def _log_unresolved(payment: Payment) -> None:
    logger.error(
        "authorization of payment %s is unresolved: Klarna may have acted and the re-send "
        "was answered %s; it stays AUTHORIZING until evidence resolves it",
        payment.id,
        payment.unresolved_reason,
    )


def outcome_of(payment: Payment, error: KlarnaError | None = None) -> AuthorizationOutcome:
    """The outcome as the payment records it now (authorization was requested)."""
    assert payment.last_result is not None
    result = (
        OutcomeResult.UNRESOLVED if payment.is_unresolved else OutcomeResult(payment.last_result)
    )
    return AuthorizationOutcome(
        payment_id=payment.id,
        result=result,
        state=payment.state,
        idempotency_key=payment.idempotency_key or "",
        payment_transaction_id=payment.payment_transaction_id,
        correlation_id=payment.correlation_id
        if error is None
        else (error.correlation_id or payment.correlation_id),
        payment_request_id=payment.payment_request_id,
        payment_request_url=payment.payment_request_url
        if result is OutcomeResult.STEP_UP_REQUIRED
        else None,
        error=error,
    )
