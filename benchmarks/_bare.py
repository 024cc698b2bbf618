"""The baseline of the benchmarks: a bare eventsourcing aggregate.

``BarePayment`` records events with the same fields as ``Payment``'s, through
eventsourcing alone: no lifecycle table, no guards, no sealing, no chain.
``BareRecorder`` keeps its events in a table of their own, so both sides of a
benchmark can share one SQLite file.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

from eventsourcing.domain import Aggregate
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

__all__ = ["ACCOUNT", "BarePayment", "BareRecorder"]

ACCOUNT = "krn:partner:global:account:bench"


class BareRecorder(SQLiteApplicationRecorder):
    """eventsourcing's own SQLite recorder, in a table of its own."""

    def __init__(
        self, datastore: SQLiteDatastore, events_table_name: str = "bare_stored_events"
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)


class BarePayment(Aggregate):
    """The fields of ``Payment``'s events, with no lifecycle, checks or sealing."""

    class Created(Aggregate.Created):
        flow: str
        amount: int
        currency: str
        reference: str
        partner_account_id: str
        payment_request_id: str | None
        request_expires_at: datetime
        cause: str

    class Event(Aggregate.Event):
        cause: str

    class Completed(Event):
        completed_at: datetime
        session_token: dict[str, str] | None
        customer_token: dict[str, str] | None
        payment_request_id: str | None

        def apply(self, payment: BarePayment) -> None:
            payment.state = "COMPLETED"
            payment.completed_at = self.completed_at
            payment.session_token = self.session_token
            payment.customer_token = self.customer_token

    class AuthorizationRequested(Event):
        idempotency_key: str
        attempt: int
        call: str = "FINAL"
        payload: dict[str, object] | None = None

        def apply(self, payment: BarePayment) -> None:
            payment.state = "AUTHORIZING"
            payment.idempotency_key = self.idempotency_key
            payment.authorization_attempts = self.attempt
            if self.payload is not None:
                payment.payload = self.payload

    class StepUpRequired(Event):
        correlation_id: str | None
        payment_request_id: str | None
        payment_request_url: str | None
        request_expires_at: datetime
        method: str | None

        def apply(self, payment: BarePayment) -> None:
            payment.state = "CREATED"
            payment.payment_request_id = self.payment_request_id
            payment.payment_request_url = self.payment_request_url
            payment.request_expires_at = self.request_expires_at

    class Approved(Event):
        payment_transaction_id: str
        correlation_id: str | None
        transaction_expires_at: datetime | None

        def apply(self, payment: BarePayment) -> None:
            payment.state = "AUTHORIZED"
            payment.payment_transaction_id = self.payment_transaction_id
            payment.correlation_id = self.correlation_id

    class Expired(Event):
        reason: str

        def apply(self, payment: BarePayment) -> None:
            payment.state = "EXPIRED"
            payment.expiry_reason = self.reason

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
    ) -> None:
        self.state = "CREATED"
        self.flow = flow
        self.amount = amount
        self.currency = currency
        self.reference = reference
        self.partner_account_id = partner_account_id
        self.payment_request_id = payment_request_id
        self.request_expires_at = request_expires_at
        self.completed_at: datetime | None = None
        self.session_token: dict[str, str] | None = None
        self.customer_token: dict[str, str] | None = None
        self.idempotency_key: str | None = None
        self.authorization_attempts = 0
        self.payment_transaction_id: str | None = None
        self.correlation_id: str | None = None
        self.expiry_reason: str | None = None
        self.payload: dict[str, object] | None = None
        self.payment_request_url: str | None = None

    @classmethod
    def create(
        cls, reference: str, now: datetime, *, amount: int = 11_800, account: str = ACCOUNT
    ) -> BarePayment:
        return cls._create(
            cls.Created,
            id=uuid4(),
            flow="AUTHORIZATION",
            amount=amount,
            currency="EUR",
            reference=reference,
            partner_account_id=account,
            payment_request_id=None,
            request_expires_at=now + timedelta(hours=3),
            cause="command:create",
        )

    def complete(self, token: dict[str, str], now: datetime) -> None:
        self.trigger_event(
            self.Completed,
            cause="command:complete",
            completed_at=now,
            session_token=token,
            customer_token=None,
            payment_request_id=None,
        )

    def request_authorization(self) -> None:
        self.trigger_event(
            self.AuthorizationRequested,
            cause="command:authorize",
            idempotency_key=str(uuid4()),
            attempt=self.authorization_attempts + 1,
        )

    def approve(self) -> None:
        self.trigger_event(
            self.Approved,
            cause="command:test",
            payment_transaction_id="krn:payment:eu1:transaction:bench",
            correlation_id="corr-bench",
            transaction_expires_at=datetime.now(UTC) + timedelta(days=28),
        )

    def expire(self) -> None:
        self.trigger_event(self.Expired, cause="command:expire", reason="AUTHORIZATION_WINDOW")
