"""Shared pieces of the authorization-flow tests: ``Payments`` wired to a ``FakeKlarna``.

A :class:`Kit` holds one application, the fake it talks to (in process, through
``httpx.MockTransport``) and the clock both share. Each test module builds its
own ``kit`` fixture with :func:`open_kit` from the ``make_payments`` fixture of
``tests/conftest.py``, so the contract tests run on every store.

Run as a script, this module is the child process of the crash test: see
:func:`authorize_in_child`.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal
from uuid import UUID

import attrs
import httpx

from klarna_flow import Flow, Payment, Payments
from klarna_flow.klarna import KlarnaClient, RetryPolicy
from klarna_flow.testing import CompletedRequest, FakeKlarna, ManualClock

__all__ = [
    "AMOUNT",
    "API_KEY",
    "CURRENCY",
    "RETRY",
    "Created",
    "Kit",
    "MakePayments",
    "authorize_in_child",
    "event_names",
    "open_kit",
]

MakePayments = Callable[..., Payments]
Via = Literal["notification", "command"]

API_KEY = "test-api-key"
AMOUNT = 11800
CURRENCY = "USD"
# Three attempts, no real waiting: 5xx, 429 and lost answers are retried at once.
RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.001)


@attrs.frozen
class Created:
    """A payment recorded by the application and its payment request at the fake."""

    payment_id: UUID
    payment_request_id: str
    reference: str


@attrs.define
class Kit:
    """An application, the fake Klarna it calls, and their shared clock."""

    payments: Payments
    fake: FakeKlarna
    clock: ManualClock
    _refs: Iterator[int] = attrs.field(factory=itertools.count)

    def create(self, flow: Flow = Flow.AUTHORIZATION) -> Created:
        """A ``CREATED`` payment whose payment request exists at the fake."""
        request_id = self.fake.create_payment_request(
            amount=AMOUNT, currency=CURRENCY, flow=flow.value
        )
        reference = f"order-{next(self._refs)}"
        payment_id = self.payments.create(
            flow=flow,
            amount=AMOUNT,
            currency=CURRENCY,
            reference=reference,
            payment_request_id=request_id,
        )
        return Created(payment_id, request_id, reference)

    def complete(self, created: Created, via: Via = "notification") -> CompletedRequest:
        """The customer completes at the fake; the application learns it ``via``."""
        done = self.fake.complete_payment_request(created.payment_request_id)
        if via == "notification":
            result = self.payments.handle_notification(
                done.notification.body, done.notification.headers
            )
            assert (result.status_code, result.outcome) == (200, "applied"), result
        else:
            self.payments.complete(
                created.payment_id,
                session_token=done.session_token,
                customer_token=done.customer_token,
            )
        return done

    def completed(self, flow: Flow = Flow.AUTHORIZATION, via: Via = "notification") -> Created:
        """A ``COMPLETED`` payment of ``flow``."""
        created = self.create(flow)
        self.complete(created, via)
        return created

    def events(self, payment_id: UUID) -> list[Payment.Event]:
        return list(self.payments.stored_events(payment_id))

    def names(self, payment_id: UUID) -> list[str]:
        return event_names(self.payments, payment_id)

    def sent_keys(self) -> list[str]:
        """The ``Klarna-Idempotency-Key`` of every request the fake received."""
        return [r.headers["Klarna-Idempotency-Key"] for r in self.fake.requests]


def event_names(payments: Payments, payment_id: UUID) -> list[str]:
    """The class names of a payment's recorded events, in order."""
    return [type(e).__name__ for e in payments.stored_events(payment_id)]


def klarna_client(
    handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any
) -> KlarnaClient:
    """A sync client sending to ``handler`` in process."""
    kwargs.setdefault("retry", RETRY)
    return KlarnaClient(API_KEY, transport=httpx.MockTransport(handler), **kwargs)


@contextmanager
def open_kit(make_payments: MakePayments, clock: ManualClock, **kwargs: Any) -> Iterator[Kit]:
    """A :class:`Kit` on the store ``make_payments`` builds on; the client is closed after."""
    fake = FakeKlarna(clock=clock)
    with klarna_client(fake) as client:
        payments = make_payments(
            klarna=client,
            signing_keys=fake.signing_keys,
            partner_account_id=fake.partner_account_id,
            **kwargs,
        )
        yield Kit(payments, fake, clock)


def authorize_in_child(db_path: str, base_url: str, payment_id: str) -> None:
    """Authorize one payment on an SQLite file against Klarna at ``base_url``.

    The crash test runs this in a child process and kills it with SIGKILL
    while the HTTP call is in flight. The cipher key comes from
    ``KLARNA_FLOW_CIPHER_KEY`` in the environment, as in production.
    """
    client = KlarnaClient(API_KEY, base_url=base_url, timeout=60.0, retry=RETRY)
    payments = Payments.sqlite(db_path, klarna=client)
    payments.authorize(UUID(payment_id))
    # Only reached if the parent let the call finish (it never does).
    payments.close()
    client.close()


if __name__ == "__main__":  # pragma: no cover - runs in the crash test's child
    if os.environ.get("KLARNA_FLOW_CIPHER_KEY") is None:
        sys.exit("KLARNA_FLOW_CIPHER_KEY is required")
    authorize_in_child(*sys.argv[1:4])
