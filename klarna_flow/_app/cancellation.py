"""Canceling a payment: the open payment request at Klarna first, then the record.

::

    load payment; check the cancel guards           -> typed error, nothing recorded
    DELETE .../payment/requests/{id}                 (only when a request is open
                                                      and a client is configured)
        Klarna refuses (already completed...)       -> CancelRefused, nothing recorded
        no answer / 5xx after retries               -> the KlarnaError, nothing recorded
    record PaymentCanceled(at_klarna)               -> save

Canceling twice at Klarna is harmless, so a failed attempt is simply tried
again by the caller.
"""

from __future__ import annotations

import asyncio
import logging
from uuid import UUID

from klarna_flow._app.ports import AuthorizationLedger
from klarna_flow._domain.lifecycle import PaymentState
from klarna_flow._domain.payment import Payment
from klarna_flow._errors import (
    CancelRefused,
    ConcurrentModification,
    KlarnaAPIError,
    KlarnaRateLimited,
    KlarnaServerError,
)
from klarna_flow.klarna import AsyncKlarnaClient, KlarnaClient, PaymentRequest

__all__ = ["cancel", "cancel_async", "needs_klarna"]

logger = logging.getLogger("klarna_flow")


def needs_klarna(payment: Payment) -> bool:
    """True when the payment has a payment request open at Klarna."""
    return payment.state is PaymentState.CREATED and payment.payment_request_id is not None


def _checked(ledger: AuthorizationLedger, payment_id: UUID) -> Payment:
    payment = ledger.get(payment_id)
    payment.check_cancel(ledger.now())
    return payment


def _account(ledger: AuthorizationLedger, payment: Payment) -> str:
    return payment.partner_account_id or ledger.partner_account_id or ""


def cancel(
    ledger: AuthorizationLedger, client: KlarnaClient | None, payment_id: UUID, cause: str
) -> Payment:
    """Cancel the payment (and its open request at Klarna when a client is given)."""
    payment = _checked(ledger, payment_id)
    at_klarna = False
    if needs_klarna(payment) and client is not None:
        assert payment.payment_request_id is not None
        try:
            answer = client.cancel_payment_request(
                partner_account_id=_account(ledger, payment),
                payment_request_id=payment.payment_request_id,
                correlation_id=str(payment.id),
            )
        except KlarnaAPIError as e:
            raise _refusal(payment, e) from e
        at_klarna = _canceled(payment, answer)
    elif needs_klarna(payment):
        _warn_local_only(payment)
    return _record(ledger, payment, cause, at_klarna=at_klarna)


async def cancel_async(
    ledger: AuthorizationLedger, client: AsyncKlarnaClient | None, payment_id: UUID, cause: str
) -> Payment:
    """:func:`cancel` with the async client; storage runs in a thread."""
    payment = await asyncio.to_thread(_checked, ledger, payment_id)
    at_klarna = False
    if needs_klarna(payment) and client is not None:
        assert payment.payment_request_id is not None
        try:
            answer = await client.cancel_payment_request(
                partner_account_id=_account(ledger, payment),
                payment_request_id=payment.payment_request_id,
                correlation_id=str(payment.id),
            )
        except KlarnaAPIError as e:
            raise _refusal(payment, e) from e
        at_klarna = _canceled(payment, answer)
    elif needs_klarna(payment):
        _warn_local_only(payment)
    return await asyncio.to_thread(_record, ledger, payment, cause, at_klarna=at_klarna)


def _refusal(payment: Payment, error: KlarnaAPIError) -> Exception:
    """A refusal for Klarna's error answer; rate limiting and 5xx stay errors."""
    if isinstance(error, KlarnaRateLimited | KlarnaServerError):
        return error
    return CancelRefused(
        f"Klarna refused to cancel the payment request of payment {payment.id} "
        f"({error.status_code} {error.error_code or ''}".rstrip()
        + "); nothing was recorded",
        payment_id=payment.id,
        state=payment.state.value,
    )


def _canceled(payment: Payment, answer: PaymentRequest) -> bool:
    if answer.state in {None, "CANCELED"}:
        return True
    raise CancelRefused(
        f"Klarna did not cancel the payment request of payment {payment.id}: it is "
        f"{answer.state}; nothing was recorded",
        payment_id=payment.id,
        state=payment.state.value,
        klarna_state=answer.state,
    )


def _warn_local_only(payment: Payment) -> None:
    logger.warning(
        "payment %s is canceled here only: no Klarna client is configured, so its "
        "payment request stays open at Klarna until it expires",
        payment.id,
    )


def _record(
    ledger: AuthorizationLedger, payment: Payment, cause: str, *, at_klarna: bool
) -> Payment:
    for _ in range(3):
        payment.cancel(now=ledger.now(), cause=cause, at_klarna=at_klarna)
        try:
            ledger.save(payment)
        except ConcurrentModification:
            payment = _checked(ledger, payment.id)  # changed meanwhile: decide again
            continue
        return payment
    payment.cancel(now=ledger.now(), cause=cause, at_klarna=at_klarna)
    ledger.save(payment)
    return payment
