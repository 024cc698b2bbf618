"""Klarna's notification endpoint as a framework-free ASGI 3 application.

:func:`notification_app` wraps
:meth:`~klarna_flow.Payments.handle_notification_async` in a plain async
callable that any ASGI server (uvicorn, hypercorn, granian...) serves, or
that any ASGI framework (Starlette, FastAPI...) mounts at a path of its
choice. Its routes are relative to where it is mounted (the scope's
``root_path``):

- ``POST /``: the raw body and headers go to ``handle_notification_async``;
  the answer is the status it returns, with ``{"outcome", "event_id"}`` as
  JSON (and ``detail`` when the notification is not acknowledged);
- ``GET /health`` (or ``HEAD``): 200 ``{"status": "ok"}``;
- any other method: 405 with an ``Allow`` header; any other path: 404.

A body over :data:`MAX_BODY_BYTES` (1 MiB, the limit the handler enforces)
is answered 413 as soon as ``Content-Length`` announces it or, while the body
is read, as soon as it passes the limit: the rest is never read. When the
client disconnects before its body is complete, nothing is applied and
nothing is answered. An unexpected exception is answered 503 (Klarna
retries) with no traceback, and logged on the ``klarna_flow.asgi`` logger
with its stack but never a body, a header value or a foreign exception's
message. Lifespan events are acknowledged: the caller owns ``payments`` and
closes it.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, Protocol, TypeAlias

from klarna_flow import KlarnaFlowError, NotificationResult
from klarna_flow.klarna._webhooks import MAX_BODY_BYTES

__all__ = ["MAX_BODY_BYTES", "NotificationApp", "NotificationHandling", "notification_app"]

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
RawHeaders: TypeAlias = Sequence[tuple[bytes, bytes]]

logger = logging.getLogger("klarna_flow.asgi")

_HEALTH = "/health"
_NOTIFY_ALLOW = "POST"
_HEALTH_ALLOW = "GET, HEAD"


class NotificationHandling(Protocol):
    """What the endpoint needs of :class:`~klarna_flow.Payments`: one coroutine."""

    async def handle_notification_async(
        self, body: bytes, headers: Sequence[tuple[str, str]]
    ) -> NotificationResult: ...


class _Refused(Exception):
    """The request is answered with ``status`` before the handler sees it."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class _Disconnected(Exception):
    """The client went away before its body was complete."""


def notification_app(payments: NotificationHandling) -> NotificationApp:
    """The ASGI 3 application that receives Klarna's notifications for ``payments``.

    Serve it alone (``uvicorn module:app``) or mount it in a framework:
    Klarna's webhook URL is then the mount's root, and ``<mount>/health`` the
    health check. ``payments`` is usually a :class:`~klarna_flow.Payments`
    built with ``signing_keys``; it is not closed by the application.
    """
    return NotificationApp(payments)


class NotificationApp:
    """The ASGI application :func:`notification_app` returns."""

    def __init__(self, payments: NotificationHandling) -> None:
        self._payments = payments

    def __repr__(self) -> str:
        return f"<NotificationApp for {type(self._payments).__name__}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)
        elif kind == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})
        else:
            msg = f"unsupported ASGI scope type {kind!r}"
            raise ValueError(msg)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = _route_path(scope), scope["method"]
        if path in ("", "/"):
            if method != "POST":
                await _respond(send, 405, {"detail": "method not allowed"}, allow=_NOTIFY_ALLOW)
                return
            await self._notification(scope, receive, send)
        elif path == _HEALTH:
            if method not in ("GET", "HEAD"):
                await _respond(send, 405, {"detail": "method not allowed"}, allow=_HEALTH_ALLOW)
                return
            await _respond(send, 200, {"status": "ok"}, head=method == "HEAD")
        else:
            await _respond(send, 404, {"detail": "not found"})

    async def _notification(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw: RawHeaders = scope.get("headers", [])
        try:
            body = await _read_body(raw, receive)
        except _Refused as refused:
            logger.warning("notification refused: %s", refused.detail)
            await _respond(send, refused.status, {"outcome": "rejected", "detail": refused.detail})
            return
        except _Disconnected:
            logger.info("notification abandoned: the client disconnected before its body ended")
            return
        headers = [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in raw]
        try:
            result = await self._payments.handle_notification_async(body, headers)
        except Exception as error:  # noqa: BLE001 (answered 503 so Klarna retries; logged)
            _log_failure(error)
            await _respond(send, 503, {"outcome": "error", "detail": "internal error; retry"})
            return
        _log_result(result)
        await _respond(send, result.status_code, _result_json(result))


def _route_path(scope: Scope) -> str:
    """The request's path relative to where the application is mounted."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :]
    return path


async def _read_body(headers: RawHeaders, receive: Receive) -> bytes:
    """The whole request body, read no further than :data:`MAX_BODY_BYTES`.

    Raises:
        _Refused: 413, the body is (announced) over the limit.
        _Disconnected: the client left before the body ended.
    """
    announced = _content_length(headers)
    if announced is not None and announced > MAX_BODY_BYTES:
        raise _Refused(413, f"body of {announced} bytes exceeds {MAX_BODY_BYTES}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _Refused(413, f"body exceeds {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _content_length(headers: RawHeaders) -> int | None:
    """The announced ``Content-Length``, or None when absent or not a number."""
    for name, value in headers:
        if name.lower() == b"content-length":
            text = value.strip()
            return int(text) if text.isdigit() else None
    return None


def _result_json(result: NotificationResult) -> dict[str, Any]:
    """The answer's body: what was done (``detail`` is written without secrets)."""
    body: dict[str, Any] = {"outcome": str(result.outcome), "event_id": result.event_id}
    if not result.acknowledged and result.detail:
        body["detail"] = result.detail
    return body


def _log_result(result: NotificationResult) -> None:
    level = logging.INFO if result.acknowledged else logging.WARNING
    logger.log(
        level,
        "notification %s: %s (%s) %s",
        result.event_id,
        result.outcome,
        result.status_code,
        result.detail,
    )


def _log_failure(error: Exception) -> None:
    """Log an unexpected failure: its type and stack, and its message only when it is
    klarna_flow's (those never carry a secret; a foreign one might)."""
    message = str(error) if isinstance(error, KlarnaFlowError) else "(message withheld)"
    stack = "".join(traceback.format_tb(error.__traceback__))
    logger.error(
        "notification endpoint failed, answered 503: %s: %s\n%s",
        type(error).__name__,
        message,
        stack,
    )


async def _respond(
    send: Send, status: int, body: dict[str, Any], *, allow: str = "", head: bool = False
) -> None:
    content = json.dumps(body, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
    ]
    if allow:
        headers.append((b"allow", allow.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else content})


async def _lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge startup and shutdown: the caller owns ``payments``."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
