"""The ledger: the payment store, the clock and the defaults, as the helpers see them.

``Payments`` holds one and hands it to authorization and notification
handling through their ports (:mod:`klarna_flow._app.ports`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from klarna_flow._domain.payment import Payment
from klarna_flow._domain.sealed import SealedSecret
from klarna_flow._errors import InvalidInput
from klarna_flow._shared.clock import Clock
from klarna_flow._shared.validation import check_aware, check_cause, check_krn, check_token
from klarna_flow._store.payment_store import PaymentStore, payment_id_for

__all__ = ["Ledger", "check_completion"]

_CLOCK_SKEW = timedelta(minutes=5)


class Ledger:
    """Loads, decides the time of, seals and saves payments for the application.

    Args:
        store: the payment store.
        clock: where every recorded time comes from.
        partner_account_id: the default Klarna partner account.
        request_lifetime: how long a payment request lives when Klarna does not say.
    """

    def __init__(
        self,
        store: PaymentStore,
        clock: Clock,
        partner_account_id: str | None,
        request_lifetime: timedelta,
    ) -> None:
        self.store = store
        self.clock = clock
        self.partner_account_id = partner_account_id
        self.request_lifetime = request_lifetime

    def now(self) -> datetime:
        """The clock's current time (checked to be timezone-aware)."""
        return check_aware(self.clock.now(), "clock.now()")

    def get(self, payment_id: UUID) -> Payment:
        return self.store.get(payment_id)

    def save(self, payment: Payment) -> None:
        self.store.save_payment(payment)

    def seal(self, payment_id: UUID, field: str, token: str) -> SealedSecret:
        return self.store.seal(payment_id, field, token)

    def seal_optional(self, payment_id: UUID, field: str, token: str | None) -> SealedSecret | None:
        return None if token is None else self.seal(payment_id, field, token)

    def unseal(self, payment_id: UUID, field: str, sealed: SealedSecret) -> str:
        return self.store.unseal(payment_id, field, sealed)

    def find_by_payment_request(self, payment_request_id: str) -> UUID | None:
        return self.store.find_by_payment_request(payment_request_id)

    def find_by_reference(self, partner_account_id: str, reference: str) -> UUID:
        """The payment created for (account, reference).

        Raises:
            PaymentNotFound: none was.
        """
        payment_id = payment_id_for(partner_account_id, reference)
        self.store.get(payment_id)  # raises PaymentNotFound
        return payment_id

    def complete(
        self,
        payment: Payment,
        *,
        session_token: str | None,
        customer_token: str | None,
        completed_at: datetime | None,
        payment_request_id: str | None,
        cause: str,
    ) -> Payment:
        """Record ``PurchaseCompleted`` on a loaded payment (saved only if unchanged since).

        Raises:
            InvalidInput: a malformed token, a bad cause, a naive or future time.
            ConcurrentModification: the payment changed after it was loaded.
        """
        check_completion(session_token, customer_token, payment_request_id)
        check_cause(cause)
        now = self.now()
        when = now if completed_at is None else check_aware(completed_at, "completed_at")
        if when > now + _CLOCK_SKEW:
            raise InvalidInput("completed_at", "lies in the future")
        payment.complete(
            session_token=self.seal_optional(payment.id, "session_token", session_token),
            customer_token=self.seal_optional(payment.id, "customer_token", customer_token),
            completed_at=when,
            now=now,
            payment_request_id=payment_request_id,
            cause=cause,
        )
        self.save(payment)
        return payment


def check_completion(
    session_token: str | None, customer_token: str | None, payment_request_id: str | None
) -> None:
    """The shape of a completion's tokens and request id (tokens never echoed)."""
    if session_token is not None:
        check_token(session_token, "session_token")
    if customer_token is not None:
        check_token(customer_token, "customer_token")
    if payment_request_id is not None:
        check_krn(payment_request_id, "payment_request_id")
