"""Code a platform engineer writes against klarna_flow's public API, checked by mypy.

Modelled on structlog's ``tests/typing/api.py``: ``mypy --strict`` (whose
``files`` include ``tests/``) checks this module as users' code would be
checked, and ``typing.assert_type`` pins the types the main calls return.
Only public import paths are used: ``klarna_flow``, ``klarna_flow.klarna``
and ``klarna_flow.testing``.

It is not a test module (pytest collects ``test_*.py`` only) and importing it
runs nothing. ``python -m tests.typing.api`` runs it once, in memory, against
FakeKlarna.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, assert_type
from uuid import UUID, uuid4

import httpx

import klarna_flow
from klarna_flow import (
    AuditEntry,
    AuditLog,
    AuthorizationOutcome,
    Clock,
    CommandRefused,
    Finding,
    Flow,
    IndexRow,
    InvalidInput,
    KlarnaAPIError,
    KlarnaError,
    KlarnaRateLimited,
    NotificationOutcome,
    NotificationResult,
    OutcomeResult,
    Payment,
    PaymentNotFound,
    Payments,
    PaymentState,
    TokenCipher,
    VerificationReport,
    generate_key,
)
from klarna_flow.klarna import (
    AsyncKlarnaClient,
    AuthorizationResponse,
    AuthorizationResult,
    KlarnaClient,
    PaymentTransaction,
    RetryPolicy,
)
from klarna_flow.testing import (
    CompletedRequest,
    FakeKlarna,
    ManualClock,
    RecordedTransaction,
    SignedNotification,
)

FAST = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.01)


def testing_doubles() -> tuple[FakeKlarna, ManualClock]:
    """A ManualClock is a Clock; FakeKlarna plays Klarna and keeps what happened."""
    clock = ManualClock()
    as_clock: Clock = clock  # structural: anything with now()
    assert_type(as_clock.now(), datetime)
    assert_type(clock.advance(timedelta(minutes=1)), datetime)
    fake = FakeKlarna(clock=clock)
    assert_type(fake.api_key, str)
    assert_type(fake.partner_account_id, str)
    assert_type(fake.signing_keys, dict[str, bytes])
    assert_type(fake.requests, list[httpx.Request])
    assert_type(fake.transactions, list[RecordedTransaction])
    return fake, clock


def open_payments(fake: FakeKlarna, clock: ManualClock) -> Payments:
    """In memory (no ``env``), with a sync client served in process by the fake."""
    client = KlarnaClient(fake.api_key, transport=httpx.MockTransport(fake), retry=FAST)
    assert_type(client.retry, RetryPolicy)
    assert_type(TokenCipher.ephemeral(), TokenCipher)
    assert_type(generate_key(), str)
    return Payments(
        clock=clock,
        klarna=client,
        partner_account_id=fake.partner_account_id,
        signing_keys=fake.signing_keys,
    )


def commands(payments: Payments, fake: FakeKlarna, clock: ManualClock) -> UUID:
    """Create, complete by notification, authorize: the return types of the commands."""
    request_id = fake.create_payment_request(amount=11800, currency="USD")
    payment_id = payments.create(
        flow=Flow.AUTHORIZATION,
        amount=11800,
        currency="USD",
        reference="order-1",
        payment_request_id=request_id,
    )
    assert_type(payment_id, UUID)

    completed = fake.complete_payment_request(request_id)
    assert_type(completed, CompletedRequest)
    assert_type(completed.notification, SignedNotification)
    answer = payments.handle_notification(
        completed.notification.body, completed.notification.headers
    )
    assert_type(answer, NotificationResult)
    assert_type(answer.outcome, NotificationOutcome)
    assert_type(answer.payment_id, UUID | None)
    assert_type(answer.status_code, int)
    assert_type(answer.acknowledged, bool)

    outcome = payments.authorize(payment_id)
    assert_type(outcome, AuthorizationOutcome)
    assert_type(outcome.result, OutcomeResult)
    assert_type(outcome.state, PaymentState)
    assert_type(outcome.payment_transaction_id, str | None)
    assert_type(outcome.error, KlarnaError | None)
    assert_type(payments.outcome(payment_id), AuthorizationOutcome | None)

    clock.advance(timedelta(hours=2))
    assert_type(payments.expire_overdue(), list[UUID])
    assert_type(payments.reconcile(older_than=timedelta(minutes=5)), list[AuthorizationOutcome])
    return payment_id


def queries(payments: Payments, payment_id: UUID) -> None:
    """The payment, its history, the read models."""
    payment = payments.get(payment_id)
    assert_type(payment, Payment)
    assert_type(payment.state, PaymentState)
    assert_type(payment.flow, Flow)
    assert_type(payment.authorize_by, datetime | None)
    assert_type(payments.state_at(payment_id, version=1), Payment)
    assert_type(payments.find_by_payment_request("krn:unknown"), UUID | None)

    rows = payments.read_model(PaymentState.AUTHORIZED)
    assert_type(rows, list[IndexRow])
    for row in rows:
        assert_type(row.payment_id, UUID)
        assert_type(row.deadline, float | None)
    assert_type(payments.counts_by_state(), dict[str, int])


def audit(payments: Payments, payment_id: UUID) -> None:
    """Audit trail, export and verification, from Payments and from a keyless AuditLog."""
    trail = payments.audit_trail(payment_id)
    assert_type(trail, list[AuditEntry])
    for entry in trail:
        assert_type(entry.recorded_at, datetime)
        assert_type(entry.state_after, PaymentState | None)
        assert_type(entry.as_dict(), dict[str, Any])

    report = payments.verify()
    assert_type(report, VerificationReport)
    assert_type(report.ok, bool)
    assert_type(report.findings, tuple[Finding, ...])
    assert_type(report.finding, Finding | None)
    assert_type(payments.export_audit(io.StringIO()), int)

    with payments.audit_log() as log:
        assert_type(log, AuditLog)
        assert_type(log.trail(payment_id), list[AuditEntry])
        assert_type(log.verify(payment_id), VerificationReport)


def errors(payments: Payments, payment_id: UUID) -> None:
    """Errors carry their context as typed attributes."""
    try:
        payments.cancel(payment_id)  # authorized, then expired: a refusal
    except CommandRefused as refused:
        assert_type(refused.payment_id, UUID | None)
        assert_type(refused.command, str)
        assert_type(refused.state, str)
    try:
        payments.get(uuid4())
    except PaymentNotFound as missing:
        assert_type(missing.payment_id, UUID)
    try:
        payments.read_model("NOT_A_STATE")
    except InvalidInput as invalid:
        assert_type(invalid.field, str)


def call_klarna(client: KlarnaClient, fake: FakeKlarna) -> AuthorizationResponse | None:
    """The Klarna client on its own, and the attributes of its errors."""
    fake.fail_next(429, retry_after=0, times=2)
    try:
        response = client.authorize(
            partner_account_id=fake.partner_account_id,
            session_token=fake.issue_session_token(amount=500, currency="EUR"),
            currency="EUR",
            amount=500,
            reference="order-2",
            idempotency_key=str(uuid4()),
        )
    except KlarnaRateLimited as limited:
        assert_type(limited.retry_after, float | None)
        assert_type(limited.status_code, int)
    except KlarnaAPIError as failed:
        assert_type(failed.error_code, str | None)
        assert_type(failed.validation_errors, tuple[Mapping[str, Any], ...])
    except KlarnaError as error:
        assert_type(error.correlation_id, str | None)
        assert_type(error.may_have_acted, bool)
    else:
        assert_type(response.result, AuthorizationResult)
        assert_type(response.transaction, PaymentTransaction | None)
        return response
    return None


async def asynchronously(fake: FakeKlarna, clock: ManualClock) -> AuthorizationOutcome:
    """The async client, and the async commands of Payments."""
    transport = httpx.MockTransport(fake)
    async with AsyncKlarnaClient(fake.api_key, transport=transport, retry=FAST) as client:
        assert_type(client, AsyncKlarnaClient)
        account = fake.partner_account_id
        with Payments(clock=clock, async_klarna=client, partner_account_id=account) as payments:
            assert_type(payments, Payments)
            payment_id = payments.create(
                flow="AUTHORIZATION", amount=2500, currency="EUR", reference="order-3"
            )
            token = fake.issue_session_token(amount=2500, currency="EUR")
            payments.complete(payment_id, session_token=token)
            outcome = await payments.authorize_async(payment_id)
            assert_type(outcome, AuthorizationOutcome)
            return outcome


def main() -> None:
    fake, clock = testing_doubles()
    with open_payments(fake, clock) as payments:
        payment_id = commands(payments, fake, clock)
        queries(payments, payment_id)
        audit(payments, payment_id)
        errors(payments, payment_id)
    with KlarnaClient(fake.api_key, transport=httpx.MockTransport(fake), retry=FAST) as client:
        call_klarna(client, fake)
    outcome = asyncio.run(asynchronously(fake, clock))
    assert outcome.result is OutcomeResult.APPROVED
    print(f"klarna_flow {klarna_flow.__version__}: the typed usage ran")


if __name__ == "__main__":
    main()
