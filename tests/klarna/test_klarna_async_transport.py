"""AsyncKlarnaClient's default transport (aiohttp) against the loopback fake.

Every test here talks over real sockets: the client opened with neither
``transport`` nor ``http_client``, FakeKlarna served on 127.0.0.1. The point
is what the client makes of each failure: ``may_have_acted`` is False only
when the request never left.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import aiohttp
import httpx
import pytest

from klarna_flow import (
    ConfigurationError,
    KlarnaAPIError,
    KlarnaAuthenticationError,
    KlarnaConflict,
    KlarnaNotFound,
    KlarnaRateLimited,
    KlarnaServerError,
    KlarnaTimeout,
    KlarnaTransportError,
    KlarnaValidationError,
)
from klarna_flow.klarna import AsyncKlarnaClient, AuthorizationResult, RetryPolicy
from klarna_flow.klarna._aiohttp_transport import (
    AiohttpTransport,
    default_async_transport,
    httpx_error,
)
from klarna_flow.klarna._config import DEFAULT_LIMITS, TEST_BASE_URL, user_agent
from klarna_flow.klarna._failures import transport_error
from klarna_flow.testing import FakeKlarna, FakeKlarnaServer, serve_fake

from .klarna_support import API_KEY, FAST, call_args

T = TypeVar("T")
ONCE = RetryPolicy(max_attempts=1)
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def no_proxy_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy set on the machine would (rightly) keep httpx's own transport."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def fake() -> FakeKlarna:
    return FakeKlarna()


@pytest.fixture
def server(fake: FakeKlarna) -> Iterator[FakeKlarnaServer]:
    with serve_fake(fake) as running:
        yield running


def token_for(fake: FakeKlarna) -> str:
    return fake.issue_session_token(amount=11800, currency="USD")


def authorize_once(
    base_url: str, fake: FakeKlarna, retry: RetryPolicy = FAST, **client: Any
) -> Any:
    """One authorize call with a new default client, closed afterwards."""

    async def scenario() -> Any:
        async with AsyncKlarnaClient(API_KEY, base_url=base_url, retry=retry, **client) as c:
            return await c.authorize(**call_args(fake, token_for(fake)))

    return asyncio.run(scenario())


def failure_of(call: Callable[[], object]) -> KlarnaTransportError:
    with pytest.raises(KlarnaTransportError) as caught:
        call()
    return caught.value


def keys_sent(fake: FakeKlarna) -> list[str]:
    return [request.headers["Klarna-Idempotency-Key"] for request in fake.requests]


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], bool], seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# -- the default -------------------------------------------------------------------


def test_the_default_transport_is_aiohttp(server: FakeKlarnaServer) -> None:
    client = AsyncKlarnaClient(API_KEY, base_url=server.base_url)

    assert isinstance(default_async_transport(server.base_url, DEFAULT_LIMITS), AiohttpTransport)
    assert client._send.__self__.__class__ is AiohttpTransport  # type: ignore[attr-defined]
    asyncio.run(client.aclose())


def test_a_given_transport_is_used_as_before(fake: FakeKlarna) -> None:
    async def scenario() -> AuthorizationResult:
        transport = httpx.MockTransport(fake)
        async with AsyncKlarnaClient(API_KEY, transport=transport) as client:
            return (await client.authorize(**call_args(fake, token_for(fake)))).result

    assert asyncio.run(scenario()) is AuthorizationResult.APPROVED
    assert len(fake.requests) == 1


def test_a_proxy_in_the_environment_keeps_httpx_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert default_async_transport(TEST_BASE_URL, DEFAULT_LIMITS) is None

    monkeypatch.setenv("NO_PROXY", "klarna.com")
    assert isinstance(default_async_transport(TEST_BASE_URL, DEFAULT_LIMITS), AiohttpTransport)


# -- answers -----------------------------------------------------------------------


def test_approves_and_sends_the_request_as_built(
    fake: FakeKlarna, server: FakeKlarnaServer
) -> None:
    answer = authorize_once(server.base_url, fake)

    assert answer.result is AuthorizationResult.APPROVED
    assert len(fake.transactions) == 1
    [request] = fake.requests
    assert request.headers.get_list("User-Agent") == [user_agent()]
    assert request.headers.get_list("Authorization") == [f"Basic {API_KEY}"]
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content)["request_payment_transaction"]["amount"] == 11800


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, KlarnaValidationError),
        (401, KlarnaAuthenticationError),
        (404, KlarnaNotFound),
        (409, KlarnaConflict),
        (429, KlarnaRateLimited),
        (503, KlarnaServerError),
    ],
)
def test_error_statuses_are_typed(
    fake: FakeKlarna, server: FakeKlarnaServer, status: int, error: type[KlarnaAPIError]
) -> None:
    fake.fail_next(status)

    with pytest.raises(error) as caught:
        authorize_once(server.base_url, fake, retry=ONCE)

    assert caught.value.status_code == status
    assert caught.value.may_have_acted is (status >= 500)


def test_a_retried_failure_resends_the_same_idempotency_key(
    fake: FakeKlarna, server: FakeKlarnaServer
) -> None:
    fake.fail_next(503)
    fake.drop_next(after_processing=True)

    answer = authorize_once(server.base_url, fake)

    assert answer.result is AuthorizationResult.APPROVED
    keys = keys_sent(fake)
    assert len(keys) == 3
    assert len(set(keys)) == 1
    assert len(fake.transactions) == 1


async def raw_answer(reply: bytes, request: Callable[[str], Awaitable[T]]) -> T:
    """Serve one connection that answers ``reply`` byte for byte, then hangs up."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        return await request(f"http://127.0.0.1:{port}")


