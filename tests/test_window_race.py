"""The window closes while another worker requests authorization: the late
worker reports what happened, not what it meant to record."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from klarna_flow import (
    AuthorizationInProgress,
    AuthorizationWindowElapsed,
    Flow,
    Payments,
    PaymentState,
    TokenCipher,
)
from klarna_flow._app.authorization import _expire_if_window_elapsed
from klarna_flow.testing import ManualClock

TOKEN = "krn:payment:eu1:klarna-network-session-token:window-race"


def _two_workers(tmp_path: Path) -> tuple[Payments, Payments, ManualClock]:
    clock, cipher = ManualClock(), TokenCipher.ephemeral()
    db = tmp_path / "p.sqlite"
    return (
        Payments.sqlite(db, clock=clock, cipher=cipher),
        Payments.sqlite(db, clock=clock, cipher=cipher),
        clock,
    )


def test_a_late_expiry_that_loses_to_a_request_reports_authorization_in_progress(
    tmp_path: Path,
) -> None:
    late, early, clock = _two_workers(tmp_path)
    payment_id = early.create(flow=Flow.AUTHORIZATION, amount=1, currency="EUR", reference="w")
    early.complete(payment_id, session_token=TOKEN)
    stale = late.get(payment_id)  # loaded just before the window closed
    clock.advance(timedelta(minutes=59))
    current = early.get(payment_id)
    current.request_authorization(idempotency_key="k-1", now=early.now())
    early._store.save_payment(current)  # the other worker got in first
    clock.advance(timedelta(minutes=2))

    with pytest.raises(AuthorizationInProgress):
        _expire_if_window_elapsed(late._ledger, stale, late.now())

    assert late.get(payment_id).state is PaymentState.AUTHORIZING


def test_a_late_expiry_that_loses_to_another_expiry_reports_the_state_found(
    tmp_path: Path,
) -> None:
    late, early, clock = _two_workers(tmp_path)
    payment_id = early.create(flow=Flow.AUTHORIZATION, amount=1, currency="EUR", reference="w2")
    early.complete(payment_id, session_token=TOKEN)
    stale = late.get(payment_id)
    clock.advance(timedelta(minutes=61))
    early.expire(payment_id)

    with pytest.raises(AuthorizationWindowElapsed, match="EXPIRED") as caught:
        _expire_if_window_elapsed(late._ledger, stale, late.now())

    assert caught.value.state == "EXPIRED"
    assert len(list(late.stored_events(payment_id))) == 3  # nothing recorded twice
