"""Helpers of the Klarna adapter's tests: constants and the ``Caller`` axis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from klarna_flow.klarna import (
    AsyncKlarnaClient,
    AuthorizationResponse,
    KlarnaClient,
    RetryPolicy,
)
from klarna_flow.testing import FakeKlarna

API_KEY = "test-api-key"
REFERENCE = "acquiring-partner-transaction-reference-1234"
# Tiny waits keep the retry tests fast; three attempts in all.
FAST = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.01, deadline=5.0)

Authorize = Callable[..., AuthorizationResponse]


def call_args(fake: FakeKlarna, token: str, **overrides: Any) -> dict[str, Any]:
    """Arguments of an authorize call matching a token issued for USD 11800."""
    args: dict[str, Any] = {
        "partner_account_id": fake.partner_account_id,
        "session_token": token,
        "currency": "USD",
        "amount": 11800,
        "reference": REFERENCE,
        "idempotency_key": str(uuid.uuid4()),
    }
    return args | overrides


class Caller:
    """One way of reaching Klarna: a client kind over a place.

    Args:
        fake: the FakeKlarna behind it.
        kind: ``sync`` or ``async``.
        base_url: the loopback server's URL, or None for in process.
    """

    def __init__(self, fake: FakeKlarna, kind: str, base_url: str | None) -> None:
        self.fake = fake
        self.kind = kind
        self.base_url = base_url
        self._loop = asyncio.new_event_loop() if kind == "async" else None
        self._sync: list[KlarnaClient] = []
        self._async: list[AsyncKlarnaClient] = []

    def client(self, api_key: str = API_KEY, retry: RetryPolicy = FAST) -> Authorize:
        """A new client's ``authorize``, callable synchronously either way."""
        where: dict[str, Any] = {"base_url": self.base_url} if self.base_url else {}
        if self._loop is None:
            if not self.base_url:
                where["transport"] = httpx.MockTransport(self.fake)
            client = KlarnaClient(api_key, retry=retry, **where)
            self._sync.append(client)
            return client.authorize
        if not self.base_url:
            where["transport"] = httpx.MockTransport(self.fake)
        aclient = AsyncKlarnaClient(api_key, retry=retry, **where)
        self._async.append(aclient)
        loop = self._loop
        return lambda **kwargs: loop.run_until_complete(aclient.authorize(**kwargs))

    def method(self, name: str, api_key: str = API_KEY, retry: RetryPolicy = FAST) -> Any:
        """A new client's method ``name`` (``cancel_payment_request``...), called in sync."""
        where: dict[str, Any] = {"base_url": self.base_url} if self.base_url else {}
        if not self.base_url:
            where["transport"] = httpx.MockTransport(self.fake)
        if self._loop is None:
            client = KlarnaClient(api_key, retry=retry, **where)
            self._sync.append(client)
            return getattr(client, name)
        aclient = AsyncKlarnaClient(api_key, retry=retry, **where)
        self._async.append(aclient)
        loop, bound = self._loop, getattr(aclient, name)
        return lambda **kwargs: loop.run_until_complete(bound(**kwargs))

    def args(self, token: str, **overrides: Any) -> dict[str, Any]:
        """Arguments of an authorize call for ``token`` (USD 11800), fresh key."""
        return call_args(self.fake, token, **overrides)

    def authorize(self, token: str, **overrides: Any) -> AuthorizationResponse:
        """Authorize ``token`` (USD 11800) with a fresh client and key."""
        return self.client()(**self.args(token, **overrides))

    def close(self) -> None:
        for client in self._sync:
            client.close()
        if self._loop is not None:
            for aclient in self._async:
                self._loop.run_until_complete(aclient.aclose())
            self._loop.close()
