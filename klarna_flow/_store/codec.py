"""The stored record format, in one place: every reader of stored events and
the chain's writer go through this module.

A stored event's ``state`` is ``digest || payload``:

- ``digest``: :data:`DIGEST_SIZE` bytes, ``SHA-256(previous digest ||
  originator id || version || topic || 0 || payload)`` (:func:`link`; the
  chain is described in :mod:`klarna_flow._store.chain`), over the payload
  as stored, whichever format it is in;
- ``payload``, in one of two formats, told apart by its first byte:

  - **legacy** (every record written before klarna_flow had its own codec,
    and any event the typed codec cannot carry exactly): the event's fields
    as eventsourcing's ``JSONTranscoder`` writes them, an object with compact
    separators, UTF-8, where an object of a registered type becomes
    ``{"_type_": name, "_data_": data}``: datetimes ``datetime_iso`` (ISO
    text), UUIDs ``uuid_hex``, sealed tokens ``sealed_secret`` (``{"k": key
    id, "n": nonce, "c": ciphertext}``);
  - **typed** (:data:`TYPED`, then JSON written by ``msgspec``): the same
    object, except that a datetime is its ISO text itself (the event class
    says which fields are datetimes). Sealed tokens keep their transcoded
    shape, so an audit masks them without knowing the event class.

  :class:`EventCodec` writes the typed format when the event decodes back
  equal from it (else the legacy one), and decodes each event class with a
  ``msgspec`` decoder built from its annotations.

A field is read one of two ways, kept equal by ``tests/test_store_codec.py``:
:func:`fields` decodes the whole payload (the simple way: the per-event
projection, audit trails); :func:`text_field` and :func:`seconds_field` find
one top-level field by its byte pattern (the fast way: the bulk rebuild) and
decode the whole payload only when the bytes are not as expected. Every
recorded time is read by :func:`instant`, from either format.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import datetime
from functools import lru_cache
from types import UnionType
from typing import Any, TypedDict, Union, get_args, get_origin, get_type_hints
from uuid import UUID

import attrs
import msgspec
from eventsourcing.persistence import Transcoder, Transcoding
from eventsourcing.utils import TopicError, resolve_topic

from klarna_flow._domain.sealed import SealedSecret

__all__ = [
    "DATETIME_ISO",
    "DIGEST_SIZE",
    "SEALED_SECRET",
    "TYPED",
    "UUID_HEX",
    "EventCodec",
    "SealedSecretTranscoding",
    "event_name",
    "fields",
    "has_digest",
    "instant",
    "is_typed",
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
TYPED = b"\x01"
"""The first payload byte of a record in the typed format (a JSON payload starts with ``{``)."""

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


_PLAIN = msgspec.json.Decoder()


def is_typed(state: bytes) -> bool:
    """True when a stored record's payload is in the typed format."""
    return state[DIGEST_SIZE : DIGEST_SIZE + 1] == TYPED


def _plain_json(payload: bytes) -> Any:
    try:
        return _PLAIN.decode(payload)
    except msgspec.DecodeError:  # what msgspec refuses and Python's JSON reads (NaN, 1e400)
        return json.loads(payload)


def fields(state: bytes) -> dict[str, Any]:
    """The payload decoded as plain JSON, in either format: transcoded objects
    stay ``{"_type_": ..., "_data_": ...}`` (read them with :func:`transcoded`);
    a datetime is that object (legacy) or its ISO text (typed): read it with
    :func:`instant`.

    Raises:
        ValueError: the payload is not a JSON object.
        TypeError: ``state`` is not bytes.
    """
    if not isinstance(state, bytes | bytearray | memoryview):
        msg = f"a stored state is bytes, not {type(state).__name__}"
        raise TypeError(msg)
    start = DIGEST_SIZE + 1 if is_typed(state) else DIGEST_SIZE
    decoded = _plain_json(bytes(state[start:]))
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
    pattern = _key(name) + b'"' if is_typed(state) else _datetime_key(name)
    at = state.find(pattern, DIGEST_SIZE)
    if at >= 0:
        start = at + len(pattern)
        end = state.find(b'"', start)
        if end > 0:
            return instant(state[start:end].decode()).timestamp()
    return seconds(fields(state)[name])


# -- events, typed ----------------------------------------------------------------------


class _Knc(msgspec.Struct):
    k: str
    n: str
    c: str


class _Sealed(msgspec.Struct, tag_field="_type_", tag=SEALED_SECRET, rename={"data": "_data_"}):
    """A sealed token as both formats store it (the legacy transcoded shape)."""

    data: _Knc


def _sealed(value: SealedSecret) -> _Sealed:
    return _Sealed(_Knc(value.key_id, value.nonce, value.ciphertext))


_ENVELOPE = frozenset({"originator_id", "originator_version"})


def _swap(hint: Any, old: Any, new: Any) -> Any:
    """``hint`` with ``old`` replaced by ``new`` (alone or in an optional union)."""
    if hint is old:
        return new
    if get_origin(hint) in {Union, UnionType} and old in get_args(hint):
        return Union[tuple(new if a is old else a for a in get_args(hint))]  # noqa: UP007  (built from a tuple)
    return hint


def _is(hint: Any, kind: type) -> bool:
    return hint is kind or (get_origin(hint) in {Union, UnionType} and kind in get_args(hint))


_TYPED_DICT: Any = TypedDict  # called with names known at run time only


@attrs.frozen
class _Plan:
    """How one event class is written and read in the typed format."""

    decoder: msgspec.json.Decoder[dict[str, Any]]
    times: tuple[str, ...]  # datetime fields: written as ISO text
    sealed: tuple[str, ...]  # SealedSecret fields: written transcoded


def _plan(event_class: type) -> _Plan | None:
    """The typed plan of an event class; None when its fields do not allow one."""
    try:
        hints = get_type_hints(event_class)
        names = [f.name for f in dataclasses.fields(event_class) if f.name not in _ENVELOPE]
        typed = {name: _swap(hints[name], SealedSecret, _Sealed) for name in names}
        shape = _TYPED_DICT(f"{event_class.__name__}Fields", typed, total=False)
        decoder: msgspec.json.Decoder[dict[str, Any]] = msgspec.json.Decoder(shape)
    except (TypeError, KeyError, NameError):  # not a dataclass, or a type msgspec cannot read
        return None
    return _Plan(
        decoder,
        times=tuple(n for n in names if _is(hints[n], datetime)),
        sealed=tuple(n for n in names if _is(hints[n], SealedSecret)),
    )


class EventCodec:
    """An event's fields to a stored payload and back, in the typed format
    when it carries them exactly, else through ``legacy`` (eventsourcing's
    transcoder, which also reads every record written before).

    Args:
        legacy: the transcoder of the legacy format.
    """

    def __init__(self, legacy: Transcoder) -> None:
        self.legacy = legacy
        self._plans: dict[str, _Plan | None] = {}
        self._encoder = msgspec.json.Encoder()

    def _plan_of(self, topic: str) -> _Plan | None:
        try:
            return self._plans[topic]
        except KeyError:
            if len(self._plans) >= _CACHE_SIZE:
                self._plans.clear()
            try:
                plan = _plan(resolve_topic(topic))
            except TopicError:
                plan = None
            self._plans[topic] = plan
            return plan

    def encode(self, topic: str, state: dict[str, Any]) -> bytes:
        """The payload of an event of ``topic`` with fields ``state``."""
        plan = self._plan_of(topic)
        if plan is not None:
            typed = self._typed(plan, state)
            if typed is not None:
                return typed
        return self.legacy.encode(state)

    def _typed(self, plan: _Plan, state: dict[str, Any]) -> bytes | None:
        out = dict(state)
        try:
            for name in plan.times:
                value = out.get(name)
                if value is not None:
                    out[name] = value.isoformat()
            for name in plan.sealed:
                value = out.get(name)
                if value is not None:
                    out[name] = _sealed(value)
            payload = TYPED + self._encoder.encode(out)
            # Written typed only when it reads back equal: anything msgspec
            # would carry inexactly (a datetime or UUID nested in a dict, NaN,
            # a tuple, an undeclared attribute) stays in the legacy format.
            exact = self._decode(plan, payload) == state
        except (TypeError, ValueError, AttributeError, msgspec.MsgspecError):
            return None
        return payload if exact else None

    def decode(self, topic: str, payload: bytes) -> dict[str, Any]:
        """The fields of an event of ``topic`` from its payload, in either format.

        Raises:
            ValueError: the payload does not decode as an event of ``topic``.
        """
        if payload[:1] != TYPED:
            decoded: dict[str, Any] = self.legacy.decode(payload)
            return decoded
        plan = self._plan_of(topic)
        if plan is None:
            msg = f"no typed format for events of {topic!r}"
            raise ValueError(msg)
        return self._decode(plan, payload)

    @staticmethod
    def _decode(plan: _Plan, payload: bytes) -> dict[str, Any]:
        state = plan.decoder.decode(memoryview(payload)[1:])
        for name in plan.sealed:
            value = state.get(name)
            if value is not None:
                data = value.data
                state[name] = SealedSecret(data.k, data.n, data.c)
        return state
