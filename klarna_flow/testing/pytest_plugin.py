"""pytest fixtures for testing your own flow logic without a network.

Installed with klarna_flow and registered under the ``pytest11`` entry point,
so the fixtures are available in any test suite that has the package:

- ``manual_clock``: a :class:`ManualClock` (the one clock of the fixtures);
- ``fake_klarna``: a :class:`FakeKlarna` on that clock;
- ``payments``: an in-memory :class:`~klarna_flow.Payments` wired to that
  fake (sync and async clients through ``httpx.MockTransport``), its signing
  keys and that clock.

A suite that defines fixtures with the same names keeps its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from klarna_flow._app.payments import Payments
from klarna_flow.klarna import AsyncKlarnaClient, KlarnaClient, RetryPolicy
from klarna_flow.testing._clock import ManualClock
from klarna_flow.testing._fake import FakeKlarna

__all__ = ["fake_klarna", "manual_clock", "payments"]

# Retries stay on (so scripted 5xx and 429 are retried) but barely wait.
_FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.01)


@pytest.fixture
def manual_clock() -> ManualClock:
    """A clock that moves only when your test calls ``advance``."""
    return ManualClock()


@pytest.fixture
def fake_klarna(manual_clock: ManualClock) -> FakeKlarna:
    """A stateful fake of Klarna's API, on ``manual_clock``."""
    return FakeKlarna(clock=manual_clock)


@pytest.fixture
def payments(manual_clock: ManualClock, fake_klarna: FakeKlarna) -> Iterator[Payments]:
    """In-memory ``Payments`` talking to ``fake_klarna``, on ``manual_clock``."""
    transport = httpx.MockTransport(fake_klarna)
    client = KlarnaClient(fake_klarna.api_key, transport=transport, retry=_FAST_RETRY)
    async_client = AsyncKlarnaClient(fake_klarna.api_key, transport=transport, retry=_FAST_RETRY)
    app = Payments(
        {"PERSISTENCE_MODULE": "eventsourcing.popo"},
        clock=manual_clock,
        klarna=client,
        async_klarna=async_client,
        partner_account_id=fake_klarna.partner_account_id,
        signing_keys=fake_klarna.signing_keys,
    )
    yield app
    client.close()
    asyncio.run(async_client.aclose())
    app.close()
