"""Tracing and metrics through OpenTelemetry's SDK, read back from its in-memory exporters.

The global providers can be set once per process: this module sets them on
first use and clears what was exported before each test. A last test runs a
payment in a child process where ``opentelemetry`` cannot be imported.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import httpx
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from klarna_flow import (
    AsyncKlarnaClient,
    Flow,
    KlarnaClient,
    OutcomeResult,
    Payments,
    PaymentState,
    RetryPolicy,
    StepUpConfig,
    WrongFlow,
)
from klarna_flow.testing import FakeKlarna, ManualClock

_refs = itertools.count()
RETURN_URL = "https://shop.example/return"


class Exported:
    """The spans and metric points the SDK exported."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.metrics = InMemoryMetricReader()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[self.metrics]))

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.finished() if s.name == name]

    def points(self, metric: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        found: list[Any] = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for item in scope.metrics:
                    if item.name == metric:
                        found.extend(item.data.data_points)
        return found

    def counted(self, metric: str, **attributes: str) -> int:
        return sum(
            int(p.value)
            for p in self.points(metric)
            if all(p.attributes.get(k) == v for k, v in attributes.items())
        )


_EXPORTED: list[Exported] = []


@pytest.fixture
def exported() -> Exported:
    if not _EXPORTED:
        _EXPORTED.append(Exported())
    found = _EXPORTED[0]
    found.spans.clear()
    return found


@pytest.fixture
def fake() -> FakeKlarna:
    return FakeKlarna(clock=ManualClock())


@pytest.fixture
def payments(fake: FakeKlarna) -> Iterator[Payments]:
    retry = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.001)
    client = KlarnaClient(fake.api_key, transport=httpx.MockTransport(fake), retry=retry)
    app = Payments(
        klarna=client,
        signing_keys=fake.signing_keys,
        partner_account_id=fake.partner_account_id,
        clock=fake.clock,
    )
    yield app
    app.close()
    client.close()


def new_payment(payments: Payments, flow: Flow = Flow.AUTHORIZATION) -> UUID:
    return payments.create(flow=flow, amount=11800, currency="EUR", reference=f"tel-{next(_refs)}")


def journey(payments: Payments, fake: FakeKlarna) -> tuple[UUID, str]:
    """Initiate, complete at the fake, handle the notification, authorize."""
    payment_id = new_payment(payments)
    outcome = payments.initiate(payment_id, step_up=StepUpConfig(return_url=RETURN_URL))
    assert outcome.payment_request_id is not None
    done = fake.complete_payment_request(outcome.payment_request_id)
    result = payments.handle_notification(done.notification.body, done.notification.headers)
    assert result.status_code == 200
    assert payments.authorize(payment_id).result is OutcomeResult.APPROVED
    assert done.session_token is not None
    return payment_id, done.session_token


def test_each_command_has_a_span_with_the_klarna_call_inside(
    exported: Exported, payments: Payments, fake: FakeKlarna
) -> None:
    payment_id, _ = journey(payments, fake)

    [authorize] = exported.named("klarna_flow.authorize")
    [call] = [s for s in exported.named("klarna authorize") if s.parent == authorize.context]
    assert authorize.attributes is not None
    assert call.attributes is not None
    assert authorize.attributes["klarna_flow.payment_id"] == str(payment_id)
    assert authorize.attributes["klarna_flow.flow"] == "AUTHORIZATION"
    assert authorize.attributes["klarna_flow.call"] == "FINAL"
    assert authorize.attributes["klarna_flow.attempt"] == 2
    assert authorize.attributes["klarna_flow.outcome"] == "APPROVED"
    assert authorize.attributes["klarna_flow.state"] == "AUTHORIZED"
    assert call.kind is SpanKind.CLIENT
    assert call.attributes["http.response.status_code"] == 200
    assert call.attributes["klarna.attempts"] == 1
    assert call.attributes["klarna.correlation_id"]
    assert call.attributes["klarna.partner_correlation_id"] == payment_id.hex
    [initiate] = exported.named("klarna_flow.initiate")
    assert initiate.attributes is not None
    assert initiate.attributes["klarna_flow.call"] == "INITIAL"
    assert initiate.attributes["klarna_flow.outcome"] == "STEP_UP_REQUIRED"
    [notification] = exported.named("klarna_flow.handle_notification")
    assert notification.attributes is not None
    assert notification.attributes["klarna_flow.outcome"] == "applied"
    assert notification.attributes["klarna_flow.payment_id"] == str(payment_id)
    assert [s.name for s in exported.named("klarna_flow.create")] == ["klarna_flow.create"]


def test_outcomes_notifications_and_latency_are_counted(
    exported: Exported, payments: Payments, fake: FakeKlarna
) -> None:
    outcomes = "klarna_flow.authorization.outcomes"
    before = exported.counted(outcomes, **{"klarna_flow.command": "authorize"})
    approved = {"klarna_flow.command": "authorize", "klarna_flow.outcome": "APPROVED"}
    approved_before = exported.counted(outcomes, **approved)
    applied = {"klarna_flow.outcome": "applied"}
    applied_before = exported.counted("klarna_flow.notifications", **applied)
    latency_before = sum(p.count for p in exported.points("klarna_flow.klarna.duration"))

    journey(payments, fake)
    fake.fail_next(503)  # a retried attempt: two latencies, one call
    journey(payments, fake)

    assert exported.counted(outcomes, **approved) - approved_before == 2
    assert exported.counted(outcomes, **{"klarna_flow.command": "authorize"}) - before == 2
    assert exported.counted("klarna_flow.notifications", **applied) - applied_before == 2
    latencies = sum(p.count for p in exported.points("klarna_flow.klarna.duration"))
    assert latencies - latency_before == 5  # 2 initial + 2 final + 1 retried attempt
    retried = [
        s
        for s in exported.named("klarna authorize")
        if s.attributes is not None and s.attributes["klarna.attempts"] == 2
    ]
    assert len(retried) == 1


