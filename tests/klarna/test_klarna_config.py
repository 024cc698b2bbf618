"""Client configuration, ownership of the httpx client, and the retry policy."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from klarna_flow import (
    ConfigurationError,
    InvalidInput,
    KlarnaRateLimited,
    KlarnaServerError,
    KlarnaTimeout,
    KlarnaTransportError,
    KlarnaUnexpectedResponse,
)
from klarna_flow.klarna import (
    LIVE_BASE_URL,
    TEST_BASE_URL,
    AsyncKlarnaClient,
    KlarnaClient,
    RetryPolicy,
)
from klarna_flow.klarna._retry import Attempts
from klarna_flow.testing import FakeKlarna

from .klarna_support import API_KEY, FAST, call_args


@pytest.fixture
def no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KLARNA_API_KEY", raising=False)


def test_hosts() -> None:
    assert TEST_BASE_URL == "https://api-global.test.klarna.com"
    assert LIVE_BASE_URL == "https://api-global.klarna.com"
    with KlarnaClient(API_KEY) as client:
        assert client.base_url == TEST_BASE_URL


@pytest.mark.usefixtures("no_env_key")
def test_missing_api_key_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="KLARNA_API_KEY"):
        KlarnaClient()


def test_api_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLARNA_API_KEY", "from-env")
    fake = FakeKlarna(api_key="from-env")
    token = fake.issue_session_token(amount=11800, currency="USD")

    with KlarnaClient(transport=httpx.MockTransport(fake)) as client:
        client.authorize(**call_args(fake, token))

    assert fake.requests[0].headers["Authorization"] == "Basic from-env"


@pytest.mark.parametrize("key", ["", " padded ", "line\nbreak", "clé"])
def test_unusable_api_key_is_refused_without_echo(key: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        KlarnaClient(key)

    assert not key.strip() or key.strip() not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://api-global.klarna.com/",
        "http://127.0.0.1:8080",
        "http://127.5.6.7",
        "http://localhost:9000",
        "http://[::1]:9000",
        "https://proxy.example.com/klarna",
    ],
)
def test_accepted_base_urls(url: str) -> None:
    with KlarnaClient(API_KEY, base_url=url) as client:
        assert not client.base_url.endswith("/")


@pytest.mark.parametrize(
    "url",
    [
        "http://api-global.klarna.com",
        "http://10.0.0.1",
        "ftp://127.0.0.1",
        "https://host/?q=1",
        "not a url",
        "",
    ],
)
def test_refused_base_urls(url: str) -> None:
    with pytest.raises(ConfigurationError):
        KlarnaClient(API_KEY, base_url=url)


def test_timeout_default_outlasts_klarnas_idle_limit() -> None:
    with KlarnaClient(API_KEY) as client:
        timeout = client._http.timeout

    assert timeout.read is not None
    assert timeout.read > 59
    assert timeout.connect == 5.0


@pytest.mark.parametrize("timeout", [0, -1, "5", True])
def test_bad_timeout_is_refused(timeout: object) -> None:
    with pytest.raises(ConfigurationError):
        KlarnaClient(API_KEY, timeout=timeout)  # type: ignore[arg-type]


def test_transport_and_http_client_are_exclusive() -> None:
    with httpx.Client() as http, pytest.raises(ConfigurationError):
        KlarnaClient(API_KEY, http_client=http, transport=httpx.MockTransport(FakeKlarna()))


def test_async_client_refuses_a_sync_http_client() -> None:
    with httpx.Client() as http, pytest.raises(ConfigurationError):
        AsyncKlarnaClient(API_KEY, http_client=http)  # type: ignore[arg-type]


def test_callers_http_client_is_left_open(fake: FakeKlarna, token: str) -> None:
    with httpx.Client(transport=httpx.MockTransport(fake)) as http:
        with KlarnaClient(API_KEY, http_client=http) as client:
            client.authorize(**call_args(fake, token))
        assert not http.is_closed


def test_owned_http_client_is_closed_and_use_after_close_refused(
    fake: FakeKlarna, token: str
) -> None:
    client = KlarnaClient(API_KEY, transport=httpx.MockTransport(fake))
    client.close()

    with pytest.raises(ConfigurationError, match="closed"):
        client.authorize(**call_args(fake, token))
    assert fake.requests == []


def test_async_client_ownership(fake: FakeKlarna, token: str) -> None:
    async def scenario() -> tuple[bool, bool]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(fake)) as http:
            async with AsyncKlarnaClient(API_KEY, http_client=http) as client:
                await client.authorize(**call_args(fake, token))
            theirs_open = not http.is_closed
        mine = AsyncKlarnaClient(API_KEY, transport=httpx.MockTransport(fake))
        await mine.aclose()
        return theirs_open, mine._http.is_closed

    assert asyncio.run(scenario()) == (True, True)


def test_repr_masks_the_key() -> None:
    with KlarnaClient("sk-secret-value") as client:
        shown = repr(client)

    assert "sk-secret-value" not in shown
    assert "api_key='****'" in shown


# -- retry policy ----------------------------------------------------------------------


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    policy = RetryPolicy(initial_backoff=0.5, max_backoff=3.0, jitter=False)

    assert [policy.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_full_jitter_draws_between_zero_and_the_backoff() -> None:
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=10.0)

    assert policy.backoff(3, uniform=lambda low, high: high) == 4.0
    assert policy.backoff(3, uniform=lambda low, high: low) == 0.0


def test_retry_after_is_a_floor_capped_by_max_backoff() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=5.0, jitter=False)

    assert policy.backoff(1, retry_after=2.0) == 2.0
    assert policy.backoff(1, retry_after=60.0) == 5.0
    assert policy.backoff(1, retry_after=0.0) == 0.1


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"max_attempts": True}, {"initial_backoff": 0}, {"deadline": -1}],
)
def test_policy_refuses_nonsense(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_no_new_attempt_starts_past_the_deadline() -> None:
    now = [0.0]
    attempts = Attempts(
        RetryPolicy(max_attempts=10, initial_backoff=1.0, jitter=False, deadline=10.0),
        monotonic=lambda: now[0],
    )
    error = KlarnaServerError(status_code=503)
    attempts.begin()
    assert attempts.delay_after(error) == 1.0

    now[0] = 9.5
    attempts.begin()

    assert attempts.delay_after(error) is None


def test_retry_after_beyond_the_deadline_gives_up_at_once() -> None:
    attempts = Attempts(RetryPolicy(max_backoff=60.0, deadline=5.0), monotonic=lambda: 0.0)
    attempts.begin()

    assert attempts.delay_after(KlarnaRateLimited(retry_after=30.0, status_code=429)) is None


def test_fast_policy_used_by_tests_is_fast() -> None:
    assert FAST.max_backoff <= 0.01


@pytest.mark.parametrize(
    ("failure", "error_class", "attempts"),
    [
        (httpx.ConnectError("refused"), KlarnaTransportError, 3),
        (httpx.ReadTimeout("slow"), KlarnaTimeout, 3),
        (httpx.TooManyRedirects("loop"), KlarnaUnexpectedResponse, 1),
    ],
)
def test_httpx_failures_never_escape(
    fake: FakeKlarna,
    token: str,
    failure: httpx.HTTPError,
    error_class: type[Exception],
    attempts: int,
) -> None:
    calls: list[httpx.Request] = []

    def failing(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise failure

    with (
        KlarnaClient(API_KEY, transport=httpx.MockTransport(failing), retry=FAST) as client,
        pytest.raises(error_class) as caught,
    ):
        client.authorize(**call_args(fake, token))

    assert caught.value.__cause__ is failure
    assert len(calls) == attempts


def _cookie_setting(fake: FakeKlarna, seen: list[httpx.Request]) -> httpx.MockTransport:
    """FakeKlarna answering with a ``Set-Cookie`` header; each request recorded."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = fake(request)
        answer.headers["Set-Cookie"] = "lb=node-7; Path=/"
        return answer

    return httpx.MockTransport(handler)


