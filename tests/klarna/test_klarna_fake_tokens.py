"""FakeKlarna's customer-token charges, transaction reads and transaction notifications."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from klarna_flow import InvalidInput
from klarna_flow.testing import FakeKlarna, ManualClock, SignedNotification, serve_fake

from .klarna_support import API_KEY
from .test_klarna_fake_journey import ACCOUNT, BASE, PAYMENT, STEP_UP, failure, send, step_up

PRESENT = "payment:customer_present"
NOT_PRESENT = "payment:customer_not_present"
OTHER_ACCOUNT = "krn:partner:global:account:other"
CHARGE = {"currency": "USD", "request_payment_transaction": PAYMENT}
PRESENT_CHARGE = {**CHARGE, "step_up_config": STEP_UP}


@pytest.fixture
def http(fake: FakeKlarna) -> Iterator[httpx.Client]:
    with httpx.Client(transport=httpx.MockTransport(fake), base_url="https://fake") as client:
        yield client


def read(http: httpx.Client, transaction_id: str, account: str = ACCOUNT) -> httpx.Response:
    url = f"/v2/accounts/{account}/payment/transactions/{transaction_id}"
    return http.get(url, headers={"Authorization": f"Basic {API_KEY}"})


def result(response: httpx.Response) -> str:
    return str(response.json()["payment_transaction_response"]["result"])


def approved_id(response: httpx.Response) -> str:
    answer = response.json()["payment_transaction_response"]
    assert answer["result"] == "APPROVED"
    return str(answer["payment_transaction"]["payment_transaction_id"])


def verified(fake: FakeKlarna, note: SignedNotification) -> dict[str, Any]:
    """The notification's envelope, once its signature checks out."""
    key = fake.signing_keys[note.headers["Klarna-Signing-Key-Id"]]
    expected = hmac.new(key, note.body, hashlib.sha256).hexdigest()
    assert note.headers["Klarna-Signature"] == expected
    return note.json()


# -- charging a customer token ---------------------------------------------------------------


@pytest.mark.parametrize(("body", "scope"), [(CHARGE, NOT_PRESENT), (PRESENT_CHARGE, PRESENT)])
def test_a_token_with_the_scope_is_charged(
    http: httpx.Client, fake: FakeKlarna, body: dict[str, Any], scope: str
) -> None:
    token = fake.issue_customer_token(scopes=[scope])

    response = send(http, body, customer=token)

    assert result(response) == "APPROVED"
    assert "payment_request" not in response.json()
    [transaction] = fake.transactions
    assert transaction.customer_token == "krn:customer-token:****"
    assert (transaction.session_token, transaction.payment_request_id) == (None, None)
    assert token not in repr(transaction)


@pytest.mark.parametrize(("body", "scope"), [(CHARGE, PRESENT), (PRESENT_CHARGE, NOT_PRESENT)])
def test_a_token_without_the_scope_is_403(
    http: httpx.Client, fake: FakeKlarna, body: dict[str, Any], scope: str
) -> None:
    token = fake.issue_customer_token(scopes=[scope])

    response = send(http, body, customer=token)

    assert failure(response)[:2] == (403, "OPERATION_FORBIDDEN")
    assert "scope" in response.json()["error_message"]
    assert fake.transactions == []


def test_a_revoked_token_is_403(http: httpx.Client, fake: FakeKlarna) -> None:
    token = fake.issue_customer_token()
    assert result(send(http, CHARGE, customer=token)) == "APPROVED"
    fake.revoke_customer_token(token)

    response = send(http, CHARGE, customer=token)

    assert failure(response)[:2] == (403, "OPERATION_FORBIDDEN")
    assert "revoked" in response.json()["error_message"]
    assert token not in response.text
    assert [t.revoked for t in fake.customer_tokens] == [True]


def test_unknown_and_foreign_tokens_are_refused(http: httpx.Client, fake: FakeKlarna) -> None:
    foreign = fake.issue_customer_token(partner_account_id=OTHER_ACCOUNT)
    unknown = f"krn:customer-token:{uuid.uuid4()}"

    assert failure(send(http, CHARGE, customer=unknown))[:2] == (404, "RESOURCE_NOT_FOUND")
    assert failure(send(http, CHARGE, customer=foreign))[:2] == (403, "OPERATION_FORBIDDEN")


def test_a_charge_needs_a_payment_transaction(http: httpx.Client, fake: FakeKlarna) -> None:
    token = fake.issue_customer_token()
    body = {"currency": "USD", "request_customer_token": {"scopes": [NOT_PRESENT]}}

    assert failure(send(http, body, customer=token)) == (
        400,
        "VALIDATION_ERROR",
        ["request_payment_transaction"],
    )


@pytest.mark.parametrize("script", ["decline", "step_up"])
def test_customer_not_present_is_only_approved_or_declined(
    http: httpx.Client, fake: FakeKlarna, script: str
) -> None:
    token = fake.issue_customer_token()
    if script == "decline":
        fake.decline_next()
    else:
        fake.step_up_next()

    response = send(http, CHARGE, customer=token)

    assert response.json() == {"payment_transaction_response": {"result": "DECLINED"}}


