"""Client configuration: hosts, API key, timeouts and the User-Agent.

Everything here is checked when a client is built, so a misconfigured client
fails at start-up with :class:`~klarna_flow.ConfigurationError` rather than on
its first payment.
"""

from __future__ import annotations

import ipaddress
import os
from importlib import metadata

import httpx

from klarna_flow._errors import ConfigurationError

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_LIMITS",
    "DEFAULT_TIMEOUT",
    "LIVE_BASE_URL",
    "TEST_BASE_URL",
    "check_base_url",
    "is_loopback",
    "resolve_api_key",
    "resolve_timeout",
    "user_agent",
]

TEST_BASE_URL = "https://api-global.test.klarna.com"
LIVE_BASE_URL = "https://api-global.klarna.com"
API_KEY_ENV = "KLARNA_API_KEY"

# Klarna closes an idle request after 59 s with a 500: the read timeout sits
# above it so that answer (retryable) arrives instead of a local timeout.
DEFAULT_TIMEOUT = httpx.Timeout(65.0, connect=5.0)

# Enough pooled connections for 50 concurrent authorizations and then some;
# httpx's default keeps only 20 alive, which churns connections under load.
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=100)


def resolve_api_key(api_key: str | None) -> str:
    """The API key given, else ``$KLARNA_API_KEY``.

    Raises:
        ConfigurationError: no key, or one that cannot go in a header. The
            message never contains the key.
    """
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    if not key:
        raise ConfigurationError(f"no Klarna API key: pass api_key or set ${API_KEY_ENV}")
    if not isinstance(key, str) or not (key.isprintable() and key.isascii()):
        raise ConfigurationError("the Klarna API key must be printable ASCII")
    if key != key.strip():
        raise ConfigurationError("the Klarna API key has surrounding whitespace")
    return key


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (127.0.0.0/8, ``::1``, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(base_url: str) -> str:
    """An ``https`` base URL, or ``http`` on a loopback host; no trailing slash.

    Raises:
        ConfigurationError: another scheme, plain http to a remote host, or a
            URL with a query or fragment.
    """
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ConfigurationError(f"invalid base_url {base_url!r}") from exc
    if url.query or url.fragment or not url.host:
        raise ConfigurationError(f"base_url must be scheme://host[/path]: {base_url!r}")
    if url.scheme == "http" and is_loopback(url.host):
        return str(url).rstrip("/")
    if url.scheme != "https":
        raise ConfigurationError(f"base_url must use https (http only on loopback): {base_url!r}")
    return str(url).rstrip("/")


def resolve_timeout(timeout: httpx.Timeout | float | None) -> httpx.Timeout:
    """An :class:`httpx.Timeout` from a Timeout, a number of seconds or None."""
    if timeout is None:
        return DEFAULT_TIMEOUT
    if isinstance(timeout, httpx.Timeout):
        return timeout
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ConfigurationError("timeout must be an httpx.Timeout or seconds")
    if timeout <= 0:
        raise ConfigurationError("timeout must be positive")
    return httpx.Timeout(float(timeout))


def user_agent() -> str:
    """``klarna-flow/<installed version>``."""
    try:
        version = metadata.version("klarna-flow")
    except metadata.PackageNotFoundError:
        # Running from a source tree that was never installed.
        version = "unknown"
    return f"klarna-flow/{version}"
