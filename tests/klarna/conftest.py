"""Fixtures of the Klarna adapter's tests.

``caller`` is the contract suite's axis: the sync and the async client, each
against FakeKlarna in process (``httpx.MockTransport``) and served on
loopback. Every contract test runs on all four.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from klarna_flow.testing import FakeKlarna, ManualClock, serve_fake

from .klarna_support import Caller


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def fake(clock: ManualClock) -> FakeKlarna:
    return FakeKlarna(clock=clock)


@pytest.fixture
def token(fake: FakeKlarna) -> str:
    """A fresh session token for USD 11800 on the default account."""
    return fake.issue_session_token(amount=11800, currency="USD")


@pytest.fixture(
    params=[
        ("sync", "in-process"),
        ("sync", "loopback"),
        ("async", "in-process"),
        ("async", "loopback"),
    ],
    ids="-".join,
)
def caller(request: pytest.FixtureRequest, fake: FakeKlarna) -> Iterator[Caller]:
    kind, place = request.param
    with contextlib.ExitStack() as stack:
        base_url = stack.enter_context(serve_fake(fake)).base_url if place == "loopback" else None
        caller = Caller(fake, kind, base_url)
        stack.callback(caller.close)
        yield caller


@pytest.fixture(params=["sync", "async"])
def in_process(request: pytest.FixtureRequest, fake: FakeKlarna) -> Iterator[Caller]:
    """The two clients against the fake in process (no server)."""
    caller = Caller(fake, request.param, None)
    yield caller
    caller.close()