@pytest.mark.parametrize("resend_token", [True, False])
def test_customer_present_steps_up_when_scripted(
    http: httpx.Client, fake: FakeKlarna, resend_token: bool
) -> None:
    token = fake.issue_customer_token(scopes=[PRESENT])
    fake.step_up_next()

    answer = send(http, PRESENT_CHARGE, customer=token).json()
    request_id = answer["payment_request"]["payment_request_id"]
    session = fake.complete_payment_request(request_id).session_token
    final = send(http, CHARGE, session=session, customer=token if resend_token else None)

    assert answer["payment_transaction_response"] == {"result": "STEP_UP_REQUIRED"}
    assert answer["payment_request"]["state"] == "SUBMITTED"
    assert result(final) == "APPROVED"
    [transaction] = fake.transactions
    assert transaction.payment_request_id == request_id
    assert transaction.customer_token == ("krn:customer-token:****" if resend_token else None)


def test_the_final_call_of_a_charge_refuses_another_token(
    http: httpx.Client, fake: FakeKlarna
) -> None:
    token = fake.issue_customer_token(scopes=[PRESENT])
    other = fake.issue_customer_token(scopes=[PRESENT])
    fake.step_up_next()
    request_id = send(http, PRESENT_CHARGE, customer=token).json()["payment_request"]
    session = fake.complete_payment_request(request_id["payment_request_id"]).session_token

    response = send(http, CHARGE, session=session, customer=other)

    assert failure(response) == (400, "VALIDATION_ERROR", ["Klarna-Customer-Token"])
    assert other not in response.text


def test_a_charge_replays_by_idempotency_key(http: httpx.Client, fake: FakeKlarna) -> None:
    token = fake.issue_customer_token()
    other = fake.issue_customer_token()

    first = send(http, CHARGE, key="charge-1", customer=token)
    again = send(http, CHARGE, key="charge-1", customer=token)
    conflict = send(http, CHARGE, key="charge-1", customer=other)

    assert again.json() == first.json()
    assert failure(conflict)[:2] == (409, "RESOURCE_CONFLICT")
    assert len(fake.transactions) == 1


@pytest.mark.parametrize("scopes", [[], ["payment:everything"], "payment:customer_present"])
def test_issue_customer_token_checks_scopes(fake: FakeKlarna, scopes: Any) -> None:
    with pytest.raises(InvalidInput):
        fake.issue_customer_token(scopes=scopes)


def test_revoking_an_unknown_token_never_echoes_it(fake: FakeKlarna) -> None:
    secret = "krn:customer-token:s3cr3t"

    with pytest.raises(InvalidInput) as caught:
        fake.revoke_customer_token(secret)

    assert "s3cr3t" not in str(caught.value)


# -- transactions --------------------------------------------------------------------------


def test_read_a_transaction(http: httpx.Client, fake: FakeKlarna) -> None:
    token = fake.issue_session_token(amount=11800, currency="USD")
    transaction_id = approved_id(send(http, CHARGE, session=token))

    response = read(http, transaction_id)

    [recorded] = fake.transactions
    assert response.status_code == 200
    assert response.json() == {
        "payment_transaction_id": transaction_id,
        "payment_transaction_reference": "order-1",
        "amount": 11800,
        "currency": "USD",
        "state": "AUTHORIZED",
        "payment_funding": {"type": "GUARANTEED", "state": "PENDING"},
        "payment_captures": [],
        "captured_amount": 0,
        "expires_at": "2025-01-29T12:00:00.000Z",
        "payment_request_id": recorded.payment_request_id,
    }


def test_reading_unknown_or_foreign_transactions_is_404(
    http: httpx.Client, fake: FakeKlarna
) -> None:
    fake.approve_next()
    transaction_id = approved_id(send(http, CHARGE))
    fake.issue_customer_token(partner_account_id=OTHER_ACCOUNT)  # the account exists

    assert failure(read(http, f"krn:payment:eu1:transaction:{uuid.uuid4()}"))[0] == 404
    assert failure(read(http, transaction_id, OTHER_ACCOUNT))[:2] == (404, "RESOURCE_NOT_FOUND")
    assert "payment_request_id" not in read(http, transaction_id).json()  # none behind it
    bad_key = http.get(f"{BASE}/transactions/{transaction_id}", headers={"Authorization": "x"})
    assert failure(bad_key)[:2] == (401, "UNAUTHORIZED")


