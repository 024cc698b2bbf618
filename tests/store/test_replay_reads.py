"""A rebuild reads each event it needs in full once, in one pass: the fields it
decodes are those :func:`fields` decodes, in either stored format.

The rebuild (``projections._read``) decodes only the handful of fields a row
is made of and skips the others; the per-event projection decodes the whole
payload. Any payload, typed or legacy, gives both the same values, the same
times, and the same error for a time it lacks; what only Python's JSON reads
(NaN, a number out of range) is read as Python's JSON reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from eventsourcing.persistence import DatetimeAsISO, JSONTranscoder, UUIDAsHex
from hypothesis import given
from hypothesis import strategies as st

from klarna_flow._domain.sealed import SealedSecret
from klarna_flow._store.codec import TYPED, SealedSecretTranscoding, fields, seconds
from klarna_flow._store.projections import _at, _read

TOKEN = SealedSecret("k1", "bm9uY2U=", "Y2lwaGVy")
TIMES = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
TEXT = st.text(max_size=12)
IDS = ("payment_request_id", "payment_transaction_id")
TIME_NAMES = ("timestamp", "completed_at", "request_expires_at")
NAMES = st.sampled_from([*IDS, *TIME_NAMES, "cause", "session_token", "x"])
VALUES = st.one_of(st.none(), TEXT, TIMES, st.integers(), st.just(TOKEN))
DIGEST = bytes(range(32))


def legacy(payload: dict[str, Any]) -> bytes:
    """A record as eventsourcing's transcoder stored it (the legacy format)."""
    t = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DatetimeAsISO(), SealedSecretTranscoding()):
        t.register(transcoding)
    return DIGEST + t.encode(payload)


def typed(payload: dict[str, Any]) -> bytes:
    """A record in the typed format: a time is its ISO text, a token stays transcoded."""

    def plain(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, SealedSecret):
            data = {"k": value.key_id, "n": value.nonce, "c": value.ciphertext}
            return {"_type_": "sealed_secret", "_data_": data}
        return value

    return DIGEST + TYPED + msgspec.json.encode({k: plain(v) for k, v in payload.items()})


def outcome(read: Callable[[], float]) -> tuple[str, Any]:
    """What reading a time gives: its seconds, or the kind of error it raises."""
    try:
        return "seconds", read()
    except (KeyError, TypeError, ValueError) as e:
        return "raises", type(e)


def assert_read_as_decoded(state: bytes) -> None:
    decoded = fields(state)
    read = _read(state)
    for name in IDS:
        assert getattr(read, name) == decoded.get(name), name
    for name in TIME_NAMES:
        value = getattr(read, name)
        expected = outcome(lambda: seconds(decoded[name]))  # noqa: B023  (called at once)
        assert outcome(lambda: _at(value, name)) == expected, name  # noqa: B023


@given(payload=st.dictionaries(NAMES, VALUES))
def test_an_event_read_in_one_pass_is_the_event_decoded(payload: dict[str, Any]) -> None:
    assert_read_as_decoded(legacy(payload))
    assert_read_as_decoded(typed(payload))


@pytest.mark.parametrize(
    "payload",
    [
        b'{"timestamp":"2025-01-01T12:00:00+00:00","x":NaN,"payment_transaction_id":"t"}',
        b'{"x":1e400,"completed_at":"2025-01-01T12:00:00+00:00","payment_request_id":"r"}',
        b'{"payment_request_id":"a","payment_request_id":"b","timestamp":"2025-01-01T12:00:00"}',
    ],
)
def test_what_only_pythons_json_reads_is_read_as_it_reads_it(payload: bytes) -> None:
    assert_read_as_decoded(DIGEST + payload)
    assert_read_as_decoded(DIGEST + TYPED + payload)


def refusal(read: Callable[[], object]) -> tuple[type[Exception], str]:
    """The error reading a payload raises."""
    try:
        read()
    except ValueError as e:
        return type(e), str(e)
    raise AssertionError("read, not refused")


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"text"', b"{"])
def test_a_payload_that_is_no_json_object_is_refused_alike(payload: bytes) -> None:
    state = DIGEST + payload
    assert refusal(lambda: _read(state)) == refusal(lambda: fields(state))
