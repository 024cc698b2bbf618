"""Benchmarks of the Klarna client against FakeKlarna.

- ``client_overhead``: 1,000 sequential authorizations through KlarnaClient
  (in process, MockTransport) against raw ``httpx.Client.post`` of the same
  request to the same fake. ratio = client time / raw time (goal <= 1.30).
- ``async_concurrency``: 500 authorizations, 50 in flight, against the fake on
  loopback with 50 ms latency, AsyncKlarnaClient against raw
  ``httpx.AsyncClient``. ratio = client throughput / raw throughput (goal >=
  0.80); ``vs_sequential`` compares with the same client one call at a time
  (goal >= 10).
- ``async_vs_fastest``: 1,000 authorizations, 50 in flight, 50 ms
  latency, AsyncKlarnaClient against raw ``aiohttp`` (the fastest Python
  async HTTP client measured here) posting the same request and reading the
  answer. ratio = client throughput / aiohttp throughput (goal >= 0.95). If
  the ``httpx-aiohttp`` package is installed, its transport under a bare
  ``httpx.AsyncClient`` is measured too, as a detail.

Tokens are issued before the clock starts; each timed run gets fresh ones.
The loopback server runs in a child process (as ``klarna-flow fake-server``
would), so its 50 threads do not compete with the client for the GIL: Klarna
is remote too.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import importlib.util
import itertools
import multiprocessing
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import aiohttp
import httpx

from benchmarks._harness import report
from klarna_flow.klarna import AsyncKlarnaClient, KlarnaClient
from klarna_flow.klarna._config import DEFAULT_LIMITS, user_agent
from klarna_flow.klarna._wire import authorization_body
from klarna_flow.testing import FakeKlarna, run_fake_server
from klarna_flow.testing._fake import DEFAULT_PARTNER_ACCOUNT

API_KEY = "bench-api-key"
REFERENCE = "acquiring-partner-transaction-reference-1234"
BODY = authorization_body(currency="USD", amount=11800, reference=REFERENCE)
USER_AGENT = user_agent()


def _tokens(fake: FakeKlarna, count: int) -> list[str]:
    return [fake.issue_session_token(amount=11800, currency="USD") for _ in range(count)]


def _args(token: str) -> dict[str, Any]:
    return {
        "partner_account_id": DEFAULT_PARTNER_ACCOUNT,
        "session_token": token,
        "currency": "USD",
        "amount": 11800,
        "reference": REFERENCE,
        "idempotency_key": str(uuid.uuid4()),
    }


def _raw_headers(token: str) -> dict[str, str]:
    """The headers KlarnaClient sends, built by hand."""
    return {
        "Authorization": f"Basic {API_KEY}",
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
        "Klarna-Network-Session-Token": token,
        "Klarna-Idempotency-Key": str(uuid.uuid4()),
    }


def _url(base_url: str) -> str:
    return f"{base_url}/v2/accounts/{DEFAULT_PARTNER_ACCOUNT}/payment/authorize"


def _timed(run: Callable[[list[str]], object], tokens: list[str]) -> float:
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        run(tokens)
        return time.perf_counter() - start
    finally:
        gc.enable()


def client_overhead(count: int = 1000, repeat: int = 9) -> str:
    """Sequential authorizations: KlarnaClient against raw httpx, in process."""
    fake = FakeKlarna(api_key=API_KEY)
    transport = httpx.MockTransport(fake)
    url = _url("https://api-global.test.klarna.com")
    with (
        KlarnaClient(API_KEY, transport=transport) as client,
        httpx.Client(transport=transport) as raw,
    ):

        def with_client(tokens: list[str]) -> None:
            for token in tokens:
                client.authorize(**_args(token))

        def with_raw(tokens: list[str]) -> None:
            for token in tokens:
                raw.post(url, headers=_raw_headers(token), content=BODY)

        client_times, raw_times = [], []
        for _ in range(repeat):  # interleaved, so drift hits both alike
            client_times.append(_timed(with_client, _tokens(fake, count)))
            raw_times.append(_timed(with_raw, _tokens(fake, count)))
    client_time, raw_time = min(client_times), min(raw_times)
    return report(
        "client_overhead",
        client_time / raw_time,
        f"client={client_time * 1e6 / count:.0f}us/call raw={raw_time * 1e6 / count:.0f}us/call "
        f"calls={count} goal<=1.15",
    )


async def _concurrently(
    call: Callable[[str], Awaitable[object]], tokens: list[str], in_flight: int
) -> float:
    gate = asyncio.Semaphore(in_flight)

    async def one(token: str) -> None:
        async with gate:
            await call(token)

    start = time.perf_counter()
    await asyncio.gather(*(one(token) for token in tokens))
    return time.perf_counter() - start


async def _client_run(base_url: str, tokens: list[str], in_flight: int) -> float:
    async with AsyncKlarnaClient(API_KEY, base_url=base_url) as client:
        return await _concurrently(
            lambda token: client.authorize(**_args(token)), tokens, in_flight
        )


async def _raw_run(base_url: str, tokens: list[str], in_flight: int) -> float:
    url = _url(base_url)
    async with httpx.AsyncClient(limits=DEFAULT_LIMITS) as raw:
        return await _concurrently(
            lambda token: raw.post(url, headers=_raw_headers(token), content=BODY),
            tokens,
            in_flight,
        )


async def _aiohttp_run(base_url: str, tokens: list[str], in_flight: int) -> float:
    url = _url(base_url)
    connector = aiohttp.TCPConnector(limit=DEFAULT_LIMITS.max_connections or 0)
    async with aiohttp.ClientSession(connector=connector) as raw:

        async def post(token: str) -> bytes:
            async with raw.post(url, headers=_raw_headers(token), data=BODY) as answer:
                return await answer.read()

        return await _concurrently(post, tokens, in_flight)


async def _httpx_aiohttp_run(base_url: str, tokens: list[str], in_flight: int) -> float:
    """Raw httpx over the ``httpx-aiohttp`` package's transport (if installed)."""
    transport = importlib.import_module("httpx_aiohttp").AiohttpTransport(limits=DEFAULT_LIMITS)
    url = _url(base_url)
    async with httpx.AsyncClient(transport=transport) as raw:
        return await _concurrently(
            lambda token: raw.post(url, headers=_raw_headers(token), content=BODY),
            tokens,
            in_flight,
        )


