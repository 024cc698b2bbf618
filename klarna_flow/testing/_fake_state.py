"""FakeKlarna's memory: payment requests, tokens, transactions, and its signer.

Every method whose name starts with ``_`` expects the caller to hold ``self._lock``.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Literal, TypeAlias

import attrs

from klarna_flow._errors import InvalidInput
from klarna_flow._shared.clock import Clock
from klarna_flow.testing._fake_notify import Signer
from klarna_flow.testing._fake_records import (
    DEFAULT_SCOPES,
    CustomerTokenRecord,
    PaymentRequestRecord,
    RecordedTransaction,
    Scripted,
    SignedNotification,
    StoredAnswer,
)
from klarna_flow.testing._fake_wire import krn, request_tokens

__all__ = ["DEFAULT_REQUEST_LIFETIME", "OPEN", "FakeState", "TokensIn"]

DEFAULT_REQUEST_LIFETIME = timedelta(hours=3)
OPEN = frozenset({"SUBMITTED", "IN_PROGRESS"})
#: Where a completion notification carries the tokens.
TokensIn: TypeAlias = Literal["payload", "state_context"]


class FakeState:
    """Payment requests, session and customer tokens, answers and transactions."""

    def __init__(
        self,
        clock: Clock,
        partner_account_id: str,
        signing_keys: Mapping[str, bytes | str] | None = None,
    ) -> None:
        self.clock = clock
        self.partner_account_id = partner_account_id
        self._lock = threading.Lock()
        self._signer = Signer(signing_keys)
        self._accounts = {partner_account_id}
        self._payment_requests: dict[str, PaymentRequestRecord] = {}
        self._by_token: dict[str, str] = {}
        self._answers: dict[tuple[str, str], StoredAnswer] = {}
        self._transactions: dict[str, RecordedTransaction] = {}
        self._customer_tokens: dict[str, CustomerTokenRecord] = {}
        # Two queues, each used in order, independent of each other: verdicts
        # wait for the next processed valid authorize call, faults (errors and
        # lost answers) hit the next call to any endpoint.
        self._verdicts: deque[Scripted] = deque()
        self._faults: deque[Scripted] = deque()

    # -- payment requests ---------------------------------------------------------

    def _new_request(
        self,
        account: str,
        amount: int | None,
        currency: str,
        flow: str,
        *,
        expires_at: datetime | None = None,
        **details: Any,
    ) -> PaymentRequestRecord:
        """A new ``SUBMITTED`` request (3 hours to live unless ``expires_at`` says otherwise)."""
        now = self.clock.now()
        record = PaymentRequestRecord(
            payment_request_id=krn("request"),
            partner_account_id=account,
            amount=amount,
            currency=currency,
            flow=flow,
            created_at=now,
            expires_at=expires_at or now + DEFAULT_REQUEST_LIFETIME,
            **details,
        )
        self._payment_requests[record.payment_request_id] = record
        self._accounts.add(account)
        return record

    def _refresh(self, record: PaymentRequestRecord) -> PaymentRequestRecord:
        """Expire ``record`` if the clock passed its ``expires_at`` while it was live."""
        live = record.state in OPEN or record.state == "COMPLETED"
        if live and record.authorized_with is None and self.clock.now() >= record.expires_at:
            record.expired_from, record.previous_state = record.state, record.state
            record.state = "EXPIRED"
        return record

    def _find(self, payment_request_id: str) -> PaymentRequestRecord | None:
        record = self._payment_requests.get(payment_request_id)
        return None if record is None else self._refresh(record)

    def _get(self, payment_request_id: str) -> PaymentRequestRecord:
        record = self._find(payment_request_id) if isinstance(payment_request_id, str) else None
        if record is None:
            raise InvalidInput("payment_request_id", "no such payment request")
        return record

    def _move(
        self, payment_request_id: str, state: str, allowed: frozenset[str] | None = None
    ) -> tuple[PaymentRequestRecord, str]:
        """Move a request to ``state``; return it and its previous state."""
        record = self._get(payment_request_id)
        if allowed is None:
            allowed = OPEN if state == "COMPLETED" else OPEN | {"COMPLETED"}
        if record.state not in allowed or record.authorized_with is not None:
            raise InvalidInput(
                "payment_request_id", f"a {record.state} payment request cannot become {state}"
            )
        record.previous_state, record.state = record.state, state
        record.expired_from = None
        return record, record.previous_state

    def _issue_tokens(self, record: PaymentRequestRecord) -> tuple[str | None, str | None]:
        session = krn("klarna-network-session-token") if "AUTHORIZATION" in record.flow else None
        customer = None
        if "TOKENIZATION" in record.flow:
            customer = self._new_customer_token(
                record.partner_account_id, record.scopes, record.customer_token_reference
            ).customer_token
        if session is not None:
            self._by_token[session] = record.payment_request_id
        return session, customer

    # -- customer tokens ------------------------------------------------------------

    def _new_customer_token(
        self,
        account: str,
        scopes: tuple[str, ...] = DEFAULT_SCOPES,
        reference: str | None = None,
    ) -> CustomerTokenRecord:
        token = CustomerTokenRecord(
            customer_token=f"krn:customer-token:{uuid.uuid4()}",
            partner_account_id=account,
            scopes=scopes,
            created_at=self.clock.now(),
            customer_token_reference=reference,
        )
        self._customer_tokens[token.customer_token] = token
        self._accounts.add(account)
        return token

    # -- transactions ----------------------------------------------------------------

    def _transaction(self, payment_transaction_id: str) -> RecordedTransaction:
        found = self._transactions.get(payment_transaction_id)
        if not isinstance(payment_transaction_id, str) or found is None:
            raise InvalidInput("payment_transaction_id", "no such payment transaction")
        return found

    def _update(self, transaction: RecordedTransaction, **changes: Any) -> RecordedTransaction:
        """Store ``transaction`` with ``changes``; a new ``state`` keeps the old as previous."""
        if "state" in changes:
            changes["previous_state"] = transaction.state
        updated = attrs.evolve(transaction, **changes)
        self._transactions[updated.payment_transaction_id] = updated
        return updated

    # -- notifications ----------------------------------------------------------------

    @property
    def signing_keys(self) -> dict[str, bytes]:
        """Key id -> secret: give these to the application's webhook handler."""
        return self._signer.signing_keys

    def sign(self, body: bytes, key_id: str | None = None) -> dict[str, str]:
        """Signature headers for ``body`` (HMAC-SHA256, hex)."""
        return self._signer.sign(body, key_id)

    def notification(
        self,
        event_type: str,
        payload: Mapping[str, Any],
        *,
        event_id: str | None = None,
        occurred_at: datetime | None = None,
        key_id: str | None = None,
        partner_account_id: str | None = None,
    ) -> SignedNotification:
        """Any signed notification, e.g. a late or duplicated one (same ``event_id``)."""
        return self._signer.notification(
            event_type,
            payload,
            account=partner_account_id or self.partner_account_id,
            occurred_at=occurred_at or self.clock.now(),
            event_id=event_id,
            key_id=key_id,
        )

    def _state_change(
        self, record: PaymentRequestRecord, previous: str | None, tokens_in: TokensIn = "payload"
    ) -> SignedNotification:
        payload: dict[str, Any] = {
            "payment_request_id": record.payment_request_id,
            "state": record.state,
            "previous_state": previous,
        }
        if record.reference is not None:
            payload["payment_request_reference"] = record.reference
        if record.amount is not None:
            payload["amount"] = record.amount
        payload["currency"] = record.currency
        if record.state == "COMPLETED":
            tokens = request_tokens(record)
            if tokens_in == "payload":
                payload.update(tokens)
            elif tokens:
                payload["state_context"] = tokens
        event = record.state.lower().replace("_", "-")
        return self.notification(
            f"payment.request.state-change.{event}",
            payload,
            partner_account_id=record.partner_account_id,
        )
