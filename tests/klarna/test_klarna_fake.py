"""FakeKlarna on its own: it validates, remembers and signs like the real API."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from klarna_flow import InvalidInput
from klarna_flow.testing import FakeKlarna, ManualClock

from .klarna_support import API_KEY

URL = "https://fake/v2/accounts/krn:partner:global:account:test-partner/payment/authorize"
BODY = {
    "currency": "USD",
    "request_payment_transaction": {"amount": 11800, "payment_transaction_reference": "r"},
}


@pytest.fixture
def http(fake: FakeKlarna) -> Iterator[httpx.Client]:
    with httpx.Client(transport=httpx.MockTransport(fake)) as client:
        yield client


def headers(token: str, key: str = "key-1", **extra: str) -> dict[str, str]:
    return {
        "Authorization": f"Basic {API_KEY}",
        "Content-Type": "application/json",
        "Klarna-Network-Session-Token": token,
        "Klarna-Idempotency-Key": key,
        **extra,
    }


def post(http: httpx.Client, token: str, body: Any = None, **head: str) -> httpx.Response:
    sent = headers(token, **{k.replace("_", "-"): v for k, v in head.items()})
    return http.post(URL, headers=sent, content=json.dumps(BODY if body is None else body))


def error_code(response: httpx.Response) -> str:
    return str(response.json()["error_code"])


# -- gateway checks ---------------------------------------------------------------------


def test_raw_approval_uses_the_documented_shape(http: httpx.Client, token: str) -> None:
    response = post(http, token)

    assert response.status_code == 200
    assert response.headers["Klarna-Correlation-Id"]
    transaction = response.json()["payment_transaction_response"]["payment_transaction"]
    assert transaction["expires_at"].endswith("Z")
    assert len(transaction["expires_at"]) == len("2025-01-01T12:00:00.000Z")


def test_wrong_credentials_get_401(http: httpx.Client, token: str) -> None:
    response = post(http, token, Authorization="Basic nope")

    assert response.status_code == 401
    body = response.json()
    assert (body["error_code"], body["error_type"]) == ("UNAUTHORIZED", "ACCESS_ERROR")
    assert {"error_id", "error_message", "doc_url"} <= body.keys()


def test_wrong_content_type_gets_400(http: httpx.Client, token: str) -> None:
    response = post(http, token, Content_Type="text/plain")

    assert (response.status_code, error_code(response)) == (400, "INVALID_CONTENT_TYPE")


def test_content_type_with_charset_is_fine(http: httpx.Client, token: str) -> None:
    assert post(http, token, Content_Type="application/json; charset=utf-8").status_code == 200


def test_older_token_header_name_is_accepted(http: httpx.Client, token: str) -> None:
    sent = headers(token)
    sent["Klarna-Payment-Token"] = sent.pop("Klarna-Network-Session-Token")

    assert http.post(URL, headers=sent, content=json.dumps(BODY)).status_code == 200


@pytest.mark.parametrize(
    ("missing", "parameter"),
    [
        ("Klarna-Idempotency-Key", "Klarna-Idempotency-Key"),
        # Without a token it is an initial call, which needs step_up_config.
        ("Klarna-Network-Session-Token", "step_up_config"),
    ],
)
def test_missing_header_gets_400(
    http: httpx.Client, token: str, missing: str, parameter: str
) -> None:
    sent = headers(token)
    del sent[missing]

    response = http.post(URL, headers=sent, content=json.dumps(BODY))

    assert (response.status_code, error_code(response)) == (400, "VALIDATION_ERROR")
    assert response.json()["validation_errors"][0]["parameter"] == parameter


@pytest.mark.parametrize(
    "correlation_id", ["0f8e2a4c-1b3d-4e5f-8a9b-0c1d2e3f4a5b", "c" * 256, "with space", ""]
)
def test_partner_correlation_id_not_alphanumeric_gets_400(
    http: httpx.Client, token: str, correlation_id: str
) -> None:
    """Klarna: Partner-Correlation-Id is "<= 255 characters ^[A-Za-z0-9]+$"."""
    response = post(http, token, Partner_Correlation_Id=correlation_id)

    assert (response.status_code, error_code(response)) == (400, "VALIDATION_ERROR")
    assert response.json()["validation_errors"][0]["parameter"] == "Partner-Correlation-Id"


def test_alphanumeric_partner_correlation_id_is_fine(http: httpx.Client, token: str) -> None:
    assert post(http, token, Partner_Correlation_Id="0f8e2a4c" + "9" * 247).status_code == 200


def test_fail_next_can_send_x_ratelimit_reset(
    http: httpx.Client, fake: FakeKlarna, token: str
) -> None:
    fake.fail_next(429, retry_after=1, ratelimit_reset=1735732800)

    response = post(http, token)

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert response.headers["X-Ratelimit-Reset"] == "1735732800"


@pytest.mark.parametrize(
    ("body", "parameter"),
    [
        ([], "body"),
        ({**BODY, "currency": "usd"}, "currency"),
        ({**BODY, "currency": ["USD"]}, "currency"),
        ({"currency": "USD"}, "request_payment_transaction"),
        (
            {"currency": "USD", "request_payment_transaction": {"amount": 0}},
            "request_payment_transaction.amount",
        ),
    ],
)
def test_schema_errors_get_400_with_details(
    http: httpx.Client, token: str, body: Any, parameter: str
) -> None:
    response = post(http, token, body)

    assert (response.status_code, error_code(response)) == (400, "VALIDATION_ERROR")
    assert parameter in [p["parameter"] for p in response.json()["validation_errors"]]


def test_non_json_body_gets_400(http: httpx.Client, token: str) -> None:
    response = http.post(URL, headers=headers(token), content=b"{not json")

    assert (response.status_code, error_code(response)) == (400, "VALIDATION_ERROR")


def test_body_over_one_megabyte_gets_413(http: httpx.Client, token: str) -> None:
    response = http.post(URL, headers=headers(token), content=b" " * (1024 * 1024 + 1))

    assert response.status_code == 413


def test_unknown_route_gets_404_and_is_recorded(http: httpx.Client, fake: FakeKlarna) -> None:
    fake.fail_next(503)

    response = http.get("https://fake/v2/accounts/x/payment/refunds/y")

    assert (response.status_code, error_code(response)) == (404, "RESOURCE_NOT_FOUND")
    assert len(fake.requests) == 1
    assert post(http, fake.issue_session_token(amount=11800, currency="USD")).status_code == 503


def test_unknown_partner_account_gets_404(http: httpx.Client, token: str) -> None:
    url = URL.replace("test-partner", "nobody")

    response = http.post(url, headers=headers(token), content=json.dumps(BODY))

    assert (response.status_code, error_code(response)) == (404, "RESOURCE_NOT_FOUND")


def test_idempotency_window_is_24_hours(
    http: httpx.Client, fake: FakeKlarna, clock: ManualClock
) -> None:
    first_token = fake.issue_session_token(amount=11800, currency="USD")
    first = post(http, first_token)
    clock.advance(timedelta(hours=23, minutes=59))
    other_token = fake.issue_session_token(amount=11800, currency="USD")
    reused_key = post(http, other_token)  # the same key for another request: refused
    replay = post(http, first_token)
    clock.advance(timedelta(minutes=1))
    late = post(http, other_token)  # the key is forgotten: a new request

    assert replay.content == first.content
    assert (reused_key.status_code, error_code(reused_key)) == (409, "RESOURCE_CONFLICT")
    assert late.status_code == 200
    assert len(fake.transactions) == 2


def test_a_used_token_replays_its_result_past_the_key_window(
    http: httpx.Client, token: str, fake: FakeKlarna, clock: ManualClock
) -> None:
    first = post(http, token)
    clock.advance(timedelta(hours=25))

    again = post(http, token, Klarna_Idempotency_Key="key-2")
    changed = post(http, token, {**BODY, "currency": "EUR"}, Klarna_Idempotency_Key="key-3")

    assert (again.status_code, again.json()) == (first.status_code, first.json())
    assert (changed.status_code, error_code(changed)) == (409, "RESOURCE_CONFLICT")
    assert len(fake.transactions) == 1


def test_canceled_request_token_is_dead(http: httpx.Client, fake: FakeKlarna) -> None:
    request_id = fake.create_payment_request(amount=11800, currency="USD")
    token = fake.complete_payment_request(request_id).session_token
    assert token is not None
    fake.cancel_payment_request(request_id)

    response = post(http, token)

    assert (response.status_code, error_code(response)) == (400, "VALIDATION_ERROR")


# -- scripting ------------------------------------------------------------------------


def test_scripts_apply_in_order_to_authorize_calls(
    http: httpx.Client, fake: FakeKlarna, token: str
) -> None:
    fake.fail_next(429)
    fake.fail_next(503)

    statuses = [post(http, token).status_code for _ in range(3)]

    assert statuses == [429, 503, 200]


def test_drop_before_processing_creates_nothing(
    http: httpx.Client, fake: FakeKlarna, token: str
) -> None:
    fake.drop_next()

    with pytest.raises(httpx.RemoteProtocolError):
        post(http, token)

    assert fake.transactions == []
    assert post(http, token).status_code == 200


def test_timeout_after_processing_creates_the_transaction(
    http: httpx.Client, fake: FakeKlarna, token: str
) -> None:
    fake.timeout_next()

    with pytest.raises(httpx.ReadTimeout):
        post(http, token)

    assert len(fake.transactions) == 1


def test_fail_next_refuses_non_error_statuses(fake: FakeKlarna) -> None:
    with pytest.raises(InvalidInput):
        fake.fail_next(200)


# -- the customer's side and notifications --------------------------------------------


@pytest.mark.parametrize(
    ("flow", "session", "customer"),
    [
        ("AUTHORIZATION", True, False),
        ("TOKENIZATION", False, True),
        ("AUTHORIZATION_AND_TOKENIZATION", True, True),
    ],
)
def test_tokens_fit_the_flow(fake: FakeKlarna, flow: str, session: bool, customer: bool) -> None:
    request_id = fake.create_payment_request(amount=500, currency="EUR", flow=flow)

    completed = fake.complete_payment_request(request_id)

    assert request_id.startswith("krn:payment:eu1:request:")
    assert (completed.session_token is not None) == session
    assert (completed.customer_token is not None) == customer
    if completed.session_token:
        assert completed.session_token.startswith("krn:payment:eu1:klarna-network-session-token:")
    if completed.customer_token:
        assert completed.customer_token.startswith("krn:customer-token:")
    payload = completed.notification.json()["payload"]
    assert ("klarna_network_session_token" in payload) == session
    assert ("klarna_customer" in payload) == customer  # where klarna-api.md §4 puts it


def test_completion_notification_is_signed_and_enveloped(
    fake: FakeKlarna, clock: ManualClock
) -> None:
    request_id = fake.create_payment_request(amount=500, currency="EUR")
    clock.advance(timedelta(seconds=1.5))

    completed = fake.complete_payment_request(request_id)

    note = completed.notification
    key_id = note.headers["Klarna-Signing-Key-Id"]
    expected = hmac.new(fake.signing_keys[key_id], note.body, hashlib.sha256).hexdigest()
    assert note.headers["Klarna-Signature"] == expected
    assert note.headers["Content-Type"] == "application/json"
    envelope = note.json()
    metadata = envelope["metadata"]
    assert metadata["event_type"] == "payment.request.state-change.completed"
    assert metadata["event_version"] == "v2"
    assert metadata["occurred_at"] == "2025-01-01T12:00:01.500Z"
    assert metadata["live"] is False
    assert metadata["subject_account_id"] == fake.partner_account_id
    assert {"event_id", "correlation_id", "recipient_account_id"} <= metadata.keys()
    assert {"product_instance_id", "webhook_id"} <= metadata.keys()
    assert envelope["payload"] | {"klarna_network_session_token": None} == {
        "payment_request_id": request_id,
        "state": "COMPLETED",
        "previous_state": "SUBMITTED",
        "amount": 500,
        "currency": "EUR",
        "klarna_network_session_token": None,
    }
    assert completed.completed_at == datetime(2025, 1, 1, 12, 0, 1, 500000, tzinfo=UTC)


@pytest.mark.parametrize("action", ["expire", "cancel"])
def test_expire_and_cancel_notify(fake: FakeKlarna, action: str) -> None:
    request_id = fake.create_payment_request(amount=500, currency="EUR")

    if action == "expire":
        note = fake.expire_payment_request(request_id)
    else:
        note = fake.cancel_payment_request(request_id)

    state = {"expire": "EXPIRED", "cancel": "CANCELED"}[action]
    assert note.json()["metadata"]["event_type"] == f"payment.request.state-change.{state.lower()}"
    assert note.json()["payload"]["previous_state"] == "SUBMITTED"
    assert fake.state_of(request_id) == state
    with pytest.raises(InvalidInput):
        fake.complete_payment_request(request_id)


def test_authorized_request_can_no_longer_expire(http: httpx.Client, fake: FakeKlarna) -> None:
    request_id = fake.create_payment_request(amount=11800, currency="USD")
    token = fake.complete_payment_request(request_id).session_token
    assert token is not None
    post(http, token)

    with pytest.raises(InvalidInput):
        fake.expire_payment_request(request_id)


def test_custom_notification_with_chosen_key_and_event_id() -> None:
    fake = FakeKlarna(signing_keys={"k1": b"one", "k2": b"two"})

    note = fake.notification(
        "payment.request.state-change.completed", {"x": 1}, event_id="e-1", key_id="k2"
    )

    assert note.event_id == "e-1"
    assert note.headers["Klarna-Signing-Key-Id"] == "k2"
    assert fake.sign(note.body, "k2") == note.headers
    with pytest.raises(InvalidInput):
        fake.sign(b"{}", "unknown")


def test_default_signing_key_is_generated() -> None:
    keys = FakeKlarna().signing_keys

    assert list(keys) == ["fake-key-1"]
    assert len(keys["fake-key-1"]) >= 32
    assert FakeKlarna().signing_keys["fake-key-1"] != keys["fake-key-1"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"amount": 0, "currency": "EUR"},
        {"amount": 1, "currency": "eur"},
        {"amount": 1, "currency": "EUR", "flow": "X"},
    ],
)
def test_create_checks_its_arguments(fake: FakeKlarna, kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        fake.create_payment_request(**kwargs)


def test_unknown_payment_request_is_refused(fake: FakeKlarna) -> None:
    with pytest.raises(InvalidInput):
        fake.complete_payment_request("krn:payment:eu1:payment-request:nope")


# -- thread safety ---------------------------------------------------------------------


def race(count: int, action: Any) -> list[Any]:
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        results[i] = action(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_racing_keys_on_one_token_make_one_transaction(
    http: httpx.Client, fake: FakeKlarna, token: str
) -> None:
    answers = race(20, lambda i: post(http, token, Klarna_Idempotency_Key=f"key-{i}"))

    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1  # one result, replayed by the token
    assert len(fake.transactions) == 1


def test_racing_replays_of_one_key_agree(http: httpx.Client, fake: FakeKlarna, token: str) -> None:
    bodies = race(20, lambda i: post(http, token).content)

    assert len(set(bodies)) == 1
    assert len(fake.transactions) == 1