def _serve_in_child(queue: Any, tokens: int, latency: float) -> None:
    fake = FakeKlarna(api_key=API_KEY, latency=latency)
    issued = _tokens(fake, tokens)
    run_fake_server(fake, ready=lambda server: queue.put((server.base_url, issued)))


@contextlib.contextmanager
def _fake_in_child(tokens: int, latency: float) -> Iterator[tuple[str, list[str]]]:
    """A FakeKlarna served on loopback by a child process: (base URL, tokens)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_serve_in_child, args=(queue, tokens, latency), daemon=True)
    child.start()
    try:
        yield queue.get(timeout=120)
    finally:
        child.terminate()
        child.join()


def async_concurrency(
    count: int = 500, in_flight: int = 50, sequential: int = 40, repeat: int = 2
) -> str:
    """Throughput of AsyncKlarnaClient with 50 in flight, against raw httpx."""
    with _fake_in_child(2 * repeat * count + sequential, latency=0.05) as (base, tokens):
        fresh = iter(tokens)
        client_time = raw_time = float("inf")
        for _ in range(repeat):  # interleaved, so drift hits both alike
            batch = list(itertools.islice(fresh, count))
            client_time = min(client_time, asyncio.run(_client_run(base, batch, in_flight)))
            batch = list(itertools.islice(fresh, count))
            raw_time = min(raw_time, asyncio.run(_raw_run(base, batch, in_flight)))
        seq_time = asyncio.run(_client_run(base, list(itertools.islice(fresh, sequential)), 1))
    client_rate, raw_rate, seq_rate = count / client_time, count / raw_time, sequential / seq_time
    return report(
        "async_concurrency",
        client_rate / raw_rate,
        f"client={client_rate:.0f}/s raw={raw_rate:.0f}/s sequential={seq_rate:.1f}/s "
        f"vs_sequential={client_rate / seq_rate:.1f} calls={count} in_flight={in_flight} "
        "latency=50ms goal>=0.80",
    )


def async_vs_fastest(count: int = 1000, in_flight: int = 50, repeat: int = 4) -> str:
    """Throughput of AsyncKlarnaClient with 50 in flight, against raw aiohttp."""
    runs: dict[str, Callable[[str, list[str], int], Coroutine[Any, Any, float]]] = {
        "client": _client_run,
        "aiohttp": _aiohttp_run,
    }
    if importlib.util.find_spec("httpx_aiohttp") is not None:
        runs["httpx_aiohttp"] = _httpx_aiohttp_run
    best = dict.fromkeys(runs, float("inf"))
    with _fake_in_child(len(runs) * repeat * count, latency=0.05) as (base, tokens):
        fresh = iter(tokens)
        for _ in range(repeat):  # interleaved, so drift hits all alike
            for name, run in runs.items():
                batch = list(itertools.islice(fresh, count))
                best[name] = min(best[name], asyncio.run(run(base, batch, in_flight)))
    rates = {name: count / elapsed for name, elapsed in best.items()}
    shown = " ".join(f"{name}={rate:.0f}/s" for name, rate in rates.items())
    return report(
        "async_vs_fastest",
        rates["client"] / rates["aiohttp"],
        f"{shown} calls={count} in_flight={in_flight} latency=50ms goal>=0.95",
    )


BENCHMARKS: dict[str, Callable[[], object]] = {
    "client_overhead": client_overhead,
    "async_concurrency": async_concurrency,
    "async_vs_fastest": async_vs_fastest,
}
