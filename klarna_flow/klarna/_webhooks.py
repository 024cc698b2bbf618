"""Klarna notifications: signature check and envelope parsing (no storage).

The signature is HMAC-SHA256 over the raw body with the key named by
``Klarna-Signing-Key-Id``, carried in ``Klarna-Signature`` (hex; base64 is
accepted too), compared in constant time. Bodies over 1 MiB are refused
before anything else is done with them (before hashing). Headers come as a
mapping or as ASGI's raw list of ``(name, value)`` pairs (bytes or str).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeAlias
from uuid import UUID

import attrs

from klarna_flow._errors import InvalidInput, InvalidSignature, MalformedNotification
from klarna_flow._shared.validation import check_aware

__all__ = [
    "MAX_BODY_BYTES",
    "Envelope",
    "Headers",
    "NotificationOutcome",
    "NotificationResult",
    "check_signing_keys",
    "parse_envelope",
    "verify_signature",
]

MAX_BODY_BYTES = 1_048_576  # 1 MiB, the limit Klarna applies to its own API
COMPLETED = "payment.request.state-change.completed"
EXPIRED = "payment.request.state-change.expired"
CANCELED = "payment.request.state-change.canceled"
KNOWN_TYPES = frozenset({COMPLETED, EXPIRED, CANCELED})
KEY_ID_HEADER = "klarna-signing-key-id"
SIGNATURE_HEADER = "klarna-signature"

Text: TypeAlias = str | bytes
#: A mapping of header names to values, or ASGI's list of ``(name, value)`` pairs.
Headers: TypeAlias = Mapping[str, str] | Mapping[Text, Text] | Sequence[tuple[Text, Text]]


class NotificationOutcome(enum.StrEnum):
    """What was done with one notification (compares equal to its string value)."""

    APPLIED = "applied"
    """The payment recorded it."""
    DUPLICATE = "duplicate"
    """Its ``event_id`` was applied before."""
    IGNORED = "ignored"
    """Late, repeated or a no-op for the payment as it stands (never moves it back)."""
    UNKNOWN_TYPE = "unknown_type"
    """An event type this library does not act on (counted, acknowledged)."""
    UNKNOWN_PAYMENT = "unknown_payment"
    """No payment holds its payment request (yet): answered 404, Klarna retries."""
    REFUSED = "refused"
    """The lifecycle refused the command it maps to (acknowledged)."""
    REJECTED = "rejected"
    """A bad signature or body: answered 400."""
    CONFLICT = "conflict"
    """The payment kept changing under it: answered 503, Klarna retries."""
    ERROR = "error"
    """The store failed: answered 503, Klarna retries."""


@attrs.frozen
class NotificationResult:
    """What the webhook endpoint should answer, and what was done.

    Attributes:
        status_code: the HTTP status to answer with (2xx acknowledges).
        outcome: a :class:`NotificationOutcome` (a ``str`` enum: ``applied``,
            ``duplicate``, ``ignored``, ...).
        event_id: the notification's ``event_id`` when it could be read.
        event_type: its ``event_type`` when it could be read.
        payment_id: the payment it concerned, when found.
        detail: a short human-readable explanation (no secrets).
    """

    status_code: int
    outcome: NotificationOutcome = attrs.field(converter=NotificationOutcome)
    event_id: str | None = None
    event_type: str | None = None
    payment_id: UUID | None = None
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


def check_signing_keys(keys: object) -> dict[str, bytes]:
    """``keys`` as key id -> secret bytes (a ``str`` secret is taken as UTF-8).

    Raises:
        InvalidInput: not a mapping of non-empty str key ids to non-empty
            bytes or str (the message never shows a key).
    """
    if not isinstance(keys, Mapping):
        raise InvalidInput("signing_keys", f"must be a mapping, not {type(keys).__name__}")
    return {_key_id(key_id): _secret(key) for key_id, key in keys.items()}


def _key_id(key_id: object) -> str:
    if not isinstance(key_id, str) or not key_id:
        raise InvalidInput("signing_keys", "every key id must be a non-empty str")
    return key_id


def _secret(key: object) -> bytes:
    secret = _utf8(key) if isinstance(key, str) else key
    if isinstance(secret, bytes) and secret:
        return secret
    if isinstance(key, bytes | str):
        problem = "is not UTF-8" if key else "is empty"
    else:
        problem = f"is a {type(key).__name__}"
    raise InvalidInput("signing_keys", f"every key must be non-empty bytes or str; one {problem}")


def _utf8(text: str) -> bytes | None:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate; the error would carry the key
        return None


def _signature_headers(headers: object) -> dict[str, str]:
    """The signature headers found in ``headers``, by lower-case name.

    Raises:
        InvalidInput: ``headers`` is neither a mapping nor a list or tuple of
            ``(name, value)`` pairs of str or bytes.
    """
    found: dict[str, str] = {}
    for pair in _pairs(headers):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise InvalidInput("headers", "must hold (name, value) pairs")
        name, value = _text(pair[0]).lower(), _text(pair[1])
        if name in (KEY_ID_HEADER, SIGNATURE_HEADER):
            found.setdefault(name, value)
    return found


def _pairs(headers: object) -> Iterable[object]:
    if isinstance(headers, Mapping):
        return headers.items()
    if isinstance(headers, list | tuple):
        return headers
    kind = type(headers).__name__
    raise InvalidInput("headers", f"must be a mapping or a list of (name, value) pairs, not {kind}")


def _text(part: object) -> str:
    if isinstance(part, str):
        return part
    if isinstance(part, bytes):
        return part.decode("latin-1")  # HTTP header bytes, as ASGI passes them
    raise InvalidInput(
        "headers", f"names and values must be str or bytes, not {type(part).__name__}"
    )


def _check_size(body: bytes) -> None:
    """Refuse a body over :data:`MAX_BODY_BYTES` (before hashing or parsing it).

    Raises:
        MalformedNotification: the body is too large.
    """
    if len(body) > MAX_BODY_BYTES:
        raise MalformedNotification(f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")


def verify_signature(body: bytes, headers: Headers, keys: Mapping[str, bytes]) -> str:
    """The id of the key that signed ``body``.

    Raises:
        MalformedNotification: the body is over :data:`MAX_BODY_BYTES` (not hashed).
        InvalidSignature: no signature, an unknown key id, or a mismatch.
        InvalidInput: ``headers`` is not a mapping or a list of pairs.
    """
    found = _signature_headers(headers)
    _check_size(body)
    key_id, signature = found.get(KEY_ID_HEADER), found.get(SIGNATURE_HEADER)
    if not key_id or not signature:
        raise InvalidSignature("missing Klarna-Signature or Klarna-Signing-Key-Id header")
    key = keys.get(key_id)
    if key is None:
        raise InvalidSignature(f"unknown signing key id {key_id[:64]!r}")
    digest = hmac.new(key, body, hashlib.sha256).digest()
    given = signature.strip().encode("utf-8", "replace")
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
    _check_size(body)
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise MalformedNotification("body is not JSON") from e
    except RecursionError:
        raise MalformedNotification("body is nested too deeply") from None
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
