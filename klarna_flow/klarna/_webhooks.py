"""Klarna notifications: signature check and envelope parsing (no storage).

The signature is HMAC-SHA256 over the raw body with the key named by
``Klarna-Signing-Key-Id``, carried in ``Klarna-Signature`` (hex; base64 is
accepted too), compared in constant time. Bodies over 1 MiB are refused
before anything else is done with them (before hashing). Headers come as a
mapping or as ASGI's raw list of ``(name, value)`` pairs (bytes or str).

The tokens of a ``completed`` notification are read from every place Klarna
is known to put them (see :func:`completion_tokens`): tolerant of where they
sit, strict about what is found there.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeAlias
from uuid import UUID

import attrs

from klarna_flow._errors import InvalidInput, InvalidSignature, MalformedNotification
from klarna_flow._shared.validation import check_aware
from klarna_flow.klarna._wire import instant

__all__ = [
    "MAX_BODY_BYTES",
    "TRANSACTION_PREFIX",
    "CompletionTokens",
    "Envelope",
    "Headers",
    "NotificationOutcome",
    "NotificationResult",
    "TransactionReport",
    "check_signing_keys",
    "completion_tokens",
    "parse_envelope",
    "reported_expiry",
    "reported_state",
    "transaction_report",
    "verify_signature",
]

MAX_BODY_BYTES = 1_048_576  # 1 MiB, the limit Klarna applies to its own API
_STATE_CHANGE = "payment.request.state-change."
COMPLETED = _STATE_CHANGE + "completed"
EXPIRED = _STATE_CHANGE + "expired"
CANCELED = _STATE_CHANGE + "canceled"
DECLINED = _STATE_CHANGE + "declined"
SUBMITTED = _STATE_CHANGE + "submitted"
IN_PROGRESS = _STATE_CHANGE + "in-progress"
UPDATED = "payment.request.updated"
#: Reports about an open payment request: recorded, the payment's state unchanged.
REPORTED_TYPES = frozenset({SUBMITTED, IN_PROGRESS, UPDATED})
KNOWN_TYPES = frozenset({COMPLETED, EXPIRED, CANCELED, DECLINED}) | REPORTED_TYPES
#: ``payment.transaction.state-change.*``, ``payment.transaction.captured``...
TRANSACTION_PREFIX = "payment.transaction."
# The transaction fields a report keeps (the view is built from them).
_TRANSACTION_FIELDS = (
    "state",
    "amount",
    "currency",
    "captured_amount",
    "payment_captures",
    "payment_funding",
    "expires_at",
)
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
    account_id: str | None = None
    """The partner account it is about (v2 ``subject_account_id``, v1 ``account_id``)."""

    @property
    def payment_request_id(self) -> str | None:
        value = self.payload.get("payment_request_id")
        return value if isinstance(value, str) else None


# -- what a notification's payload says ---------------------------------------------


@attrs.frozen
class TransactionReport:
    """What a ``payment.transaction.*`` notification says about a transaction.

    Klarna does not document these payloads beyond their names: the fields
    are read at the payload's top level or under ``payment_transaction``.
    """

    payment_transaction_id: str
    reference: str | None
    payment_request_id: str | None
    fields: Mapping[str, Any]


def transaction_report(payload: Mapping[str, Any]) -> TransactionReport:
    """The report a transaction notification carries.

    Raises:
        MalformedNotification: no ``payment_transaction_id``.
    """
    nested = payload.get("payment_transaction")
    source = {**payload, **nested} if isinstance(nested, Mapping) else dict(payload)
    transaction_id = source.get("payment_transaction_id")
    if not isinstance(transaction_id, str) or not transaction_id.startswith("krn:"):
        raise MalformedNotification("payload.payment_transaction_id missing or invalid")
    fields = {name: source[name] for name in _TRANSACTION_FIELDS if name in source}
    capture = source.get("payment_capture")
    if isinstance(capture, Mapping):
        fields["last_capture"] = dict(capture)
    reference = source.get("payment_transaction_reference")
    request_id = source.get("payment_request_id")
    return TransactionReport(
        payment_transaction_id=transaction_id,
        reference=reference if isinstance(reference, str) and reference else None,
        payment_request_id=request_id if isinstance(request_id, str) and request_id else None,
        fields=fields,
    )


_SESSION_TOKEN_NAMES = ("klarna_network_session_token", "payment_token")
_CUSTOMER_TOKEN_NAMES = ("customer_token", "customer_token_id")
_KLARNA_STATE = re.compile(r"[A-Z][A-Z_]{0,63}")


@attrs.frozen
class CompletionTokens:
    """The tokens a ``completed`` notification carries (never shown in its repr)."""

    session_token: str | None = attrs.field(repr=False)
    customer_token: str | None = attrs.field(repr=False)


def completion_tokens(payload: Mapping[str, Any]) -> CompletionTokens:
    """The tokens of a completed payment request, wherever the payload holds them.

    Looked up in the payload and in its ``state_context``: the session token as
    ``klarna_network_session_token`` or the older ``payment_token``; the
    customer token as ``klarna_customer.customer_token`` or
    ``klarna_customer.customer_token_id``. ``null`` and ``""`` are taken as
    absent; the same token in several places is one token. Other fields are
    ignored. The tokens' shape is checked where they are recorded.

    Raises:
        MalformedNotification: a token that is not a string, a ``state_context``
            or ``klarna_customer`` that is not an object, or two different
            values for one token (the message names the place, never a value).
    """
    places = _places(payload)
    customers = _customer_places(places)
    return CompletionTokens(
        session_token=_one("session token", _named(places, _SESSION_TOKEN_NAMES)),
        customer_token=_one("customer token", _named(customers, _CUSTOMER_TOKEN_NAMES)),
    )


Places: TypeAlias = list[tuple[str, Mapping[str, Any]]]
"""Objects of a payload, each with its path (``payload.state_context``...)."""


def _places(payload: Mapping[str, Any]) -> Places:
    """The payload and its ``state_context``, when it has one."""
    context = _object(payload, "state_context", "payload")
    return [("payload", payload)] + (
        [] if context is None else [("payload.state_context", context)]
    )


def _customer_places(places: Places) -> Places:
    """The ``klarna_customer`` objects of ``places``."""
    found = []
    for where, place in places:
        customer = _object(place, "klarna_customer", where)
        if customer is not None:
            found.append((f"{where}.klarna_customer", customer))
    return found


def _named(places: Places, names: Sequence[str]) -> list[tuple[str, object]]:
    """Each of ``names`` in each of ``places``: (path, value or None)."""
    return [(f"{where}.{name}", place.get(name)) for where, place in places for name in names]


def _object(parent: Mapping[str, Any], name: str, where: str) -> Mapping[str, Any] | None:
    """``parent[name]`` when it is an object, None when absent or null.

    Raises:
        MalformedNotification: it is something else.
    """
    value = parent.get(name)
    if value is None or isinstance(value, Mapping):
        return value
    raise MalformedNotification(f"{where}.{name} is not an object")


def _one(what: str, found: list[tuple[str, object]]) -> str | None:
    """The one value of a token found under several names, or None.

    Raises:
        MalformedNotification: a value that is not a string, or two different values.
    """
    values = set()
    for path, value in found:
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise MalformedNotification(f"{path} is not a string")
        values.add(value)
    if len(values) > 1:
        raise MalformedNotification(f"the payload carries {len(values)} different {what}s")
    return next(iter(values), None)


def reported_state(event_type: str, payload: Mapping[str, Any]) -> str | None:
    """The payment request's state at Klarna that a report names, if any.

    A state change names it in its type (``...in-progress`` is ``IN_PROGRESS``);
    ``payment.request.updated`` may carry it as the payload's ``state`` (kept
    only when it looks like a state name: upper-case letters and ``_``).
    """
    if event_type.startswith(_STATE_CHANGE):
        return event_type[len(_STATE_CHANGE) :].upper().replace("-", "_")
    state = payload.get("state")
    return state if isinstance(state, str) and _KLARNA_STATE.fullmatch(state) else None


def reported_expiry(payload: Mapping[str, Any]) -> datetime | None:
    """The request's ``expires_at`` when a report carries a readable one, else None.

    Klarna reflects a custom lifetime (``interaction_expiry``) there; a
    value that cannot be read is left out rather than guessed.
    """
    found = payload.get("expires_at")
    if found is None:
        context = payload.get("state_context")
        found = context.get("expires_at") if isinstance(context, Mapping) else None
    try:
        return instant(found, "expires_at")
    except ValueError:
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
    account = next(
        (
            metadata[name]
            for name in ("subject_account_id", "account_id", "recipient_account_id")
            if isinstance(metadata.get(name), str) and metadata[name]
        ),
        None,
    )
    occurred_at = _occurred_at(metadata.get("occurred_at"))
    return Envelope(event_id, event_type, occurred_at, payload, account_id=account)


def _occurred_at(value: object) -> datetime:
    if not isinstance(value, str):
        raise MalformedNotification("metadata.occurred_at missing")
    try:
        return check_aware(datetime.fromisoformat(value.replace("Z", "+00:00")), "occurred_at")
    except ValueError as e:  # includes InvalidInput for a naive time
        raise MalformedNotification("metadata.occurred_at is not an ISO 8601 UTC time") from e
