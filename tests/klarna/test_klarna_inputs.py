"""Bad inputs are refused before any request reaches Klarna."""

from __future__ import annotations

from typing import Any

import pytest

from klarna_flow import InvalidInput, KlarnaNotFound
from klarna_flow.testing import FakeKlarna

from .klarna_support import Caller

BAD_INPUTS = [
    ("amount", 0),
    ("amount", -5),
    ("amount", True),
    ("amount", 11800.0),
    ("amount", "11800"),
    ("amount", 10**16),
    ("currency", "usd"),
    ("currency", "XXX"),
    ("currency", 840),
    ("reference", ""),
    ("reference", "r" * 256),
    ("reference", "line\nbreak"),
    ("reference", None),
    ("session_token", "krn:payment:eu1:klarna-network-session-token:has space"),
    ("session_token", "krn:payment:eu1:klarna-network-session-token:tab\there"),
    ("session_token", "krn:payment:eu1:klarna-network-session-token:nul\x00"),
    ("session_token", "krn:payment:eu1:klarna-network-session-token:é"),
    ("session_token", "t" * 8193),
    ("session_token", ""),
    ("partner_account_id", "test-partner"),
    ("partner_account_id", "krn:partner: global"),
    ("idempotency_key", ""),
    ("idempotency_key", "k" * 256),
    ("idempotency_key", "tab\tkey"),
    ("idempotency_key", "clé"),
    ("idempotency_key", 42),
    ("correlation_id", ""),
    ("correlation_id", "naïve"),
    ("correlation_id", "line\nbreak"),
    # Klarna: Partner-Correlation-Id is "<= 255 characters ^[A-Za-z0-9]+$".
    ("correlation_id", "corr-1"),
    ("correlation_id", "c" * 256),
    ("correlation_id", "\uff11\uff12\uff13"),  # fullwidth digits: digits, but not ASCII
    ("correlation_id", "{12345678-1234-5678-1234-567812345678}"),
    ("correlation_id", "urn:uuid:12345678-1234-5678-1234-567812345678"),
    ("correlation_id", "1234-5678-12345678-1234-567812345678"),
    ("correlation_id", 42),
]


@pytest.mark.parametrize(("field", "value"), BAD_INPUTS, ids=lambda v: repr(v)[:30])
def test_bad_input_is_refused_before_any_request(
    in_process: Caller, fake: FakeKlarna, token: str, field: str, value: Any
) -> None:
    authorize = in_process.client()

    with pytest.raises(InvalidInput) as caught:
        authorize(**in_process.args(token, **{field: value}))

    assert caught.value.field == field
    assert fake.requests == []


def test_secret_inputs_are_not_echoed(in_process: Caller, token: str) -> None:
    secret = "krn:payment:eu1:klarna-network-session-token:top secret"

    with pytest.raises(InvalidInput) as caught:
        in_process.authorize(token, session_token=secret)

    assert "top secret" not in str(caught.value)
    assert "top secret" not in repr(caught.value)


OPAQUE_TOKENS = [
    "krn:payment:eu1:klarna-network-session-token:" + "a" * 2000,
    "krn:network:us1:test:session-token:6a8d1b3c-2f4e",
    "an.opaque~token_without-a_prefix",
    "t" * 8192,
]


@pytest.mark.parametrize("token", OPAQUE_TOKENS, ids=lambda v: f"{v[:24]}..{len(v)}")
def test_opaque_session_tokens_are_sent_as_given(
    in_process: Caller, fake: FakeKlarna, token: str
) -> None:
    """Klarna: forward tokens "without parsing, decoding, or validating"."""
    with pytest.raises(KlarnaNotFound):  # tokens this fake never issued
        in_process.authorize(token)

    [sent] = fake.requests
    assert sent.headers["Klarna-Network-Session-Token"] == token
