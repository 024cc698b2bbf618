"""The asyncio side: ``authorize_async``, ``reconcile_async``, ``handle_notification_async``.

Same contract as the sync methods, on every store, with ``AsyncKlarnaClient``
talking to FakeKlarna through ``httpx.MockTransport``. Each test drives its
coroutine with ``asyncio.run`` (no async pytest plugin needed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from datetime import timedelta
from typing import TypeVar

import httpx
import pytest

from klarna_flow import (
    AuthorizationOutcome,
    AuthorizationWindowElapsed,
    ConcurrentModification,
    ConfigurationError,
    Flow,
    InvalidTransition,
    KlarnaFlowError,
    OutcomeResult,
    Payments,
    PaymentState,
    WrongFlow,
)
from klarna_flow.klarna import AsyncKlarnaClient
from klarna_flow.testing import ManualClock
from tests._flow_helpers import API_KEY, RETRY, Kit, MakePayments, event_names, open_kit

S = PaymentState
R = OutcomeResult
T = TypeVar("T")
Handler = (
    Callable[[httpx.Request], httpx.Response]
    | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
)


@pytest.fixture
def kit(make_payments: MakePayments, clock: ManualClock) -> Iterator[Kit]:
    with open_kit(make_payments, clock) as kit:
        yield kit


def run(
    kit: Kit, scenario: Callable[[Payments], Awaitable[T]], handler: Handler | None = None
) -> T:
    """Run ``scenario`` with an async client on the kit's fake (or ``handler``)."""

    async def main() -> T:
        transport = httpx.MockTransport(handler or kit.fake)
        async with AsyncKlarnaClient(API_KEY, transport=transport, retry=RETRY) as client:
            kit.payments.async_klarna = client
            try:
                return await scenario(kit.payments)
            finally:
                kit.payments.async_klarna = None

    return asyncio.run(main())


def test_complete_by_notification_and_authorize(kit: Kit) -> None:
    created = kit.create()
    done = kit.fake.complete_payment_request(created.payment_request_id)

    async def scenario(payments: Payments) -> AuthorizationOutcome:
        body, headers = done.notification.body, done.notification.headers
        result = await payments.handle_notification_async(body, headers)
        assert (result.status_code, result.outcome) == (200, "applied")
        return await payments.authorize_async(created.payment_id)

    outcome = run(kit, scenario)

    [transaction] = kit.fake.transactions
    assert outcome.result is R.APPROVED
    assert outcome.payment_transaction_id == transaction.payment_transaction_id
    [request] = kit.fake.requests
    assert request.headers["Klarna-Idempotency-Key"] == outcome.idempotency_key
    assert kit.names(created.payment_id) == [
        "PaymentCreated",
        "PurchaseCompleted",
        "AuthorizationRequested",
        "AuthorizationApproved",
    ]


def test_a_bad_signature_is_rejected(kit: Kit) -> None:
    created = kit.create()
    done = kit.fake.complete_payment_request(created.payment_request_id)
    headers = {**done.notification.headers, "Klarna-Signature": "00"}

    result = run(kit, lambda p: p.handle_notification_async(done.notification.body, headers))

    assert (result.status_code, result.outcome) == (400, "rejected")
    assert kit.names(created.payment_id) == ["PaymentCreated"]


def test_decline_and_step_up(kit: Kit) -> None:
    declined = kit.completed()
    stepped = kit.completed()
    kit.fake.decline_next()

    async def scenario(payments: Payments) -> list[AuthorizationOutcome]:
        first = await payments.authorize_async(declined.payment_id)
        kit.fake.step_up_next()
        return [first, await payments.authorize_async(stepped.payment_id)]

    decline, step_up = run(kit, scenario)

    assert (decline.result, decline.state) == (R.DECLINED, S.DECLINED)
    assert (step_up.result, step_up.state) == (R.STEP_UP_REQUIRED, S.CREATED)
    assert step_up.payment_request_id not in (None, stepped.payment_request_id)
    assert step_up.payment_request_url is not None
    assert kit.fake.transactions == []


def test_refusals_send_nothing(kit: Kit) -> None:
    tokenization = kit.completed(Flow.TOKENIZATION)
    created = kit.create()
    late = kit.completed()
    kit.clock.advance(timedelta(minutes=60))

    async def scenario(payments: Payments) -> None:
        with pytest.raises(WrongFlow):
            await payments.authorize_async(tokenization.payment_id)
        with pytest.raises(InvalidTransition):
            await payments.authorize_async(created.payment_id)
        with pytest.raises(AuthorizationWindowElapsed):
            await payments.authorize_async(late.payment_id)

    run(kit, scenario)

    assert kit.fake.requests == []
    assert kit.payments.get(late.payment_id).state is S.EXPIRED