def test_an_owned_client_keeps_and_sends_no_cookie(fake: FakeKlarna) -> None:
    seen: list[httpx.Request] = []
    with KlarnaClient(API_KEY, transport=_cookie_setting(fake, seen)) as client:
        for _ in range(2):
            token = fake.issue_session_token(amount=11800, currency="USD")
            assert client.authorize(**call_args(fake, token)).result == "APPROVED"
    assert len(seen) == 2
    assert [r.headers.get("Cookie") for r in seen] == [None, None]


def test_an_owned_async_client_keeps_and_sends_no_cookie(fake: FakeKlarna) -> None:
    seen: list[httpx.Request] = []

    async def scenario() -> None:
        transport = _cookie_setting(fake, seen)
        async with AsyncKlarnaClient(API_KEY, transport=transport) as client:
            for _ in range(2):
                token = fake.issue_session_token(amount=11800, currency="USD")
                await client.authorize(**call_args(fake, token))

    asyncio.run(scenario())
    assert [r.headers.get("Cookie") for r in seen] == [None, None]


def test_a_callers_http_client_keeps_its_cookie_jar(fake: FakeKlarna) -> None:
    seen: list[httpx.Request] = []
    with httpx.Client(transport=_cookie_setting(fake, seen)) as http:
        with KlarnaClient(API_KEY, http_client=http) as client:
            token = fake.issue_session_token(amount=11800, currency="USD")
            client.authorize(**call_args(fake, token))
        assert http.cookies.get("lb") == "node-7"  # httpx's own bookkeeping, untouched


def test_calls_to_many_accounts_each_go_to_their_own_path(fake: FakeKlarna) -> None:
    accounts = [f"krn:partner:global:account:acct-{n}" for n in range(3)]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return fake(request)

    with KlarnaClient(API_KEY, transport=httpx.MockTransport(handler)) as client:
        for account in accounts * 2:
            token = fake.issue_session_token(
                amount=11800, currency="USD", partner_account_id=account
            )
            client.authorize(**call_args(fake, token, partner_account_id=account))
    assert [r.url.path for r in seen] == [
        f"/v2/accounts/{a}/payment/authorize" for a in accounts * 2
    ]
