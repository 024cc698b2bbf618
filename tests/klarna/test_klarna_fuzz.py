"""Whatever Klarna (or a proxy) answers, only typed results or typed errors come out."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from klarna_flow import KlarnaError
from klarna_flow.klarna import AuthorizationResponse, KlarnaClient, RetryPolicy
from klarna_flow.klarna._wire import parse_authorization
from klarna_flow.testing import FakeKlarna

from .klarna_support import API_KEY, call_args

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(["APPROVED", "DECLINED", "STEP_UP_REQUIRED", "2025-01-01T00:00:00Z"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)

TRANSACTION_FIELDS = [
    "payment_transaction_id",
    "payment_transaction_reference",
    "amount",
    "currency",
    "payment_funding",
    "payment_pricing",
    "expires_at",
]

# Bodies shaped like the real thing, with any field possibly wrong.
shaped = st.fixed_dictionaries(
    {
        "payment_transaction_response": st.fixed_dictionaries(
            {"result": st.sampled_from(["APPROVED", "DECLINED", "STEP_UP_REQUIRED", "OTHER"])},
            optional={
                "result_reason": json_values,
                "payment_transaction": st.dictionaries(
                    st.sampled_from(TRANSACTION_FIELDS), json_values
                ),
                "payment_request": json_values,
            },
        )
    },
    optional={"payment_request": json_values, "payment_transaction": json_values},
)

header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
headers = st.dictionaries(
    st.sampled_from(["Retry-After", "Klarna-Correlation-Id", "Content-Type", "Content-Encoding"]),
    header_text | st.sampled_from(["gzip", "deflate", "Wed, 21 Oct 2015 07:28:00 GMT"]),
)


def check(outcome: Any) -> None:
    assert isinstance(outcome, AuthorizationResponse)
    assert outcome.result.value in {"APPROVED", "DECLINED", "STEP_UP_REQUIRED"}


@FUZZ
@given(value=json_values | shaped)
def test_parser_on_any_json(value: Any) -> None:
    try:
        outcome = parse_authorization(200, None, json.dumps(value).encode())
    except KlarnaError:
        return
    check(outcome)


@FUZZ
@given(content=st.binary(max_size=200))
def test_parser_on_any_bytes(content: bytes) -> None:
    try:
        outcome = parse_authorization(200, None, content)
    except KlarnaError:
        return
    check(outcome)


class Scripted:
    """A transport handler answering whatever the test sets."""

    def __init__(self) -> None:
        self.status = 200
        self.headers: dict[str, str] = {}
        self.body = b""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        # A stream, not content=: the body is decoded (gzip...) by the client
        # as it reads, as on the network.
        return httpx.Response(self.status, headers=self.headers, stream=httpx.ByteStream(self.body))


@pytest.fixture
def scripted() -> Scripted:
    return Scripted()


@FUZZ
@given(
    status=st.integers(100, 599),
    head=headers,
    body=st.binary(max_size=100) | (json_values | shaped).map(lambda v: json.dumps(v).encode()),
)
def test_client_on_any_answer(
    scripted: Scripted, status: int, head: dict[str, str], body: bytes
) -> None:
    scripted.status, scripted.headers, scripted.body = status, head, body
    fake = FakeKlarna()  # only for well-formed arguments
    args = call_args(fake, "krn:payment:eu1:klarna-network-session-token:x")
    with KlarnaClient(
        API_KEY, transport=httpx.MockTransport(scripted), retry=RetryPolicy(max_attempts=1)
    ) as client:
        try:
            outcome = client.authorize(**args)
        except KlarnaError:
            return
    check(outcome)
    assert 200 <= status < 300
