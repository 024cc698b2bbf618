"""Running authorizations: one call (sync or async), and reconcile's re-sends.

:mod:`klarna_flow._app.authorization` records the intent and the outcome;
this module calls Klarna between the two, on the ledger port only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from uuid import UUID

from klarna_flow._app.authorization import (
    AUTHORIZE,
    RECONCILE,
    AuthorizationOutcome,
    Intent,
    record_intent,
    record_not_resent,
    record_outcome,
    resume_intent,
)
from klarna_flow._app.initiation import INITIATE, InitiateOptions, record_initiation
from klarna_flow._app.ports import AuthorizationLedger
from klarna_flow._domain.lifecycle import PaymentState
from klarna_flow._errors import InvalidInput, KlarnaError, KlarnaFlowError
from klarna_flow._shared import telemetry
from klarna_flow._store.read_models import IndexRow
from klarna_flow.klarna import AsyncKlarnaClient, AuthorizationResponse, KlarnaClient

__all__ = [
    "authorize",
    "authorize_async",
    "initiate",
    "initiate_async",
    "reconcile",
    "reconcile_async",
    "stale_intents",
]

logger = logging.getLogger("klarna_flow")


def authorize(
    ledger: AuthorizationLedger, client: KlarnaClient, payment_id: UUID
) -> AuthorizationOutcome:
    """Record the intent, call Klarna, record the outcome."""
    intent = record_intent(ledger, payment_id)
    return _send(ledger, client, intent, cause=AUTHORIZE)


async def authorize_async(
    ledger: AuthorizationLedger, client: AsyncKlarnaClient, payment_id: UUID
) -> AuthorizationOutcome:
    """:func:`authorize` with the async client; storage runs in a thread."""
    intent = await asyncio.to_thread(record_intent, ledger, payment_id)
    return await _send_async(ledger, client, intent, cause=AUTHORIZE)


def initiate(
    ledger: AuthorizationLedger, client: KlarnaClient, payment_id: UUID, options: InitiateOptions
) -> AuthorizationOutcome:
    """Record the initial call's intent, call Klarna, record the outcome."""
    intent = record_initiation(ledger, payment_id, options)
    return _send(ledger, client, intent, cause=INITIATE)


async def initiate_async(
    ledger: AuthorizationLedger,
    client: AsyncKlarnaClient,
    payment_id: UUID,
    options: InitiateOptions,
) -> AuthorizationOutcome:
    """:func:`initiate` with the async client; storage runs in a thread."""
    intent = await asyncio.to_thread(record_initiation, ledger, payment_id, options)
    return await _send_async(ledger, client, intent, cause=INITIATE)


def reconcile(
    ledger: AuthorizationLedger, client: KlarnaClient, intents: Iterable[Intent]
) -> list[AuthorizationOutcome]:
    """Re-send each recorded intent; a payment that cannot be re-sent is logged and skipped."""
    outcomes = []
    for intent in intents:
        try:
            if not intent.may_resend(ledger.now()):
                outcomes.append(_counted(record_not_resent(ledger, intent), RECONCILE))
                continue
            outcomes.append(_send(ledger, client, intent, cause=RECONCILE))
        except KlarnaFlowError as e:
            _skipped(intent.payment_id, e)
    return outcomes


async def reconcile_async(
    ledger: AuthorizationLedger, client: AsyncKlarnaClient, intents: Iterable[Intent]
) -> list[AuthorizationOutcome]:
    """:func:`reconcile` with the async client, the calls sent concurrently."""

    async def resend(intent: Intent) -> AuthorizationOutcome | None:
        try:
            if not intent.may_resend(ledger.now()):
                outcome = await asyncio.to_thread(record_not_resent, ledger, intent)
                return _counted(outcome, RECONCILE)
            return await _send_async(ledger, client, intent, cause=RECONCILE)
        except KlarnaFlowError as e:
            _skipped(intent.payment_id, e)
            return None

    outcomes = await asyncio.gather(*(resend(i) for i in intents))
    return [o for o in outcomes if o is not None]


def stale_intents(
    ledger: AuthorizationLedger, authorizing: Iterable[IndexRow], older_than: timedelta
) -> list[Intent]:
    """The recorded intents of the ``authorizing`` payments older than ``older_than``."""
    if not isinstance(older_than, timedelta) or older_than < timedelta(0):
        raise InvalidInput("older_than", "must be a non-negative timedelta")
    cutoff = (ledger.now() - older_than).timestamp()
    intents = []
    for row in authorizing:
        if row.since > cutoff:
            continue
        try:
            payment = ledger.get(row.payment_id)
            if payment.state is PaymentState.AUTHORIZING:
                intents.append(resume_intent(ledger, payment))
        except KlarnaFlowError as e:
            _skipped(row.payment_id, e)
    return intents


def _send(
    ledger: AuthorizationLedger, client: KlarnaClient, intent: Intent, *, cause: str
) -> AuthorizationOutcome:
    response: AuthorizationResponse | None = None
    error: KlarnaError | None = None
    with _observed(intent, cause):
        try:
            response = client.authorize(**intent.request())
        except KlarnaError as e:
            error = e
        return _counted(record_outcome(ledger, intent, response, error, cause=cause), cause)


async def _send_async(
    ledger: AuthorizationLedger, client: AsyncKlarnaClient, intent: Intent, *, cause: str
) -> AuthorizationOutcome:
    response: AuthorizationResponse | None = None
    error: KlarnaError | None = None
    with _observed(intent, cause):
        try:
            response = await client.authorize(**intent.request())
        except KlarnaError as e:
            error = e
        outcome = await asyncio.to_thread(
            record_outcome, ledger, intent, response, error, cause=cause
        )
        return _counted(outcome, cause)


@contextmanager
def _observed(intent: Intent, cause: str) -> Iterator[None]:
    """The call's facts on the command's span; a span of its own for each re-send."""
    payment = intent.payment
    attributes = {
        "klarna_flow.payment_id": str(intent.payment_id),
        "klarna_flow.flow": intent.flow.value,
        "klarna_flow.call": intent.call,
        "klarna_flow.attempt": None if payment is None else payment.authorization_attempts,
    }
    if cause != RECONCILE:
        telemetry.annotate(attributes)
        yield
        return
    with telemetry.span("klarna_flow.resend", attributes):
        yield


def _counted(outcome: AuthorizationOutcome, cause: str) -> AuthorizationOutcome:
    """Count the recorded outcome (and set it on the current span)."""
    result = outcome.result.value
    telemetry.annotate({"klarna_flow.outcome": result, "klarna_flow.state": outcome.state.value})
    telemetry.count_outcome(cause.removeprefix("command:"), result)
    return outcome


def _skipped(payment_id: UUID, error: KlarnaFlowError) -> None:
    logger.warning("reconcile skipped payment %s: %s: %s", payment_id, type(error).__name__, error)
