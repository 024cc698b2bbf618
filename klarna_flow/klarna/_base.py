"""What the sync and async clients share: configuration, ownership, repr."""

from __future__ import annotations

from typing import Generic, TypeVar

import httpx

from klarna_flow._errors import ConfigurationError
from klarna_flow._shared.secrets import MASK
from klarna_flow.klarna._config import (
    DEFAULT_LIMITS,
    TEST_BASE_URL,
    check_base_url,
    resolve_api_key,
    resolve_timeout,
    user_agent,
)
from klarna_flow.klarna._exchange import Endpoint
from klarna_flow.klarna._retry import RetryPolicy

__all__ = ["ClientBase"]

HTTP = TypeVar("HTTP", httpx.Client, httpx.AsyncClient)
Transport = TypeVar("Transport", httpx.BaseTransport, httpx.AsyncBaseTransport)


class ClientBase(Generic[HTTP, Transport]):
    """Configuration checks and ownership of the httpx client.

    Subclasses name the httpx client class they drive in ``_http_class``.
    """

    _http_class: type[HTTP]
    _own_http_class: type[HTTP]  # the subclass opened when no http_client is given
    _limits: httpx.Limits = DEFAULT_LIMITS
    _http: HTTP
    _owns_http: bool
    _timeout: httpx.Timeout | None

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str = TEST_BASE_URL,
        timeout: httpx.Timeout | float | None = None,
        retry: RetryPolicy | None = None,
        transport: Transport | None = None,
        http_client: HTTP | None = None,
    ) -> None:
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError("retry must be a RetryPolicy")
        self._endpoint = Endpoint(
            base_url=check_base_url(base_url),
            api_key=resolve_api_key(api_key),
            user_agent=user_agent(),
        )
        self._retry = retry or RetryPolicy()
        self._http, self._owns_http, self._timeout = self._open(timeout, transport, http_client)

    def _open(
        self,
        timeout: httpx.Timeout | float | None,
        transport: Transport | None,
        http_client: HTTP | None,
    ) -> tuple[HTTP, bool, httpx.Timeout | None]:
        """The httpx client to use, whether we own it, and a per-request timeout."""
        if http_client is None:
            http = self._own_http_class(
                timeout=resolve_timeout(timeout),
                limits=self._limits,
                transport=transport,  # type: ignore[arg-type]
            )
            return http, True, None
        if transport is not None:
            raise ConfigurationError("pass either transport or http_client, not both")
        if not isinstance(http_client, self._http_class):
            raise ConfigurationError(f"http_client must be an {self._http_class.__qualname__}")
        # The caller's client keeps its own timeout unless one is given here.
        return http_client, False, None if timeout is None else resolve_timeout(timeout)

    @property
    def base_url(self) -> str:
        """The Klarna host this client talks to."""
        return self._endpoint.base_url

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy of every authorize call."""
        return self._retry

    @property
    def is_closed(self) -> bool:
        """True once the client was closed: it can send nothing more."""
        return self._http.is_closed

    def _check_open(self) -> None:
        if self.is_closed:
            raise ConfigurationError(f"this {type(self).__name__} is closed")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(base_url={self.base_url!r}, "
            f"api_key={MASK!r}, retry={self._retry!r})"
        )