def get_through_aiohttp(reply: bytes) -> httpx.Response:
    async def get(base_url: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=AiohttpTransport()) as http:
            return await http.get(f"{base_url}/anything")

    return asyncio.run(raw_answer(reply, get))


def test_a_compressed_answer_is_decoded() -> None:
    body = gzip.compress(b'{"hello": "klarna"}')
    head = f"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n"

    response = get_through_aiohttp(head.encode() + body)

    assert response.json() == {"hello": "klarna"}
    assert response.reason_phrase == "OK"


@pytest.mark.parametrize(
    "reply",
    [
        b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"cut": ',  # body cut short
        b"this is not HTTP\r\n\r\n",
        b"",  # hung up without a word
    ],
    ids=["truncated", "garbage", "nothing"],
)
def test_a_broken_answer_is_a_protocol_error_that_may_have_acted(reply: bytes) -> None:
    async def authorize(base_url: str) -> Any:
        fake = FakeKlarna()
        async with AsyncKlarnaClient(API_KEY, base_url=base_url, retry=ONCE) as client:
            return await client.authorize(**call_args(fake, token_for(fake)))

    error = failure_of(lambda: asyncio.run(raw_answer(reply, authorize)))

    assert error.may_have_acted is True
    assert isinstance(error.__cause__, httpx.RemoteProtocolError)


def test_a_streamed_request_body_is_sent_whole(fake: FakeKlarna) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"abc", b"def"):
            yield part

    async def scenario(base_url: str) -> int:
        async with httpx.AsyncClient(transport=AiohttpTransport()) as http:
            return (await http.post(f"{base_url}/anything", content=chunks())).status_code

    with serve_fake(fake) as running:
        assert asyncio.run(scenario(running.base_url)) == 404
    assert fake.requests[0].content == b"abcdef"


# -- failures: did Klarna see it? -----------------------------------------------------


def test_a_dropped_connection_may_have_acted(fake: FakeKlarna, server: FakeKlarnaServer) -> None:
    fake.drop_next(after_processing=True)

    error = failure_of(lambda: authorize_once(server.base_url, fake, retry=ONCE))

    assert not isinstance(error, KlarnaTimeout)
    assert error.may_have_acted is True
    assert isinstance(error.__cause__, httpx.RemoteProtocolError)
    assert len(fake.transactions) == 1  # it did