def test_reconcile_async_resolves_pending_payments_concurrently(kit: Kit) -> None:
    pending = [kit.completed() for _ in range(5)]

    async def scenario(payments: Payments) -> list[AuthorizationOutcome]:
        for created in pending:
            for _ in range(RETRY.max_attempts):
                kit.fake.timeout_next(after_processing=True)
            outcome = await payments.authorize_async(created.payment_id)
            assert outcome.result is R.PENDING
        assert await payments.reconcile_async() == []  # too recent for the default age
        return await payments.reconcile_async(older_than=timedelta(0))

    outcomes = run(kit, scenario)

    assert sorted(o.payment_id for o in outcomes) == sorted(c.payment_id for c in pending)
    assert {o.result for o in outcomes} == {R.APPROVED}
    for created, outcome in zip(
        sorted(pending, key=lambda c: c.payment_id),
        sorted(outcomes, key=lambda o: o.payment_id),
        strict=True,
    ):
        [transaction] = kit.fake.transactions_for(created.reference)
        assert outcome.payment_transaction_id == transaction.payment_transaction_id
        assert event_names(kit.payments, created.payment_id).count("AuthorizationRequested") == 1
    assert kit.payments.counts_by_state() == {"AUTHORIZED": 5}


def test_a_definitive_failure_reopens_and_a_new_attempt_succeeds(kit: Kit) -> None:
    created = kit.completed()
    kit.fake.fail_next(429, times=RETRY.max_attempts)

    async def scenario(payments: Payments) -> list[AuthorizationOutcome]:
        failed = await payments.authorize_async(created.payment_id)
        return [failed, await payments.authorize_async(created.payment_id)]

    failed, approved = run(kit, scenario)

    assert (failed.result, failed.state) == (R.FAILED, S.COMPLETED)
    assert approved.result is R.APPROVED
    assert failed.idempotency_key != approved.idempotency_key
    assert len(kit.fake.transactions) == 1


def test_concurrent_authorize_async_calls_make_one_klarna_call(kit: Kit) -> None:
    created = kit.completed()
    callers = 5
    lost: list[KlarnaFlowError] = []
    all_lost = asyncio.Event()

    async def hold(request: httpx.Request) -> httpx.Response:
        # The winner's call waits until every other caller has given up.
        await asyncio.wait_for(all_lost.wait(), timeout=10)
        return kit.fake(request)

    async def attempt(payments: Payments) -> AuthorizationOutcome:
        try:
            return await payments.authorize_async(created.payment_id)
        except KlarnaFlowError as e:
            lost.append(e)
            if len(lost) == callers - 1:
                all_lost.set()
            raise

    async def scenario(payments: Payments) -> list[AuthorizationOutcome | BaseException]:
        attempts = (attempt(payments) for _ in range(callers))
        return await asyncio.gather(*attempts, return_exceptions=True)

    results = run(kit, scenario, handler=hold)

    outcomes = [r for r in results if isinstance(r, AuthorizationOutcome)]
    assert len(outcomes) == 1
    assert outcomes[0].result is R.APPROVED
    assert len(lost) == callers - 1
    assert all(isinstance(e, ConcurrentModification) for e in lost), lost
    assert len(kit.fake.requests) == 1
    assert event_names(kit.payments, created.payment_id).count("AuthorizationRequested") == 1


def test_without_an_async_client_nothing_is_recorded(kit: Kit) -> None:
    created = kit.completed()

    with pytest.raises(ConfigurationError):
        asyncio.run(kit.payments.authorize_async(created.payment_id))
    with pytest.raises(ConfigurationError):
        asyncio.run(kit.payments.reconcile_async())

    assert kit.names(created.payment_id) == ["PaymentCreated", "PurchaseCompleted"]
    assert kit.fake.requests == []


def test_a_closed_async_client_is_refused_before_anything_is_recorded(kit: Kit) -> None:
    created = kit.completed()

    async def scenario(payments: Payments) -> None:
        assert payments.async_klarna is not None
        await payments.async_klarna.aclose()
        with pytest.raises(ConfigurationError, match="closed"):
            await payments.authorize_async(created.payment_id)
        with pytest.raises(ConfigurationError, match="closed"):
            await payments.reconcile_async()

    run(kit, scenario)

    assert kit.names(created.payment_id) == ["PaymentCreated", "PurchaseCompleted"]
    assert kit.fake.requests == []
