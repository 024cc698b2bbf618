"""The loopback server in front of FakeKlarna."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time

import httpx
import pytest

from klarna_flow import ConfigurationError
from klarna_flow.klarna import AsyncKlarnaClient, AuthorizationResult
from klarna_flow.testing import FakeKlarna, FakeKlarnaServer, run_fake_server, serve_fake

from .klarna_support import API_KEY, call_args

# The server must refuse these; nothing is ever bound to them.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 (the very address being refused)


@pytest.mark.parametrize("host", [ALL_INTERFACES, "10.1.2.3", "example.com", ""])
def test_only_loopback_hosts(host: str) -> None:
    with pytest.raises(ConfigurationError):
        FakeKlarnaServer(FakeKlarna(), host=host)


def test_fifty_concurrent_authorizations() -> None:
    fake = FakeKlarna(latency=0.05)
    tokens = [fake.issue_session_token(amount=11800, currency="USD") for _ in range(50)]

    async def burst(base_url: str) -> tuple[list[AuthorizationResult], float]:
        async with AsyncKlarnaClient(API_KEY, base_url=base_url) as client:
            started = time.perf_counter()
            answers = await asyncio.gather(
                *(client.authorize(**call_args(fake, token)) for token in tokens)
            )
            return [a.result for a in answers], time.perf_counter() - started

    with serve_fake(fake) as server:
        results, elapsed = asyncio.run(burst(server.base_url))

    assert results == [AuthorizationResult.APPROVED] * 50
    assert len(fake.transactions) == 50
    assert elapsed < 50 * 0.05 / 3, "requests must wait side by side, not in turn"


def test_keep_alive_reuses_one_connection(fake: FakeKlarna) -> None:
    with serve_fake(fake) as server, httpx.Client(base_url=server.base_url) as http:
        for _ in range(5):
            assert http.get("/anything").status_code == 404
        open_connections = len(server._server._open)

    assert open_connections == 1


def test_a_dropped_answer_closes_the_connection(fake: FakeKlarna) -> None:
    fake.drop_next()
    path = f"/v2/accounts/{fake.partner_account_id}/payment/authorize"

    with serve_fake(fake) as server, httpx.Client(base_url=server.base_url) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            http.post(path, content=b"{}")
        assert http.post(path, content=b"{}").status_code == 401  # next one answered


def test_chunked_bodies_are_read(fake: FakeKlarna, token: str) -> None:
    args = call_args(fake, token)
    body = {
        "currency": "USD",
        "request_payment_transaction": {"amount": 11800, "payment_transaction_reference": "r"},
    }
    head = {
        "Authorization": f"Basic {API_KEY}",
        "Content-Type": "application/json",
        "Klarna-Network-Session-Token": token,
        "Klarna-Idempotency-Key": args["idempotency_key"],
    }
    path = f"/v2/accounts/{fake.partner_account_id}/payment/authorize"

    with serve_fake(fake) as server, httpx.Client(base_url=server.base_url) as http:
        response = http.post(path, headers=head, content=iter([json.dumps(body).encode()]))

    assert response.status_code == 200
    assert fake.requests[0].headers["Transfer-Encoding"] == "chunked"


def test_a_failing_handler_answers_500() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("bug")

    with serve_fake(broken) as server, httpx.Client(base_url=server.base_url) as http:
        assert http.get("/").status_code == 500


def test_run_fake_server_serves_until_stopped(fake: FakeKlarna) -> None:
    ready: queue.Queue[FakeKlarnaServer] = queue.Queue()
    thread = threading.Thread(target=run_fake_server, args=(fake,), kwargs={"ready": ready.put})
    thread.start()
    server = ready.get(timeout=5)
    try:
        with httpx.Client(base_url=server.base_url) as http:
            assert http.get("/").status_code == 404
    finally:
        server.stop()
        thread.join(timeout=5)

    assert not thread.is_alive()
    assert server.base_url.startswith("http://127.0.0.1:")


def test_ipv6_loopback(fake: FakeKlarna) -> None:
    try:
        server = FakeKlarnaServer(fake, host="::1")
    except ConfigurationError:
        pytest.skip("no IPv6 loopback on this machine")
    with server, httpx.Client(base_url=server.base_url) as http:
        assert server.base_url.startswith("http://[::1]:")
        assert http.get("/").status_code == 404
