"""The stored record format, in one place: every reader of stored events and
the chain's writer go through this module.

A stored event's ``state`` is ``digest || payload``:

- ``digest``: :data:`DIGEST_SIZE` bytes, ``SHA-256(previous digest ||
  originator id || version || topic || 0 || payload)`` (:func:`link`; the
  chain is described in :mod:`klarna_flow._store.chain`);
- ``payload``: the event's fields as eventsourcing's ``JSONTranscoder`` writes
  them: an object with compact separators, UTF-8 (not ASCII-escaped), where an
  object of a registered type becomes ``{"_type_": name, "_data_": data}``:
  datetimes ``datetime_iso`` (ISO text), UUIDs ``uuid_hex``, sealed tokens
  ``sealed_secret`` (``{"k": key id, "n": nonce, "c": ciphertext}``).

A field is read one of two ways, kept equal by ``tests/test_store_codec.py``:
:func:`fields` decodes the whole payload (the simple way: the per-event
projection, audit trails); :func:`text_field` and :func:`seconds_field` find
one top-level field by its byte pattern (the fast way: the bulk rebuild) and
decode the whole payload only when the bytes are not as expected. Every
recorded time is read by :func:`instant`.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from functools import lru_cache
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Transcoding

from klarna_flow._domain.sealed import SealedSecret

__all__ = [
    "DATETIME_ISO",
    "DIGEST_SIZE",
    "SEALED_SECRET",
    "UUID_HEX",
    "SealedSecretTranscoding",
    "event_name",
    "fields",
    "has_digest",
    "instant",
    "link",
    "linked_digest",
    "sealed_key_id",
    "seconds",
    "seconds_field",
    "split",
    "text_field",
    "transcoded",
]

DIGEST_SIZE = 32
DATETIME_ISO = "datetime_iso"
UUID_HEX = "uuid_hex"
SEALED_SECRET = "sealed_secret"  # noqa: S105  (a transcoding's name, not a password)

# Topics and field names come from a handful of classes; the caches are bounded
# anyway, since a damaged store may hold any topic at all.
_CACHE_SIZE = 1024


# -- digest and payload -------------------------------------------------------------


def has_digest(state: object) -> bool:
    """True when ``state`` is bytes long enough to hold a digest."""
    return isinstance(state, bytes) and len(state) >= DIGEST_SIZE


def split(state: bytes) -> tuple[bytes, bytes]:
    """(digest, payload) of a stored record's state."""
    return state[:DIGEST_SIZE], state[DIGEST_SIZE:]


@lru_cache(maxsize=_CACHE_SIZE)
def event_name(topic: str) -> str:
    """The event's class name, from its topic (``module:Payment.Name`` gives ``Name``)."""
    return topic[max(topic.rfind("."), topic.rfind(":")) + 1 :]


# -- the chain link -------------------------------------------------------------------


# Each topic as hashed, with its terminator, built once: verify hashes every
# record of the log, and a dict lookup is cheaper there than a cached call.
_HASHED_TOPICS: dict[str, bytes] = {}


def _hashed_topic(topic: str) -> bytes:
    if len(_HASHED_TOPICS) >= _CACHE_SIZE:
        _HASHED_TOPICS.clear()
    hashed = _HASHED_TOPICS[topic] = topic.encode() + b"\x00"
    return hashed


def link(
    previous: bytes,
    originator_id: UUID | str,
    version: int,
    topic: str,
    payload: bytes | memoryview,
) -> bytes:
    """The digest of one record, given the digest of the record before it."""
    # One buffer and one update for the fixed-size head: hashing is verify's
    # whole cost, and each extra update is a call into C.
    if type(originator_id) is UUID:  # the common case, without UUID.bytes' Python call
        oid = originator_id.int.to_bytes(16, "big")
    else:
        oid = originator_id.bytes if isinstance(originator_id, UUID) else originator_id.encode()
    hashed_topic = _HASHED_TOPICS.get(topic) or _hashed_topic(topic)
    h = hashlib.sha256(previous + oid + version.to_bytes(8, "big", signed=True) + hashed_topic)
    h.update(payload)
    return h.digest()


