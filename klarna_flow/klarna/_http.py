"""The httpx clients a Klarna client opens for itself: they keep no cookies.

Klarna's API authenticates every call with its API key and sets no cookies,
and the requests are built without the client's cookie jar
(``_exchange._build``), so a cookie stored from an answer would never be sent.
httpx still parses every answer's ``Set-Cookie`` into its jar, through
urllib's cookie machinery: about a tenth of a call's own cost. The clients
here skip that step. A client the caller passes as ``http_client`` is used as
given.
"""

from __future__ import annotations

from typing import Any

import httpx

__all__ = ["StatelessAsyncClient", "StatelessClient"]


class _NoCookies(httpx.Cookies):
    """A cookie jar that stores nothing from an answer."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class _KeepsNoCookies:
    """The cookie jar of the clients below: one per client, storing nothing."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._no_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        return None  # nothing is kept


class StatelessClient(_KeepsNoCookies, httpx.Client):
    """An :class:`httpx.Client` that keeps no cookies from Klarna's answers."""


class StatelessAsyncClient(_KeepsNoCookies, httpx.AsyncClient):
    """An :class:`httpx.AsyncClient` that keeps no cookies from Klarna's answers."""
