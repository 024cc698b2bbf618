"""The ports the application's helpers take: small Protocols, not ``Payments``.

Authorization and notification handling each receive the few members they
use, so they depend on nothing bigger, and a test double of them is tiny.
:class:`~klarna_flow._app.ledger.Ledger` implements both.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol
from uuid import UUID

from klarna_flow._domain.payment import Payment
from klarna_flow._domain.sealed import SealedSecret

__all__ = ["AuthorizationLedger", "NotificationLedger", "TransactionLedger"]


class _Payments(Protocol):
    def now(self) -> datetime:
        """The current time, from the injected clock."""
        ...

    def get(self, payment_id: UUID) -> Payment:
        """The payment as it stands now (``PaymentNotFound`` if none)."""
        ...

    def save(self, payment: Payment) -> None:
        """Record the payment's pending events (``ConcurrentModification`` on a lost race)."""
        ...


class AuthorizationLedger(_Payments, Protocol):
    """What intent-first authorization needs."""

    @property
    def partner_account_id(self) -> str | None: ...

    @property
    def request_lifetime(self) -> timedelta: ...

    def unseal(self, payment_id: UUID, field: str, sealed: SealedSecret) -> str:
        """The token sealed in ``field`` of the payment."""
        ...

    def seal(self, payment_id: UUID, field: str, token: str) -> SealedSecret:
        """``token`` sealed for ``field`` of the payment."""
        ...


class TransactionLedger(_Payments, Protocol):
    """What recording Klarna's transaction reports and resolutions needs."""

    @property
    def partner_account_id(self) -> str | None: ...

    def find_by_payment_request(self, payment_request_id: str) -> UUID | None:
        """The payment holding Klarna's ``payment_request_id``, if any."""
        ...

    def find_by_reference(self, partner_account_id: str, reference: str) -> UUID:
        """The payment created for (account, reference) (``PaymentNotFound`` if none)."""
        ...


class NotificationLedger(TransactionLedger, Protocol):
    """What applying Klarna's notifications needs."""

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
        """Record the completion on a loaded payment, sealing its tokens."""
        ...