def test_a_drop_before_processing_may_still_have_acted(
    fake: FakeKlarna, server: FakeKlarnaServer
) -> None:
    # The client cannot tell the two drops apart: the request was sent.
    fake.drop_next()

    error = failure_of(lambda: authorize_once(server.base_url, fake, retry=ONCE))

    assert error.may_have_acted is True
    assert fake.transactions == []


def test_a_refused_connection_never_acted(fake: FakeKlarna) -> None:
    base_url = f"http://127.0.0.1:{free_port()}"

    error = failure_of(lambda: authorize_once(base_url, fake))

    assert not isinstance(error, KlarnaTimeout)
    assert error.may_have_acted is False
    assert isinstance(error.__cause__, httpx.ConnectError)


def test_a_read_timeout_may_have_acted() -> None:
    slow = FakeKlarna(latency=1.0)
    timeout = httpx.Timeout(5.0, read=0.1)

    with serve_fake(slow) as running:
        started = time.perf_counter()
        error = failure_of(
            lambda: authorize_once(running.base_url, slow, retry=ONCE, timeout=timeout)
        )
        elapsed = time.perf_counter() - started

    assert isinstance(error, KlarnaTimeout)
    assert error.may_have_acted is True
    assert isinstance(error.__cause__, httpx.ReadTimeout)
    assert elapsed < 0.9


def test_no_free_connection_in_time_never_acted() -> None:
    # One connection: the second call waits for it past the pool timeout.
    slow = FakeKlarna(latency=0.5)
    transport = AiohttpTransport(limits=httpx.Limits(max_connections=1))
    timeout = httpx.Timeout(5.0, connect=0.05, pool=0.05)

    async def scenario(base_url: str) -> list[Any]:
        async with AsyncKlarnaClient(
            API_KEY, base_url=base_url, retry=ONCE, timeout=timeout, transport=transport
        ) as client:
            calls = [client.authorize(**call_args(slow, token_for(slow))) for _ in range(2)]
            return await asyncio.gather(*calls, return_exceptions=True)

    with serve_fake(slow) as running:
        answers = asyncio.run(scenario(running.base_url))

    [approved] = [a for a in answers if not isinstance(a, BaseException)]
    [error] = [a for a in answers if isinstance(a, BaseException)]
    assert approved.result is AuthorizationResult.APPROVED
    assert isinstance(error, KlarnaTimeout)
    assert error.may_have_acted is False
    assert isinstance(error.__cause__, httpx.ConnectTimeout)
    assert len(slow.requests) == 1


def test_failures_name_no_secret(fake: FakeKlarna, server: FakeKlarnaServer) -> None:
    token = token_for(fake)
    fake.drop_next()

    async def scenario() -> None:
        async with AsyncKlarnaClient(API_KEY, base_url=server.base_url, retry=ONCE) as client:
            await client.authorize(**call_args(fake, token))

    error: BaseException | None = failure_of(lambda: asyncio.run(scenario()))
    while error is not None:
        for shown in (str(error), repr(error)):
            assert API_KEY not in shown
            assert token not in shown
        error = error.__cause__


@pytest.mark.parametrize(
    ("raised", "expected", "never_sent"),
    [
        (aiohttp.ConnectionTimeoutError(), httpx.ConnectTimeout, True),
        (aiohttp.SocketTimeoutError(), httpx.ReadTimeout, False),
        (aiohttp.ServerTimeoutError(), httpx.ReadTimeout, False),
        (TimeoutError(), httpx.ReadTimeout, False),
        (aiohttp.ServerDisconnectedError(), httpx.RemoteProtocolError, False),
        (aiohttp.ClientPayloadError("truncated"), httpx.RemoteProtocolError, False),
        (aiohttp.ClientConnectionResetError(), httpx.ReadError, False),
        (aiohttp.ClientOSError(104, "reset"), httpx.ReadError, False),
        (ConnectionResetError(104, "reset"), httpx.ReadError, False),
        (aiohttp.NonHttpUrlClientError("ftp://x"), httpx.UnsupportedProtocol, True),
    ],
)
def test_aiohttp_failures_become_httpx_ones(
    raised: Exception, expected: type[httpx.TransportError], never_sent: bool
) -> None:
    request = httpx.Request("POST", f"{TEST_BASE_URL}/v2/accounts/x/payment/authorize")

    translated = httpx_error(raised, request)

    assert type(translated) is expected
    assert translated.request is request
    assert transport_error(translated).may_have_acted is not never_sent


