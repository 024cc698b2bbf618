"""``klarna_flow.asgi.notification_app``: Klarna's webhook as a plain ASGI application.

Klarna's side is FakeKlarna: it signs the notifications that are posted. The
application is driven three ways: through ``httpx.ASGITransport`` (alone and
mounted in Starlette), by hand with ASGI messages where a client cannot say it
(a disconnect mid-body, lifespan), and under uvicorn on loopback.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from klarna_flow import Flow, NotificationResult, Payments, PaymentState
from klarna_flow.asgi import MAX_BODY_BYTES, NotificationApp, notification_app
from klarna_flow.testing import FakeKlarna, SignedNotification

T = TypeVar("T")
S = PaymentState
COMPLETED = "payment.request.state-change.completed"
SECRET_MESSAGE = "password=hunter2-do-not-show"
BASE = "http://klarna-flow.test"


@pytest.fixture
def fake() -> FakeKlarna:
    return FakeKlarna()


@pytest.fixture
def payments(fake: FakeKlarna) -> Iterator[Payments]:
    with Payments(
        partner_account_id=fake.partner_account_id, signing_keys=fake.signing_keys
    ) as payments:
        yield payments


def open_payment(fake: FakeKlarna, payments: Payments, amount: int = 2500) -> tuple[str, Any]:
    """A payment waiting for its customer: (payment request id, payment id)."""
    request_id = fake.create_payment_request(amount=amount, currency="EUR")
    payment_id = payments.create(
        flow=Flow.AUTHORIZATION,
        amount=amount,
        currency="EUR",
        reference=f"order-{amount}",
        payment_request_id=request_id,
    )
    return request_id, payment_id


def through(app: Any, scenario: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    """Run ``scenario`` with a client speaking to ``app`` through ASGITransport."""

    async def main() -> T:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            return await scenario(http)

    return asyncio.run(main())


def post(app: Any, notification: SignedNotification, path: str = "/") -> httpx.Response:
    async def scenario(http: httpx.AsyncClient) -> httpx.Response:
        return await http.post(path, content=notification.body, headers=notification.headers)

    return through(app, scenario)


def body(response: httpx.Response) -> dict[str, Any]:
    decoded: dict[str, Any] = response.json()
    return decoded


def padded(fake: FakeKlarna, request_id: str, size: int) -> SignedNotification:
    """A signed completion whose body is exactly ``size`` bytes (an unknown field pads it)."""

    def build(padding: int) -> SignedNotification:
        payload = {
            "payment_request_id": request_id,
            "klarna_network_session_token": "krn:payment:eu1:klarna-network-session-token:pad",
            "padding": "x" * padding,
        }
        return fake.notification(COMPLETED, payload)

    base = len(build(0).body)
    notification = build(size - base)
    assert len(notification.body) == size
    return notification


# -- through ASGITransport -----------------------------------------------------------


def test_a_signed_completion_is_applied(fake: FakeKlarna, payments: Payments) -> None:
    request_id, payment_id = open_payment(fake, payments)
    done = fake.complete_payment_request(request_id).notification
    app = notification_app(payments)

    response = post(app, done)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert body(response) == {"outcome": "applied", "event_id": done.event_id}
    assert payments.get(payment_id).state is S.COMPLETED
    again = post(app, done)
    assert (again.status_code, body(again)) == (
        200,
        {"outcome": "duplicate", "event_id": done.event_id},
    )


def test_headers_are_found_in_any_case(fake: FakeKlarna, payments: Payments) -> None:
    request_id, payment_id = open_payment(fake, payments)
    done = fake.complete_payment_request(request_id).notification
    shouted = {name.upper(): value for name, value in done.headers.items()}

    async def scenario(http: httpx.AsyncClient) -> httpx.Response:
        return await http.post("/", content=done.body, headers=shouted)

    assert through(notification_app(payments), scenario).status_code == 200
    assert payments.get(payment_id).state is S.COMPLETED


def test_a_bad_signature_is_answered_400(fake: FakeKlarna, payments: Payments) -> None:
    request_id, payment_id = open_payment(fake, payments)
    done = fake.complete_payment_request(request_id).notification
    forged = SignedNotification(
        body=done.body, headers={**done.headers, "Klarna-Signature": "0" * 64}
    )

    response = post(notification_app(payments), forged)

    assert response.status_code == 400
    assert body(response)["outcome"] == "rejected"
    assert body(response)["detail"] == "signature does not match the body"
    assert payments.get(payment_id).state is S.CREATED


def test_an_unknown_payment_request_is_answered_404(fake: FakeKlarna, payments: Payments) -> None:
    request_id = fake.create_payment_request(amount=100, currency="EUR")
    done = fake.complete_payment_request(request_id).notification

    response = post(notification_app(payments), done)

    assert (response.status_code, body(response)["outcome"]) == (404, "unknown_payment")


def test_a_body_of_exactly_the_limit_is_applied(fake: FakeKlarna, payments: Payments) -> None:
    request_id, payment_id = open_payment(fake, payments)

    response = post(notification_app(payments), padded(fake, request_id, MAX_BODY_BYTES))

    assert (response.status_code, body(response)["outcome"]) == (200, "applied")
    assert payments.get(payment_id).state is S.COMPLETED


def test_an_announced_oversize_body_is_answered_413(fake: FakeKlarna, payments: Payments) -> None:
    request_id, payment_id = open_payment(fake, payments)
    oversize = padded(fake, request_id, MAX_BODY_BYTES + 1)

    response = post(notification_app(payments), oversize)

    assert response.status_code == 413
    assert body(response) == {
        "outcome": "rejected",
        "detail": f"body of {MAX_BODY_BYTES + 1} bytes exceeds {MAX_BODY_BYTES}",
    }
    assert payments.get(payment_id).state is S.CREATED


def test_a_streamed_oversize_body_is_cut_off_at_the_limit(
    fake: FakeKlarna, payments: Payments
) -> None:
    """No Content-Length: the reading stops at the first chunk past the limit."""
    request_id, payment_id = open_payment(fake, payments)
    oversize = padded(fake, request_id, 4 * MAX_BODY_BYTES)
    chunk = 64 * 1024
    pulled: list[int] = []

    async def stream() -> AsyncIterator[bytes]:
        for start in range(0, len(oversize.body), chunk):
            pulled.append(start)
            yield oversize.body[start : start + chunk]

    async def scenario(http: httpx.AsyncClient) -> httpx.Response:
        return await http.post("/", content=stream(), headers=oversize.headers)

    response = through(notification_app(payments), scenario)

    assert response.status_code == 413
    assert body(response)["detail"] == f"body exceeds {MAX_BODY_BYTES} bytes"
    assert len(pulled) == MAX_BODY_BYTES // chunk + 1  # 16 chunks fill the limit; one more
    assert payments.get(payment_id).state is S.CREATED


def test_health_answers_200(payments: Payments) -> None:
    async def scenario(http: httpx.AsyncClient) -> list[httpx.Response]:
        return [await http.get("/health"), await http.head("/health")]

    get, head = through(notification_app(payments), scenario)

    assert (get.status_code, body(get)) == (200, {"status": "ok"})
    assert (head.status_code, head.content) == (200, b"")


def test_other_methods_are_answered_405_with_allow(payments: Payments) -> None:
    async def scenario(http: httpx.AsyncClient) -> list[httpx.Response]:
        return [await http.get("/"), await http.put("/"), await http.post("/health")]

    get_root, put_root, post_health = through(notification_app(payments), scenario)

    assert (get_root.status_code, get_root.headers["allow"]) == (405, "POST")
    assert (put_root.status_code, put_root.headers["allow"]) == (405, "POST")
    assert (post_health.status_code, post_health.headers["allow"]) == (405, "GET, HEAD")


def test_other_paths_are_answered_404(payments: Payments) -> None:
    async def scenario(http: httpx.AsyncClient) -> list[httpx.Response]:
        return [await http.post("/webhooks"), await http.get("/healthz")]

    assert [r.status_code for r in through(notification_app(payments), scenario)] == [404, 404]


def test_mounted_under_a_prefix_in_starlette(fake: FakeKlarna, payments: Payments) -> None:
    request_id, payment_id = open_payment(fake, payments)
    done = fake.complete_payment_request(request_id).notification
    app = Starlette(routes=[Mount("/hooks/klarna", app=notification_app(payments))])

    async def scenario(http: httpx.AsyncClient) -> list[httpx.Response]:
        return [
            await http.post("/hooks/klarna/", content=done.body, headers=done.headers),
            await http.get("/hooks/klarna/health"),
            await http.post("/hooks/klarna/other"),
            await http.get("/hooks/klarna/"),
        ]

    applied, health, elsewhere, wrong_method = through(app, scenario)

    assert (applied.status_code, body(applied)["outcome"]) == (200, "applied")
    assert payments.get(payment_id).state is S.COMPLETED
    assert health.status_code == 200
    assert elsewhere.status_code == 404
    assert wrong_method.status_code == 405


class Failing:
    """A notification handler that fails unexpectedly, with a secret in its message."""

    async def handle_notification_async(
        self, body: bytes, headers: Sequence[tuple[str, str]]
    ) -> NotificationResult:
        raise RuntimeError(SECRET_MESSAGE)


def test_an_unexpected_failure_is_answered_503_without_leaking(
    fake: FakeKlarna, caplog: pytest.LogCaptureFixture
) -> None:
    notification = fake.notification(COMPLETED, {"payment_request_id": "krn:x"})
    caplog.set_level(logging.INFO, logger="klarna_flow.asgi")

    response = post(notification_app(Failing()), notification)

    assert response.status_code == 503
    assert body(response) == {"outcome": "error", "detail": "internal error; retry"}
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert "RuntimeError" in record.getMessage()
    assert "handle_notification_async" in record.getMessage()  # the stack is logged
    assert SECRET_MESSAGE not in caplog.text
    assert SECRET_MESSAGE not in response.text


def test_payments_without_signing_keys_answer_503(
    fake: FakeKlarna, caplog: pytest.LogCaptureFixture
) -> None:
    notification = fake.notification(COMPLETED, {"payment_request_id": "krn:x"})
    caplog.set_level(logging.INFO, logger="klarna_flow.asgi")

    with Payments(partner_account_id=fake.partner_account_id) as keyless:
        response = post(notification_app(keyless), notification)

    assert response.status_code == 503
    assert "Traceback" not in response.text
    assert "ConfigurationError: Payments was given no notification signing keys" in caplog.text


def test_no_body_or_signature_is_logged(
    fake: FakeKlarna, payments: Payments, caplog: pytest.LogCaptureFixture
) -> None:
    request_id, _ = open_payment(fake, payments)
    done = fake.complete_payment_request(request_id)
    forged = SignedNotification(
        body=done.notification.body,
        headers={**done.notification.headers, "Klarna-Signature": "ab" * 32},
    )
    caplog.set_level(logging.DEBUG, logger="klarna_flow.asgi")
    app = notification_app(payments)

    assert post(app, forged).status_code == 400
    assert post(app, done.notification).status_code == 200

    assert done.notification.event_id in caplog.text  # each answer is logged...
    for secret in (
        done.notification.headers["Klarna-Signature"],
        "ab" * 32,
        done.session_token or "no token",
        done.notification.body.decode(),
    ):
        assert secret not in caplog.text  # ...without body or signature


# -- by hand: what an HTTP client cannot say ---------------------------------------------


class Peer:
    """The server's side of one ASGI call: scripted messages in, sent messages kept."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.incoming = messages
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        if not self.incoming:
            await asyncio.sleep(3600)  # a real server would never answer
        return self.incoming.pop(0)

    async def send(self, message: Any) -> None:
        self.sent.append(dict(message))


