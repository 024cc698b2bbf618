"""A first payment end to end, against FakeKlarna, without a network.

The customer's side (creating and completing the payment request in Klarna)
is played by :class:`~klarna_flow.testing.FakeKlarna`; your side is
:class:`~klarna_flow.Payments`:

1. create the payment (remembering which flow you ask Klarna for);
2. initiate: the initial authorize call; Klarna answers with a payment request
   the customer goes through (step-up);
3. apply Klarna's signed ``completed`` notification (the session token arrives);
4. authorize within 60 minutes (the final call);
5. read the audit trail.

Run ``python -m examples.quickstart`` (in memory), or
``python -m examples.quickstart --db payments.sqlite`` to keep the events in
an SQLite file that ``examples/audit_from_database.py`` can read afterwards.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from uuid import UUID, uuid4

import httpx

from klarna_flow import Flow, Payments, StepUpConfig, TokenCipher
from klarna_flow.klarna import KlarnaClient
from klarna_flow.testing import FakeKlarna


def open_payments(fake: FakeKlarna, client: KlarnaClient, db: str | None) -> Payments:
    """In memory, or on an SQLite file when ``db`` is given."""
    if db is None:
        env = {"PERSISTENCE_MODULE": "eventsourcing.popo"}
        cipher = None  # in memory: a key that lives as long as the process
    else:
        env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": db}
        # A durable store seals tokens with a key: KLARNA_FLOW_CIPHER_KEY if
        # set, else a throwaway one (the tokens of this demo are dead within
        # the hour, and reading the audit trail needs no key).
        cipher = TokenCipher.from_env(os.environ) or TokenCipher.ephemeral()
    return Payments(
        env,
        cipher=cipher,
        klarna=client,
        partner_account_id=fake.partner_account_id,
        signing_keys=fake.signing_keys,
    )


def first_payment(payments: Payments, fake: FakeKlarna, reference: str) -> UUID:
    """Create, initiate, complete (by notification) and authorize one payment."""
    payment_id = payments.create(
        flow=Flow.AUTHORIZATION, amount=11800, currency="USD", reference=reference
    )
    # The initial call: Klarna answers with a payment request for the customer.
    stepped = payments.initiate(
        payment_id, step_up=StepUpConfig(return_url="https://shop.example/return")
    )
    request_id = stepped.payment_request_id
    assert request_id is not None
    print(f"initiate: {stepped.result}; send the customer to {stepped.payment_request_url}")
    # The customer completes the purchase; Klarna sends a signed notification.
    completed = fake.complete_payment_request(request_id)
    answer = payments.handle_notification(
        completed.notification.body, completed.notification.headers
    )
    print(f"notification: HTTP {answer.status_code} ({answer.outcome})")
    # Within 60 minutes: the final authorization.
    outcome = payments.authorize(payment_id)
    print(f"authorize: {outcome.result} -> {outcome.state}")
    print(f"payment transaction: {outcome.payment_transaction_id}")
    return payment_id


def print_trail(payments: Payments, payment_id: UUID) -> None:
    """One line per recorded event, secrets masked."""
    for entry in payments.audit_trail(payment_id):
        before = entry.state_before or "-"
        after = entry.state_after or before
        print(
            f"  v{entry.version} {entry.recorded_at:%H:%M:%S} {entry.event:<22} "
            f"{before:>11} -> {after:<11} {entry.cause_kind}:{entry.cause}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--db", help="an SQLite file to keep the events in (default: memory)")
    parser.add_argument(
        "--reference",
        default=f"order-{uuid4().hex[:8]}",
        help="your payment reference (default: a new one, so runs can share a --db)",
    )
    args = parser.parse_args(argv)

    fake = FakeKlarna()
    with KlarnaClient(fake.api_key, transport=httpx.MockTransport(fake)) as client:
        payments = open_payments(fake, client, args.db)
        try:
            payment_id = first_payment(payments, fake, args.reference)
            print(f"payment {payment_id}:")
            print_trail(payments, payment_id)
        finally:
            payments.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
