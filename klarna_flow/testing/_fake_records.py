"""What FakeKlarna remembers and hands out: requests, transactions, tokens, notifications."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import attrs

from klarna_flow._shared.secrets import mask

__all__ = [
    "DEFAULT_SCOPES",
    "FLOWS",
    "SCOPES",
    "CompletedRequest",
    "CustomerTokenRecord",
    "PaymentRequestRecord",
    "RecordedCapture",
    "RecordedTransaction",
    "Scripted",
    "SignedNotification",
    "StoredAnswer",
]

FLOWS = frozenset({"AUTHORIZATION", "TOKENIZATION", "AUTHORIZATION_AND_TOKENIZATION"})
SCOPES = frozenset({"payment:customer_present", "payment:customer_not_present"})
DEFAULT_SCOPES = ("payment:customer_not_present",)


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
class RecordedCapture:
    """One capture of a recorded transaction."""

    payment_capture_id: str
    amount: int
    captured_at: datetime


@attrs.frozen
class RecordedTransaction:
    """A payment transaction the fake created, as it stands now (a snapshot).

    ``session_token`` and ``customer_token`` are masked (the token type
    stays readable, the secret part is ``****``); None when the call had none.
    ``previous_state`` is the state before the latest change (None until one).
    """

    payment_transaction_id: str
    reference: str
    amount: int
    currency: str
    partner_account_id: str
    session_token: str | None
    idempotency_key: str
    created_at: datetime
    expires_at: datetime
    state: str = "AUTHORIZED"
    captures: tuple[RecordedCapture, ...] = ()
    payment_request_id: str | None = None
    customer_token: str | None = None
    previous_state: str | None = None

    @property
    def captured_amount(self) -> int:
        """The sum of the captures."""
        return sum(c.amount for c in self.captures)


@attrs.frozen
class CustomerTokenRecord:
    """A customer token the fake issued (the token itself is masked in ``repr``)."""

    customer_token: str = attrs.field(repr=_masked)
    partner_account_id: str
    scopes: tuple[str, ...]
    created_at: datetime
    customer_token_reference: str | None = None
    revoked: bool = False


@attrs.define
class PaymentRequestRecord:
    """The fake's own, mutable view of one payment request.

    ``body`` is the initial authorize call's body (None when created from
    Python); ``charged_customer_token`` names the customer token whose
    (customer present) charge stepped up into this request.
    """

    payment_request_id: str
    partner_account_id: str
    amount: int | None
    currency: str
    flow: str
    created_at: datetime
    expires_at: datetime
    method: str = "HANDOVER"
    reference: str | None = None
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    customer_token_reference: str | None = None
    body: dict[str, Any] | None = attrs.field(default=None, repr=False)
    state: str = "SUBMITTED"
    previous_state: str | None = None
    completed_at: datetime | None = None
    session_token: str | None = attrs.field(default=None, repr=_masked)
    customer_token: str | None = attrs.field(default=None, repr=_masked)
    charged_customer_token: str | None = attrs.field(default=None, repr=_masked)
    # A token from issue_session_token (Express checkout, Sign in with Klarna):
    # sent on an initial call, which may carry step_up_config.
    express: bool = False
    # Set once an authorize call used the session token (single use).
    authorized_with: str | None = None
    # Set when the clock expired the request and no notification said so yet.
    expired_from: str | None = None

    @property
    def lifetime(self) -> timedelta:
        """How long the request was given to live."""
        return self.expires_at - self.created_at


@attrs.frozen
class StoredAnswer:
    """An answer kept for idempotent replay under one idempotency key."""

    fingerprint: tuple[str, str, str, bytes]
    status_code: int
    body: bytes
    stored_at: datetime


@attrs.frozen
class Scripted:
    """An outcome queued for the next call.

    ``kind`` is one of ``respond`` (answer ``status_code``/``body`` at once),
    ``drop`` / ``timeout`` (no answer; after processing when
    ``after_processing``): these faults apply to the next call to any of the
    fake's endpoints; ``approve``, ``decline`` and ``step_up`` (verdicts)
    apply to the next processed authorize call that passes every check, which
    then gets that result, even if a fault then loses its answer. The two
    kinds wait in separate queues.
    """

    kind: str
    status_code: int = 0
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    after_processing: bool = False
    reason: str | None = None