def linked_digest(
    previous: bytes, originator_id: UUID | str, version: int, topic: str, state: bytes
) -> bytes | None:
    """The record's digest when it is the :func:`link` of its payload to
    ``previous``; None when it is not (or ``state`` is too short).

    Raises:
        TypeError: ``state`` is not bytes.
    """
    digest = state[:DIGEST_SIZE]
    if link(previous, originator_id, version, topic, memoryview(state)[DIGEST_SIZE:]) == digest:
        return digest
    return None


# -- the payload as JSON ----------------------------------------------------------------


def fields(state: bytes) -> dict[str, Any]:
    """The payload decoded as plain JSON: transcoded objects stay
    ``{"_type_": ..., "_data_": ...}`` (read them with :func:`transcoded`).

    Raises:
        ValueError: the payload is not a JSON object.
        TypeError: ``state`` is not bytes.
    """
    decoded = json.loads(bytes(state[DIGEST_SIZE:]))
    if not isinstance(decoded, dict):
        msg = f"a stored payload is a JSON object, not {type(decoded).__name__}"
        raise ValueError(msg)
    return decoded


def transcoded(value: Any) -> tuple[str, Any] | None:
    """(type name, data) of a transcoded object; None for a plain JSON value."""
    # Looser than eventsourcing's decoder (which wants exactly the two keys):
    # the audit masks anything that says it is a sealed secret.
    if isinstance(value, dict) and "_type_" in value and "_data_" in value:
        return str(value["_type_"]), value["_data_"]
    return None


def instant(value: Any) -> datetime:
    """A recorded time: a transcoded datetime, or its ISO text.

    Raises:
        ValueError, TypeError: not a datetime as eventsourcing writes one.
    """
    if isinstance(value, dict):
        value = value.get("_data_")
    return datetime.fromisoformat(value)


def seconds(value: Any) -> float:
    """POSIX seconds of a recorded time (see :func:`instant`)."""
    return instant(value).timestamp()


def sealed_key_id(data: Any) -> str | None:
    """The id of the key that sealed a stored secret (its ``_data_``); never the secret."""
    key = data.get("k") if isinstance(data, dict) else None
    return key if isinstance(key, str) else None


class SealedSecretTranscoding(Transcoding):
    """How a :class:`SealedSecret` is stored: key id, nonce and ciphertext."""

    type = SealedSecret
    name = SEALED_SECRET

    def encode(self, obj: SealedSecret) -> dict[str, str]:
        return {"k": obj.key_id, "n": obj.nonce, "c": obj.ciphertext}

    def decode(self, data: dict[str, str]) -> SealedSecret:
        return SealedSecret(data["k"], data["n"], data["c"])


# -- one field, read in place -------------------------------------------------------------
#
# JSON escapes every quote inside a string, so ``"name":`` can only match a
# key; the events' fields are flat, so a key matches only at the top level.
# A string holding a backslash (an escape) is left to the JSON decoder.


@lru_cache(maxsize=_CACHE_SIZE)
def _key(name: str) -> bytes:
    return b'"' + name.encode() + b'":'


@lru_cache(maxsize=_CACHE_SIZE)
def _datetime_key(name: str) -> bytes:
    return _key(name) + b'{"_type_":"' + DATETIME_ISO.encode() + b'","_data_":"'


def text_field(state: bytes, name: str) -> Any:
    """A top-level string (or null) field, as :func:`fields` would give it
    (whatever the JSON holds, should it hold something else)."""
    pattern = _key(name)
    at = state.find(pattern, DIGEST_SIZE)
    if at >= 0:
        start = at + len(pattern)
        if state.startswith(b"null", start):
            return None
        if state.startswith(b'"', start):
            end = state.find(b'"', start + 1)
            if end > 0 and state.find(b"\\", start, end) < 0:
                return state[start + 1 : end].decode()
    return fields(state).get(name)


def seconds_field(state: bytes, name: str) -> float:
    """POSIX seconds of a top-level datetime field, as :func:`seconds` of
    :func:`fields` would give them.

    Raises:
        KeyError: no such field.
    """
    pattern = _datetime_key(name)
    at = state.find(pattern, DIGEST_SIZE)
    if at >= 0:
        start = at + len(pattern)
        end = state.find(b'"', start)
        if end > 0:
            return instant(state[start:end].decode()).timestamp()
    return seconds(fields(state)[name])
