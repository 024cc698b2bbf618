"""The read side of ``Payments``: payments, outcomes, listings, history, read models, audit.

:class:`PaymentQueries` is the half of :class:`~klarna_flow._app.payments.Payments`
that records nothing (``rebuild_read_models`` writes only the read models):
it reads the payment store and the audit log that ``Payments`` composes.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from uuid import UUID

from klarna_flow._app.authorization import AuthorizationOutcome, outcome_of
from klarna_flow._app.ledger import Ledger
from klarna_flow._audit.log import AuditEntry, AuditLog, TextOut, VerificationReport
from klarna_flow._domain.lifecycle import PaymentState, parse_state
from klarna_flow._domain.payment import Payment
from klarna_flow._errors import PaymentNotFound
from klarna_flow._shared.validation import check_positive_duration
from klarna_flow._store.payment_store import PaymentStore
from klarna_flow._store.projections import Progress
from klarna_flow._store.read_models import IndexRow

__all__ = ["PaymentQueries"]


class PaymentQueries:
    """Queries over the payment store (the read half of ``Payments``)."""

    _store: PaymentStore
    _ledger: Ledger

    def now(self) -> datetime:
        """The clock's current time (checked to be timezone-aware)."""
        return self._ledger.now()

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
        for row in self._store.read_model(PaymentState.AUTHORIZING):
            try:
                if self.get(row.payment_id).is_unresolved:
                    rows.append(row)
            except PaymentNotFound:
                continue  # deleted from the store under the index: verify reports it
        return rows

    def expiring_transactions(self, *, within: timedelta = timedelta(days=2)) -> list[Payment]:
        """Authorized payments whose transaction expires uncaptured within ``within``.

        Read from the payments the index lists as ``AUTHORIZED``, soonest first.
        """
        check_positive_duration(within, "within")
        horizon = self.now() + within
        found: list[tuple[datetime, Payment]] = []
        for row in self._store.read_model(PaymentState.AUTHORIZED):
            payment = self._quietly(row.payment_id)
            view = None if payment is None else payment.transaction_view
            if view is None or view.state not in (None, "AUTHORIZED") or view.expires_at is None:
                continue
            if payment is not None and view.captured_amount == 0 and view.expires_at <= horizon:
                found.append((view.expires_at, payment))
        return [payment for _, payment in sorted(found, key=lambda pair: pair[0])]

    def conflicts(self) -> list[Payment]:
        """Payments for which Klarna reported a transaction their record contradicts.

        Each holds ``TransactionConflict`` events (see the audit trail). This
        reads every payment the index lists: an operator's query.
        """
        found = []
        for row in self._store.read_model(None):
            payment = self._quietly(row.payment_id)
            if payment is not None and payment.conflicts:
                found.append(payment)
        return found

    def _quietly(self, payment_id: UUID) -> Payment | None:
        try:
            return self.get(payment_id)
        except PaymentNotFound:
            return None  # deleted under the index: verify reports it

    def find_by_payment_request(self, payment_request_id: str | None) -> UUID | None:
        """The payment that holds Klarna's ``payment_request_id``, if any."""
        if not payment_request_id:
            return None
        return self._store.find_by_payment_request(payment_request_id)

    # -- history and read models ----------------------------------------------

    def get(self, payment_id: UUID) -> Payment:
        """The payment as it stands now.

        Raises:
            InvalidInput: ``payment_id`` is not a UUID.
            PaymentNotFound: no payment with this id.
            StorageError: the store failed.
        """
        return self._store.get(payment_id)

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
        return self._store.state_at(payment_id, version=version, at=at)

    def stored_events(self, payment_id: UUID) -> Iterator[Payment.Event]:
        """The payment's events, decoded, in order.

        Raises:
            InvalidInput: ``payment_id`` is not a UUID.
            PaymentNotFound: no event is stored for this id.
        """
        return self._store.stored_events(payment_id)

    def read_model(self, state: PaymentState | str | None = None) -> list[IndexRow]:
        """Index rows (all, or those in ``state``), caught up first.

        Raises:
            InvalidInput: ``state`` is not a :class:`PaymentState` (or its name).
        """
        return self._store.read_model(None if state is None else parse_state(state))

    def counts_by_state(self) -> dict[str, int]:
        """How many payments are in each state (from the read model)."""
        return self._store.counts_by_state()

    def rebuild_read_models(self, *, progress: Progress | None = None) -> int:
        """Drop the read models and rebuild them from the notification log."""
        return self._store.rebuild_read_models(progress=progress)

    # -- audit ---------------------------------------------------------------

    def audit_log(self) -> AuditLog:
        """Audit access to this application's store (see :class:`AuditLog`)."""
        return AuditLog(self._store)

    def audit_trail(self, payment_id: UUID) -> list[AuditEntry]:
        """Every event of the payment, oldest first: time, event, states, cause, details.

        Read from the stored records alone (no key needed); secrets are masked.

        Raises:
            PaymentNotFound: no event is stored for this id.
        """
        return self.audit_log().trail(payment_id)

    def export_audit(
        self,
        out: TextOut,
        payment_id: UUID | None = None,
        *,
        progress: Progress | None = None,
    ) -> int:
        """Write the audit trail of one payment, or of all, as JSON Lines; returns the count."""
        return self.audit_log().export(out, payment_id, progress=progress)

    def verify(
        self, payment_id: UUID | None = None, *, progress: Progress | None = None
    ) -> VerificationReport:
        """Check the stored records' hash chain (one payment, or the whole log).

        Returns:
            A report naming the first payment and version that was altered,
            is missing, reordered, unreadable or truncated; ``report.ok`` when
            there is none.
        """
        return self.audit_log().verify(payment_id, progress=progress)
