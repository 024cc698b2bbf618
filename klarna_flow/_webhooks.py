"""Klarna notifications: signature check and envelope parsing (no storage).

The signature is HMAC-SHA256 over the raw body with the key named by
``Klarna-Signing-Key-Id``, carried in ``Klarna-Signature`` (hex; base64 is
accepted too), compared in constant time. Bodies over 1 MB are refused
before anything else is done with them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from klarna_flow._errors import InvalidSignature, MalformedNotification
from klarna_flow._validation import check_aware

__all__ = [
    "MAX_BODY_BYTES",
    "Envelope",
    "NotificationResult",
    "parse_envelope",
    "verify_signature",
]

MAX_BODY_BYTES = 1_048_576  # 1 MiB, the limit Klarna applies to its own API
COMPLETED = "payment.request.state-change.completed"
EXPIRED = "payment.request.state-change.expired"
CANCELED = "payment.request.state-change.canceled"
KNOWN_TYPES = frozenset({COMPLETED, EXPIRED, CANCELED})


@attrs.frozen
class NotificationResult:
    """What the webhook endpoint should answer, and what was done.

    Attributes:
        status_code: the HTTP status to answer with (2xx acknowledges).
        outcome: ``applied``, ``duplicate``, ``ignored`` (late, repeated or a
            no-op), ``unknown_type``, ``unknown_payment``, ``refused`` or
            ``rejected`` (bad signature or body).
        event_id: the notification's ``event_id`` when it could be read.
        event_type: its ``event_type`` when it could be read.
        payment_id: the payment it concerned, when found.
        detail: a short human-readable explanation (no secrets).
    """

    status_code: int
    outcome: str
    event_id: str | None = None
    event_type: str | None = None
    payment_id: Any = None
    detail: str = ""

    @property
    def acknowledged(self) -> bool:
        return 200 <= self.status_code < 300


@attrs.frozen
class Envelope:
    """The parts of a notification the application acts on."""

    event_id: str
    event_type: str
    occurred_at: datetime
    payload: Mapping[str, Any] = attrs.field(repr=False)

    @property
    def payment_request_id(self) -> str | None:
        value = self.payload.get("payment_request_id")
        return value if isinstance(value, str) else None

    def token(self, *names: str) -> str | None:
        """The first of ``names`` found in the payload or its ``state_context``."""
        context = self.payload.get("state_context")
        for source in (self.payload, context if isinstance(context, Mapping) else {}):
            for name in names:
                value = source.get(name)
                if isinstance(value, str) and value:
                    return value
        return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


def verify_signature(body: bytes, headers: Mapping[str, str], keys: Mapping[str, bytes]) -> str:
    """The id of the key that signed ``body``.

    Raises:
        InvalidSignature: no signature, an unknown key id, or a mismatch.
    """
    key_id = _header(headers, "Klarna-Signing-Key-Id")
    signature = _header(headers, "Klarna-Signature")
    if not key_id or not signature:
        raise InvalidSignature("missing Klarna-Signature or Klarna-Signing-Key-Id header")
    key = keys.get(key_id)
    if key is None:
        raise InvalidSignature(f"unknown signing key id {key_id[:64]!r}")
    digest = hmac.new(key, body, hashlib.sha256).digest()
    given = signature.strip().encode()
    if hmac.compare_digest(given, digest.hex().encode()) or hmac.compare_digest(
        given, base64.b64encode(digest)
    ):
        return key_id
    raise InvalidSignature("signature does not match the body")


def parse_envelope(body: bytes) -> Envelope:
    """The envelope of a notification body.

    Raises:
        MalformedNotification: not a JSON envelope with metadata and payload.
    """
    if len(body) > MAX_BODY_BYTES:
        raise MalformedNotification(f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise MalformedNotification("body is not JSON") from e
    metadata = doc.get("metadata") if isinstance(doc, dict) else None
    payload = doc.get("payload") if isinstance(doc, dict) else None
    if not isinstance(metadata, dict) or not isinstance(payload, dict):
        raise MalformedNotification("envelope needs 'metadata' and 'payload' objects")
    event_id = metadata.get("event_id")
    event_type = metadata.get("event_type")
    if not isinstance(event_id, str) or not event_id or len(event_id) > 255:
        raise MalformedNotification("metadata.event_id missing or invalid")
    if not isinstance(event_type, str) or not event_type or len(event_type) > 255:
        raise MalformedNotification("metadata.event_type missing or invalid")
    return Envelope(event_id, event_type, _occurred_at(metadata.get("occurred_at")), payload)


def _occurred_at(value: object) -> datetime:
    if not isinstance(value, str):
        raise MalformedNotification("metadata.occurred_at missing")
    try:
        return check_aware(datetime.fromisoformat(value.replace("Z", "+00:00")), "occurred_at")
    except ValueError as e:  # includes InvalidInput for a naive time
        raise MalformedNotification("metadata.occurred_at is not an ISO 8601 UTC time") from e
