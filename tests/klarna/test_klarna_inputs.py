"""Bad inputs are refused before any request reaches Klarna."""

from __future__ import annotations

from typing import Any

import pytest

from klarna_flow import InvalidInput
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
    ("session_token", "not-a-krn"),
    ("session_token", "krn:payment:eu1:klarna-network-session-token:has space"),
    ("session_token", ""),
    ("session_token", None),
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