def run_app(app: NotificationApp, scope: dict[str, Any], peer: Peer) -> None:
    asyncio.run(asyncio.wait_for(app(scope, peer.receive, peer.send), timeout=10))


def http_scope(notification: SignedNotification) -> dict[str, Any]:
    headers = [
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in notification.headers.items()
    ]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
    }


def test_a_disconnect_mid_body_applies_nothing(fake: FakeKlarna, payments: Payments) -> None:
    request_id, payment_id = open_payment(fake, payments)
    done = fake.complete_payment_request(request_id).notification
    half = len(done.body) // 2
    peer = Peer(
        [
            {"type": "http.request", "body": done.body[:half], "more_body": True},
            {"type": "http.disconnect"},
        ]
    )

    run_app(notification_app(payments), http_scope(done), peer)

    assert peer.sent == []
    assert payments.get(payment_id).state is S.CREATED
    assert payments.notification_counts == {}


def test_a_body_in_many_messages_is_joined(fake: FakeKlarna, payments: Payments) -> None:
    request_id, payment_id = open_payment(fake, payments)
    done = fake.complete_payment_request(request_id).notification
    pieces = [done.body[i : i + 7] for i in range(0, len(done.body), 7)]
    messages = [{"type": "http.request", "body": p, "more_body": True} for p in pieces]
    peer = Peer([*messages, {"type": "http.request", "body": b"", "more_body": False}])

    run_app(notification_app(payments), http_scope(done), peer)

    assert peer.sent[0]["status"] == 200
    assert payments.get(payment_id).state is S.COMPLETED


