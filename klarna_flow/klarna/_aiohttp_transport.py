"""An :class:`httpx.AsyncBaseTransport` that sends through aiohttp.

:class:`~klarna_flow.klarna.AsyncKlarnaClient` keeps httpx's API (requests,
responses, timeouts, errors) but, unless given a transport or a client of its
own, sends through this transport: httpcore's async pool spends time that
grows with the square of its open connections on every request
(encode/httpx#3215), aiohttp's connector does not.

What httpx would raise, this transport raises, so the client's reading of a
failure stays right: ``ConnectError``/``ConnectTimeout`` only when the request
never left (refused, DNS, TLS, no connection within the connect or pool
timeout); ``ReadTimeout``, ``RemoteProtocolError`` or ``ReadError`` once it
may have reached Klarna.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import urllib.request

import aiohttp
import httpx
from yarl import URL

from klarna_flow._errors import ConfigurationError
from klarna_flow.klarna._config import DEFAULT_LIMITS

__all__ = ["AiohttpTransport", "default_async_transport", "httpx_error"]

# httpx's Limits allow "no expiry"; aiohttp's connector wants a number.
_LONGEST_KEEPALIVE = 3600.0

TimeoutKey = tuple[float | None, float | None, float | None]

# aiohttp failures that happen before the request leaves the machine: no
# connection could be had (refused, DNS, TLS, certificate, proxy, fingerprint).
_NOT_CONNECTED = (aiohttp.ClientConnectorError, aiohttp.ServerFingerprintMismatch)
# The answer was lost or malformed after the request was written.
_BROKEN_ANSWER = (
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientPayloadError,
    aiohttp.ClientResponseError,
)
_BAD_URL = (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)


def _headers(request: httpx.Request) -> list[tuple[str, str]]:
    """The request's headers, less ``Transfer-Encoding``: the body goes out read whole."""
    return [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in request.headers.raw
        if name.lower() != b"transfer-encoding"
    ]


@functools.lru_cache(maxsize=256)
def _yarl_url(url: str) -> URL:
    """httpx's URL, already percent-encoded, as aiohttp's (a client calls few URLs)."""
    return URL(url, encoded=True)


def httpx_error(exc: Exception, request: httpx.Request) -> httpx.TransportError:
    """The httpx exception httpx's own transport would raise for ``exc``.

    Order matters: aiohttp's timeouts are also ``OSError``\\ s, and a
    connection timeout is also a server timeout. Anything not known to have
    happened before sending is read as "may have reached Klarna". The message
    names the failure only (no URL, no header).
    """
    message = f"aiohttp {type(exc).__name__}"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        # No connection within the connect timeout (or no pooled one free).
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(exc, TimeoutError):
        # sock_read expired (SocketTimeoutError), or any other timeout.
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, _NOT_CONNECTED):
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, _BAD_URL):
        return httpx.UnsupportedProtocol(message, request=request)
    if isinstance(exc, _BROKEN_ANSWER):
        return httpx.RemoteProtocolError(message, request=request)
    # A reset or another OS error on an open connection, mid-exchange.
    return httpx.ReadError(message, request=request)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx requests through one :class:`aiohttp.ClientSession`.

    The session (a keep-alive :class:`aiohttp.TCPConnector` holding at most
    ``limits.max_connections``) is opened on the first request, inside the
    running event loop, and closed by :meth:`aclose`. Bodies are read whole
    (Klarna answers with small JSON objects): the response comes back read,
    decoded by httpx as its ``Content-Encoding`` says. httpx's connect, read
    and pool timeouts apply; aiohttp has no write timeout, so none is.
    Redirects are not followed and cookies are not kept.

    Args:
        limits: the pool size and keep-alive expiry (``max_keepalive_connections``
            is not enforced: every pooled connection stays alive).
        verify: as httpx's ``verify``: True (certifi's CAs), False, or an
            :class:`ssl.SSLContext`.
    """

    def __init__(
        self, *, limits: httpx.Limits = DEFAULT_LIMITS, verify: ssl.SSLContext | bool = True
    ) -> None:
        self._limits = limits
        self._verify = verify
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._timeouts: dict[TimeoutKey, aiohttp.ClientTimeout] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session_in_this_loop()
        body = await request.aread()
        try:
            async with session.request(
                request.method,
                _yarl_url(str(request.url)),
                headers=_headers(request),
                data=body or None,
                allow_redirects=False,
                auto_decompress=False,
                timeout=self._client_timeout(request.extensions.get("timeout")),
            ) as answer:
                content = await answer.read()
        except (aiohttp.ClientError, OSError) as exc:  # OSError covers TimeoutError
            raise httpx_error(exc, request) from exc
        return httpx.Response(
            answer.status,
            headers=answer.raw_headers,
            content=content,
            request=request,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (answer.reason or "").encode("ascii", "replace"),
            },
        )

    def _session_in_this_loop(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ConfigurationError("this AiohttpTransport is closed")
        loop = asyncio.get_running_loop()
        if self._session is None:
            self._session = self._open_session()
            self._loop = loop
        elif self._loop is not loop:
            # aiohttp's connections belong to the loop that opened them
            # (httpx's fail there too, with "Event loop is closed").
            raise ConfigurationError(
                "this client's connections belong to another event loop: "
                "use one AsyncKlarnaClient per event loop"
            )
        return self._session

    def _open_session(self) -> aiohttp.ClientSession:
        expiry = self._limits.keepalive_expiry
        connector = aiohttp.TCPConnector(
            limit=self._limits.max_connections or 0,  # 0: no limit, as httpx's None
            limit_per_host=0,
            keepalive_timeout=_LONGEST_KEEPALIVE if expiry is None else expiry,
            ssl=self._ssl_context(),
        )
        # No cookie jar: under an httpx client, httpx keeps the cookies (not aiohttp too).
        return aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
        )

    def _ssl_context(self) -> ssl.SSLContext | bool:
        if self._verify is False:
            return False
        if self._verify is True:
            return httpx.create_ssl_context()  # certifi's CAs, as httpx
        return self._verify

    def _client_timeout(self, timeout: dict[str, float | None] | None) -> aiohttp.ClientTimeout:
        """aiohttp's timeout for httpx's ``{connect, read, write, pool}``.

        aiohttp's ``connect`` covers waiting for a pooled connection and
        opening one: it gets httpx's pool and connect timeouts together, and
        ``sock_connect`` the connect timeout alone.
        """
        timeout = timeout or {}
        key = (timeout.get("connect"), timeout.get("read"), timeout.get("pool"))
        found = self._timeouts.get(key)
        if found is None:
            connect, read, pool = key
            found = aiohttp.ClientTimeout(
                total=None,
                connect=None if connect is None or pool is None else connect + pool,
                sock_connect=connect,
                sock_read=read,
            )
            self._timeouts[key] = found
        return found

    async def aclose(self) -> None:
        """Close the session and its connections; idempotent."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def default_async_transport(base_url: str, limits: httpx.Limits) -> AiohttpTransport | None:
    """The transport of an AsyncKlarnaClient given none: aiohttp's, with ``limits``.

    None (httpx's own transport) when the environment sets a proxy for
    ``base_url`` (``HTTPS_PROXY``, ``ALL_PROXY``... not bypassed by
    ``NO_PROXY``): httpx honours those, this transport does not.
    """
    url = httpx.URL(base_url)
    proxies = urllib.request.getproxies_environment()
    if (url.scheme in proxies or "all" in proxies) and not urllib.request.proxy_bypass(url.host):
        return None
    return AiohttpTransport(limits=limits)
