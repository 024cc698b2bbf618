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
"""

from __future__ import annotations

import enum
import logging
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import attrs

from klarna_flow._app.ports import AuthorizationLedger
from klarna_flow._domain.lifecycle import PaymentState
from klarna_flow._errors import (
    AuthorizationInProgress,
    AuthorizationWindowElapsed,
    ConcurrentModification,
    ConfigurationError,
    KlarnaAPIError,
    KlarnaError,
    KlarnaRateLimited,
    KlarnaServerError,
)
from klarna_flow.klarna import AuthorizationResponse, AuthorizationResult

if TYPE_CHECKING:
    from klarna_flow._domain.payment import Payment

__all__ = ["AuthorizationOutcome", "Intent", "OutcomeResult"]

logger = logging.getLogger("klarna_flow")

_KEY_NAMESPACE = uuid.UUID("0d8a1c52-62c4-4b36-9d7e-8f1b5a0c3e77")
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
    """A recorded ``AuthorizationRequested``: everything the call needs."""

    payment_id: UUID
    partner_account_id: str
    session_token: str = attrs.field(repr=False)
    currency: str
    amount: int
    reference: str
    idempotency_key: str
    payment: Payment | None = attrs.field(default=None, eq=False, repr=False)
    """The payment as saved with the request, so recording the outcome needs no reload."""

    def request(self) -> dict[str, Any]:
        """Keyword arguments of ``KlarnaClient.authorize``."""
        return {
            "partner_account_id": self.partner_account_id,
            "session_token": self.session_token,
            "currency": self.currency,
            "amount": self.amount,
            "reference": self.reference,
            "idempotency_key": self.idempotency_key,
            "correlation_id": str(self.payment_id),
        }


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
    key = idempotency_key(payment_id, payment.authorization_attempts + 1)
    payment.request_authorization(idempotency_key=key, now=now)
    try:
        ledger.save(payment)
    except ConcurrentModification as e:
        raise _lost_race(ledger, payment) from e
    assert token is not None  # the guard requires a session token
    return Intent(
        payment_id=payment_id,
        partner_account_id=account,
        session_token=token,
        currency=payment.currency,
        amount=payment.amount,
        reference=payment.reference,
        idempotency_key=key,
        payment=payment,
    )


def _lost_race(ledger: AuthorizationLedger, payment: Payment) -> ConcurrentModification:
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


def resume_intent(ledger: AuthorizationLedger, payment: Payment) -> Intent:
    """The recorded intent of a payment left ``AUTHORIZING`` (for reconcile)."""
    assert payment.session_token is not None
    assert payment.idempotency_key is not None
    return Intent(
        payment_id=payment.id,
        partner_account_id=payment.partner_account_id or ledger.partner_account_id or "",
        session_token=ledger.unseal(payment.id, "session_token", payment.session_token),
        currency=payment.currency,
        amount=payment.amount,
        reference=payment.reference,
        idempotency_key=payment.idempotency_key,
        payment=payment,
    )


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
        if not is_ambiguous(error, resent=cause == RECONCILE):
            _fail(payment, error, now, cause)
        elif cause == RECONCILE and is_settled_refusal(error):
            _mark_unresolved(payment, error, now, cause)
        # otherwise: stays AUTHORIZING for the next reconcile
    elif response.result is AuthorizationResult.APPROVED:
        assert response.transaction is not None
        payment.approve(
            payment_transaction_id=response.transaction.payment_transaction_id,
            correlation_id=response.correlation_id,
            transaction_expires_at=response.transaction.expires_at,
            now=now,
            cause=cause,
        )
    elif response.result is AuthorizationResult.DECLINED:
        payment.decline(
            correlation_id=response.correlation_id,
            reason=response.result_reason,
            now=now,
            cause=cause,
        )
    else:
        step_up = response.step_up
        payment.require_step_up(
            correlation_id=response.correlation_id,
            payment_request_id=step_up.payment_request_id if step_up else None,
            payment_request_url=step_up.payment_request_url if step_up else None,
            request_lifetime=ledger.request_lifetime,
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
        payment_request_url=payment.step_up_url
        if result is OutcomeResult.STEP_UP_REQUIRED
        else None,
        error=error,
    )
