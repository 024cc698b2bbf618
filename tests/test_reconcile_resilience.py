"""reconcile goes on past a payment it cannot re-send, and says which."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import httpx
import pytest

from klarna_flow import (
    Flow,
    KlarnaClient,
    OutcomeResult,
    Payments,
    PaymentState,
    RetryPolicy,
    TokenCipher,
    generate_key,
)
from klarna_flow.testing import FakeKlarna, ManualClock

RETRY = RetryPolicy(max_attempts=2, initial_backoff=0.001, max_backoff=0.001)


def _pending(payments: Payments, fake: FakeKlarna, reference: str) -> UUID:
    token = fake.issue_session_token(amount=100, currency="EUR")
    payment_id = payments.create(
        flow=Flow.AUTHORIZATION, amount=100, currency="EUR", reference=reference
    )
    payments.complete(payment_id, session_token=token)
    for _ in range(RETRY.max_attempts):
        fake.timeout_next(after_processing=True)
    assert payments.authorize(payment_id).result is OutcomeResult.PENDING
    return payment_id


def test_a_payment_sealed_under_a_missing_key_is_skipped_and_the_rest_resolved(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    fake = FakeKlarna(clock=clock)
    key1, key2 = generate_key(), generate_key()
    db = tmp_path / "p.sqlite"

    def open_app(cipher: TokenCipher) -> Payments:
        client = KlarnaClient(fake.api_key, transport=httpx.MockTransport(fake), retry=RETRY)
        return Payments.sqlite(
            db,
            clock=clock,
            cipher=cipher,
            klarna=client,
            partner_account_id=fake.partner_account_id,
        )

    old = open_app(TokenCipher(key1))
    sealed_with_key1 = _pending(old, fake, "old-key")
    old.close()
    new = open_app(TokenCipher(key2))
    sealed_with_key2 = _pending(new, fake, "new-key")
    clock.advance(timedelta(minutes=6))

    with caplog.at_level(logging.WARNING, logger="klarna_flow"):
        outcomes = new.reconcile()

    assert [o.payment_id for o in outcomes] == [sealed_with_key2]
    assert outcomes[0].result is OutcomeResult.APPROVED
    assert new.get(sealed_with_key1).state is PaymentState.AUTHORIZING
    [warning] = [r for r in caplog.records if "reconcile skipped" in r.getMessage()]
    assert str(sealed_with_key1) in warning.getMessage()
    assert "ConfigurationError" in warning.getMessage()
    new.close()

    # With the old key configured again, the skipped one resolves: one transaction each.
    both = open_app(TokenCipher(key2, old=[key1]))
    [late] = both.reconcile()
    assert late.payment_id == sealed_with_key1
    assert late.result is OutcomeResult.APPROVED
    assert len(fake.transactions_for("old-key")) == 1
    assert len(fake.transactions_for("new-key")) == 1
    both.close()


def test_the_cipher_key_may_come_in_the_env_argument(tmp_path: Path) -> None:
    key = generate_key()
    payments = Payments.sqlite(tmp_path / "p.sqlite", env={"KLARNA_FLOW_CIPHER_KEY": key})
    assert payments.cipher.current_key_id == TokenCipher(key).current_key_id
    payments.close()