# -- cancellation, closing, loops -----------------------------------------------------


def test_a_cancelled_call_is_not_translated_and_the_client_goes_on() -> None:
    slow = FakeKlarna(latency=0.3)

    async def scenario(base_url: str) -> AuthorizationResult:
        async with AsyncKlarnaClient(API_KEY, base_url=base_url) as client:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.authorize(**call_args(slow, token_for(slow))), 0.05)
            return (await client.authorize(**call_args(slow, token_for(slow)))).result

    with serve_fake(slow) as running:
        assert asyncio.run(scenario(running.base_url)) is AuthorizationResult.APPROVED


def test_closing_releases_the_connections(fake: FakeKlarna, server: FakeKlarnaServer) -> None:
    client = AsyncKlarnaClient(API_KEY, base_url=server.base_url)

    async def scenario() -> None:
        await client.authorize(**call_args(fake, token_for(fake)))
        assert len(server._server._open) == 1
        await client.aclose()
        await client.aclose()  # twice is harmless
        with pytest.raises(ConfigurationError, match="closed"):
            await client.authorize(**call_args(fake, token_for(fake)))

    asyncio.run(scenario())

    assert client.is_closed
    assert wait_until(lambda: not server._server._open), "the connection stayed open"
    assert len(fake.requests) == 1


def test_closing_an_unused_client_opens_nothing() -> None:
    async def scenario() -> bool:
        client = AsyncKlarnaClient(API_KEY)
        await client.aclose()
        return client.is_closed

    assert asyncio.run(scenario())


def test_a_client_belongs_to_one_event_loop(fake: FakeKlarna, server: FakeKlarnaServer) -> None:
    client = AsyncKlarnaClient(API_KEY, base_url=server.base_url)
    first = asyncio.new_event_loop()
    try:
        first.run_until_complete(client.authorize(**call_args(fake, token_for(fake))))
        with pytest.raises(ConfigurationError, match="event loop"):
            asyncio.run(client.authorize(**call_args(fake, token_for(fake))))
    finally:
        first.run_until_complete(client.aclose())
        first.close()
    assert len(fake.requests) == 1


# -- concurrency ------------------------------------------------------------------


class _InFlight(FakeKlarna):
    """FakeKlarna counting the requests it is answering at once."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._count_lock = threading.Lock()
        self.now_in_flight = 0
        self.peak_in_flight = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._count_lock:
            self.now_in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.now_in_flight)
        try:
            return super().__call__(request)
        finally:
            with self._count_lock:
                self.now_in_flight -= 1


def test_fifty_concurrent_calls_share_kept_alive_connections() -> None:
    slow = _InFlight(latency=0.2)

    async def bursts(base_url: str, server: FakeKlarnaServer) -> tuple[list[Any], int, int]:
        async with AsyncKlarnaClient(API_KEY, base_url=base_url) as client:

            async def burst() -> list[Any]:
                calls = (client.authorize(**call_args(slow, token_for(slow))) for _ in range(50))
                return list(await asyncio.gather(*calls))

            first = await burst()
            peak = slow.peak_in_flight
            second = await burst()
            return [a.result for a in first + second], peak, len(server._server._open)

    with serve_fake(slow) as running:
        results, peak, connections = asyncio.run(bursts(running.base_url, running))

    assert results == [AuthorizationResult.APPROVED] * 100
    assert len(slow.transactions) == 100
    # Each answer waits 0.2 s at the server: fifty sent in turn would never overlap.
    assert peak >= 25, f"requests must wait side by side, not in turn (peak {peak})"
    assert connections <= 50, "the second burst must reuse the first one's connections"