def test_partial_then_full_capture_notifies_and_completes(
    http: httpx.Client, fake: FakeKlarna, clock: ManualClock
) -> None:
    fake.approve_next()
    transaction_id = approved_id(send(http, CHARGE))
    clock.advance(timedelta(days=1))

    first = verified(fake, fake.capture_transaction(transaction_id, 5000))
    rest = verified(fake, fake.capture_transaction(transaction_id))

    assert first["metadata"]["event_type"] == "payment.transaction.captured"
    capture = first["payload"]["payment_capture"]
    assert capture["payment_capture_id"].startswith("krn:payment:eu1:capture:")
    assert first["payload"] == {
        "payment_transaction_id": transaction_id,
        "payment_transaction_reference": "order-1",
        "state": "AUTHORIZED",
        "previous_state": None,
        "amount": 11800,
        "currency": "USD",
        "captured_amount": 5000,
        "expires_at": "2025-01-29T12:00:00.000Z",
        "payment_capture": {
            "payment_capture_id": capture["payment_capture_id"],
            "amount": 5000,
            "captured_at": "2025-01-02T12:00:00.000Z",
        },
    }
    assert (rest["payload"]["state"], rest["payload"]["previous_state"]) == (
        "COMPLETED",
        "AUTHORIZED",
    )
    assert rest["payload"]["payment_capture"]["amount"] == 6800
    answer = read(http, transaction_id).json()
    assert (answer["state"], answer["captured_amount"]) == ("COMPLETED", 11800)
    assert [c["amount"] for c in answer["payment_captures"]] == [5000, 6800]
    with pytest.raises(InvalidInput):
        fake.capture_transaction(transaction_id, 1)


@pytest.mark.parametrize("amount", [0, 11801, -1])
def test_capture_refuses_amounts_out_of_range(
    http: httpx.Client, fake: FakeKlarna, amount: int
) -> None:
    fake.approve_next()
    transaction_id = approved_id(send(http, CHARGE))

    with pytest.raises(InvalidInput):
        fake.capture_transaction(transaction_id, amount)
    assert fake.transactions[0].captures == ()


def test_expire_a_transaction(http: httpx.Client, fake: FakeKlarna) -> None:
    fake.approve_next()
    transaction_id = approved_id(send(http, CHARGE))

    note = verified(fake, fake.expire_transaction(transaction_id))

    assert note["metadata"]["event_type"] == "payment.transaction.state-change.expired"
    assert (note["payload"]["state"], note["payload"]["previous_state"]) == (
        "EXPIRED",
        "AUTHORIZED",
    )
    assert read(http, transaction_id).json()["state"] == "EXPIRED"
    with pytest.raises(InvalidInput):
        fake.capture_transaction(transaction_id)
    with pytest.raises(InvalidInput):
        fake.expire_transaction(transaction_id)


def test_a_lost_authorization_is_notified_afterwards(http: httpx.Client, fake: FakeKlarna) -> None:
    request_id = fake.create_payment_request(amount=11800, currency="USD")
    token = fake.complete_payment_request(request_id).session_token
    fake.drop_next(after_processing=True)
    with pytest.raises(httpx.RemoteProtocolError):
        send(http, CHARGE, session=token)
    [transaction] = fake.transactions

    note = verified(fake, fake.transaction_notification(transaction.payment_transaction_id))

    assert note["metadata"]["event_type"] == "payment.transaction.state-change.authorized"
    assert note["metadata"]["subject_account_id"] == ACCOUNT
    assert note["payload"] == {
        "payment_transaction_id": transaction.payment_transaction_id,
        "payment_transaction_reference": "order-1",
        "payment_request_id": request_id,
        "state": "AUTHORIZED",
        "previous_state": None,
        "amount": 11800,
        "currency": "USD",
        "captured_amount": 0,
        "expires_at": "2025-01-29T12:00:00.000Z",
    }
    with pytest.raises(InvalidInput):
        fake.transaction_notification("krn:payment:eu1:transaction:unknown")


# -- on loopback --------------------------------------------------------------------------


def test_cancel_and_read_through_the_loopback_server(fake: FakeKlarna) -> None:
    head = {"Authorization": f"Basic {API_KEY}"}
    with serve_fake(fake) as server, httpx.Client(base_url=server.base_url) as http:
        request_id = step_up(http)
        fake.approve_next()
        transaction_id = approved_id(send(http, CHARGE))
        payment = f"/v2/accounts/{ACCOUNT}/payment"

        canceled = http.delete(f"{payment}/requests/{request_id}", headers=head)
        again = http.delete(f"{payment}/requests/{request_id}", headers=head)
        found = http.get(f"{payment}/transactions/{transaction_id}", headers=head)
        missing = http.get(f"{payment}/transactions/krn:payment:eu1:transaction:x", headers=head)

    assert (canceled.status_code, canceled.json()["state"]) == (200, "CANCELED")
    assert canceled.json()["payment_request_id"] == request_id
    assert canceled.headers["Klarna-Correlation-Id"]
    assert failure(again)[:2] == (409, "RESOURCE_CONFLICT")
    assert (found.status_code, found.json()["payment_transaction_id"]) == (200, transaction_id)
    assert failure(missing)[:2] == (404, "RESOURCE_NOT_FOUND")
    assert [r.method for r in fake.requests] == ["POST", "POST", "DELETE", "DELETE", "GET", "GET"]