def test_the_root_path_is_where_it_is_mounted(fake: FakeKlarna, payments: Payments) -> None:
    scope = {**http_scope(fake.notification(COMPLETED, {})), "method": "GET"}
    answers = []
    for root_path, path in [("/hooks", "/hooks/health"), ("/hooks", "/hooksy/health"), ("", "/")]:
        peer = Peer([{"type": "http.request", "body": b"", "more_body": False}])
        run_app(notification_app(payments), {**scope, "root_path": root_path, "path": path}, peer)
        answers.append(peer.sent[0]["status"])

    assert answers == [200, 404, 405]


def test_header_bytes_are_read_as_latin_1() -> None:
    """ASGI hands header bytes as sent; HTTP's historical charset is latin-1."""
    fake = FakeKlarna(signing_keys={"clé-1": b"a signing secret"})
    with Payments(
        partner_account_id=fake.partner_account_id, signing_keys=fake.signing_keys
    ) as payments:
        request_id, payment_id = open_payment(fake, payments)
        done = fake.complete_payment_request(request_id).notification
        scope = http_scope(done)
        assert (b"klarna-signing-key-id", b"cl\xe9-1") in scope["headers"]
        peer = Peer([{"type": "http.request", "body": done.body, "more_body": False}])

        run_app(notification_app(payments), scope, peer)

        assert peer.sent[0]["status"] == 200
        assert payments.get(payment_id).state is S.COMPLETED


