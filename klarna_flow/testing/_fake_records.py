"""What FakeKlarna remembers and hands out: requests, transactions, notifications."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import attrs

from klarna_flow._shared.secrets import mask

__all__ = [
    "FLOWS",
    "CompletedRequest",
    "PaymentRequestRecord",
    "RecordedTransaction",
    "Scripted",
    "SignedNotification",
    "StoredAnswer",
]

FLOWS = frozenset({"AUTHORIZATION", "TOKENIZATION", "AUTHORIZATION_AND_TOKENIZATION"})


def _masked(value: str | None) -> str:
    return repr(mask(value))


def _masked_body(body: bytes) -> str:
    """``body`` with every token in it masked, or its size when it is not JSON."""
    try:
        masked = _mask_tokens(json.loads(body))
    except (ValueError, RecursionError):
        return f"<{len(body)} bytes>"
    return repr(json.dumps(masked, separators=(",", ":")).encode())


def _mask_tokens(value: Any, name: str = "") -> Any:
    """``value`` with strings under a ``*token`` or ``*token_id`` name, or token KRNs, masked."""
    if isinstance(value, dict):
        return {key: _mask_tokens(item, str(key)) for key, item in value.items()}
    if isinstance(value, list):
        return [_mask_tokens(item, name) for item in value]
    secret_name = name.lower().endswith(("token", "token_id"))
    if isinstance(value, str) and (secret_name or "-token:" in value):
        return mask(value)
    return value


@attrs.frozen
class SignedNotification:
    """A webhook call as Klarna would send it: raw body plus signed headers.

    Post ``body`` with ``headers`` to the application's webhook endpoint. Its
    ``repr`` (and ``str``) masks every token in the body.
    """

    body: bytes = attrs.field(repr=_masked_body)
    headers: dict[str, str]

    def json(self) -> dict[str, Any]:
        """The decoded envelope (``metadata`` and ``payload``)."""
        envelope: dict[str, Any] = json.loads(self.body)
        return envelope

    @property
    def event_id(self) -> str:
        """``metadata.event_id``."""
        return str(self.json()["metadata"]["event_id"])


@attrs.frozen
class CompletedRequest:
    """The outcome of :meth:`FakeKlarna.complete_payment_request`."""

    payment_request_id: str
    session_token: str | None = attrs.field(repr=_masked)
    customer_token: str | None = attrs.field(repr=_masked)
    completed_at: datetime
    notification: SignedNotification = attrs.field(repr=False)


@attrs.frozen
class RecordedTransaction:
    """A payment transaction the fake created (the session token is masked)."""

    payment_transaction_id: str
    reference: str
    amount: int
    currency: str
    partner_account_id: str
    session_token: str | None
    idempotency_key: str
    created_at: datetime
    expires_at: datetime


@attrs.define
class PaymentRequestRecord:
    """The fake's own, mutable view of one payment request."""

    payment_request_id: str
    partner_account_id: str
    amount: int
    currency: str
    flow: str
    created_at: datetime
    state: str = "SUBMITTED"
    completed_at: datetime | None = None
    session_token: str | None = attrs.field(default=None, repr=_masked)
    customer_token: str | None = attrs.field(default=None, repr=_masked)
    # Set once an authorize call used the session token (single use).
    authorized_with: str | None = None


@attrs.frozen
class StoredAnswer:
    """An answer kept for idempotent replay under one idempotency key."""

    fingerprint: tuple[str, str, bytes]
    status_code: int
    body: bytes
    stored_at: datetime


@attrs.frozen
class Scripted:
    """An outcome queued for the next authorize call.

    ``kind`` is one of ``respond`` (answer ``status_code``/``body`` at once),
    ``drop`` / ``timeout`` (no answer; after processing when
    ``after_processing``), ``decline`` and ``step_up`` (process the request,
    then answer with that result).
    """

    kind: str
    status_code: int = 0
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    after_processing: bool = False
    reason: str | None = None