def test_a_refused_command_marks_its_span_with_the_error_type_only(
    exported: Exported, payments: Payments, fake: FakeKlarna
) -> None:
    payment_id = new_payment(payments, Flow.TOKENIZATION)
    outcome = payments.initiate(payment_id, step_up=StepUpConfig(return_url=RETURN_URL))
    assert outcome.payment_request_id is not None
    done = fake.complete_payment_request(outcome.payment_request_id)
    payments.handle_notification(done.notification.body, done.notification.headers)

    with pytest.raises(WrongFlow):
        payments.authorize(payment_id)

    [span] = exported.named("klarna_flow.authorize")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "WrongFlow"
    assert span.attributes is not None
    assert span.attributes["error.type"] == "WrongFlow"
    assert span.events == ()  # no exception event: its message is not exported


def test_a_lost_answer_is_a_client_span_with_the_transport_error(
    exported: Exported, payments: Payments, fake: FakeKlarna
) -> None:
    payment_id = new_payment(payments)
    outcome = payments.initiate(payment_id, step_up=StepUpConfig(return_url=RETURN_URL))
    assert outcome.payment_request_id is not None
    done = fake.complete_payment_request(outcome.payment_request_id)
    payments.handle_notification(done.notification.body, done.notification.headers)
    fake.drop_next(after_processing=True)
    fake.drop_next()
    fake.drop_next()

    assert payments.authorize(payment_id).result is OutcomeResult.PENDING

    [call] = [
        s
        for s in exported.named("klarna authorize")
        if s.attributes is not None and s.attributes["klarna.attempts"] == 3
    ]
    assert call.status.status_code is StatusCode.ERROR
    assert call.attributes is not None
    assert str(call.attributes["error.type"]).startswith("Klarna")
    [command] = exported.named("klarna_flow.authorize")
    assert command.attributes is not None
    assert command.attributes["klarna_flow.outcome"] == "PENDING"
    assert payments.get(payment_id).state is PaymentState.AUTHORIZING


def test_no_secret_in_any_span_or_metric(
    exported: Exported, payments: Payments, fake: FakeKlarna
) -> None:
    _, session_token = journey(payments, fake)
    tokenizing = new_payment(payments, Flow.TOKENIZATION)
    outcome = payments.initiate(tokenizing, step_up=StepUpConfig(return_url=RETURN_URL))
    assert outcome.payment_request_id is not None
    done = fake.complete_payment_request(outcome.payment_request_id)
    payments.handle_notification(done.notification.body, done.notification.headers)
    assert payments.get(tokenizing).state is PaymentState.COMPLETED
    assert done.customer_token is not None

    dumped = "".join(s.to_json() for s in exported.finished())
    dumped += repr(exported.metrics.get_metrics_data())
    assert str(tokenizing) in dumped  # what was exported is here to be searched
    for secret in (fake.api_key, session_token, done.customer_token):
        assert secret not in dumped


def test_async_commands_have_spans_too(exported: Exported, fake: FakeKlarna) -> None:
    async def initiate() -> UUID:
        transport = httpx.MockTransport(fake)
        async with AsyncKlarnaClient(fake.api_key, transport=transport) as client:
            payments = Payments(
                async_klarna=client,
                signing_keys=fake.signing_keys,
                partner_account_id=fake.partner_account_id,
                clock=fake.clock,
            )
            payment_id = new_payment(payments)
            step_up = StepUpConfig(return_url=RETURN_URL)
            await payments.initiate_async(payment_id, step_up=step_up)
            return payment_id

    payment_id = asyncio.run(initiate())

    [command] = exported.named("klarna_flow.initiate")
    [call] = exported.named("klarna authorize")
    assert call.parent == command.context
    assert command.attributes is not None
    assert command.attributes["klarna_flow.payment_id"] == str(payment_id)
    assert command.attributes["klarna_flow.outcome"] == "STEP_UP_REQUIRED"


def test_without_opentelemetry_nothing_is_imported_and_payments_run() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if the extra were not installed
        import httpx
        from klarna_flow import Payments, KlarnaClient, StepUpConfig, OutcomeResult
        from klarna_flow._shared import telemetry
        from klarna_flow.testing import FakeKlarna
        fake = FakeKlarna()
        client = KlarnaClient(fake.api_key, transport=httpx.MockTransport(fake))
        payments = Payments(klarna=client, partner_account_id=fake.partner_account_id)
        payment_id = payments.create(
            flow="AUTHORIZATION", amount=100, currency="EUR", reference="no-otel"
        )
        step_up = StepUpConfig(return_url="https://a.example/")
        outcome = payments.initiate(payment_id, step_up=step_up)
        assert outcome.result is OutcomeResult.STEP_UP_REQUIRED, outcome
        assert telemetry.ENABLED is False
        loaded = [m for m in sys.modules if m.startswith("opentelemetry") and sys.modules[m]]
        print("loaded:", loaded)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "loaded: []"