def test_a_websocket_is_turned_away(payments: Payments) -> None:
    peer = Peer([{"type": "websocket.connect"}])
    scope = {"type": "websocket", "asgi": {"version": "3.0"}, "path": "/", "headers": []}

    run_app(notification_app(payments), scope, peer)

    assert peer.sent == [{"type": "websocket.close", "code": 1008}]


def test_lifespan_is_acknowledged(payments: Payments) -> None:
    peer = Peer([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    run_app(notification_app(payments), {"type": "lifespan", "asgi": {"version": "3.0"}}, peer)

    assert peer.sent == [
        {"type": "lifespan.startup.complete"},
        {"type": "lifespan.shutdown.complete"},
    ]


# -- under uvicorn, on loopback ----------------------------------------------------------


@pytest.fixture
def served(payments: Payments) -> Iterator[str]:
    """The application under uvicorn on a free loopback port: its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        notification_app(payments), lifespan="on", log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped while starting"
        assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_under_uvicorn_a_completion_is_applied(
    fake: FakeKlarna, payments: Payments, served: str
) -> None:
    request_id, payment_id = open_payment(fake, payments)
    done = fake.complete_payment_request(request_id).notification
    forged = {**done.headers, "Klarna-Signature": "0" * 64}

    with httpx.Client(base_url=served, timeout=10) as http:
        rejected = http.post("/", content=done.body, headers=forged)
        applied = http.post("/", content=done.body, headers=done.headers)
        health = http.get("/health")
        wrong = http.get("/")

    assert (rejected.status_code, body(rejected)["outcome"]) == (400, "rejected")
    assert body(applied) == {"outcome": "applied", "event_id": done.event_id}
    assert payments.get(payment_id).state is S.COMPLETED
    assert (health.status_code, body(health)) == (200, {"status": "ok"})
    assert (wrong.status_code, wrong.headers["allow"]) == (405, "POST")


def test_under_uvicorn_an_oversize_body_is_answered_413(
    fake: FakeKlarna, payments: Payments, served: str
) -> None:
    request_id, payment_id = open_payment(fake, payments)
    oversize = padded(fake, request_id, MAX_BODY_BYTES + 1)

    def chunks() -> Iterator[bytes]:
        yield oversize.body  # a generator: sent chunked, with no Content-Length

    with httpx.Client(base_url=served, timeout=10) as http:
        announced = http.post("/", content=oversize.body, headers=oversize.headers)
        streamed = http.post("/", content=chunks(), headers=oversize.headers)

    assert (announced.status_code, body(announced)["outcome"]) == (413, "rejected")
    assert (streamed.status_code, body(streamed)["detail"]) == (
        413,
        f"body exceeds {MAX_BODY_BYTES} bytes",
    )
    assert payments.get(payment_id).state is S.CREATED
