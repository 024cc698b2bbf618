"""Reconstruct one payment's audit trail from an SQLite database, with no key.

An auditor gets the database file and a payment id, nothing else: no cipher
key, no Klarna credentials. Only token fields are sealed in the stored events,
so the rest is readable; the store is opened read-only (it records nothing);
the hash chain is checked over the bytes as stored.

Run ``python examples/audit_from_database.py payments.sqlite PAYMENT_ID``
(``python examples/quickstart.py --db payments.sqlite`` makes such a file and
prints a payment id). Exit status: 0 when the chain checks out, 1 when a
record was altered (or the payment is unknown), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from uuid import UUID

from klarna_flow import AuditLog, ConfigurationError, InvalidInput, PaymentNotFound


def print_trail(log: AuditLog, payment_id: UUID) -> None:
    """Every recorded event: when, what, the state it led to, why, and its details."""
    for entry in log.trail(payment_id):
        before = entry.state_before or "-"
        after = entry.state_after or before
        print(
            f"v{entry.version} {entry.recorded_at.isoformat()} {entry.event}: "
            f"{before} -> {after} ({entry.cause_kind}:{entry.cause})"
        )
        if entry.details:
            print(f"    {json.dumps(dict(entry.details), sort_keys=True)}")


def print_history(log: AuditLog, payment_id: UUID, versions: int) -> None:
    """The payment as it stood after each version (rebuilt from its events)."""
    for version in range(1, versions + 1):
        payment = log.state_at(payment_id, version=version)
        print(f"after v{version}: {payment.state} (attempts {payment.authorization_attempts})")


def verify(log: AuditLog, payment_id: UUID) -> bool:
    """Check the payment's hash chain; say where it breaks, if it does."""
    report = log.verify(payment_id)
    if report.ok:
        print(f"chain ok: {report.events_checked} events verified")
        return True
    for finding in report.findings:
        print(f"chain BROKEN at v{finding.version}: {finding.problem}: {finding.detail}")
    return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("db", help="the SQLite file the payments were recorded in")
    parser.add_argument("payment_id", type=UUID, help="the payment to audit")
    args = parser.parse_args(argv)
    try:
        log = AuditLog.open(args.db, read_only=True)  # no cipher key: reads, never records
    except (InvalidInput, ConfigurationError) as e:  # missing, or no klarna_flow store
        print(f"error: {e}", file=sys.stderr)
        return 2
    with log:
        try:
            trail_length = len(log.trail(args.payment_id))
        except PaymentNotFound as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print_trail(log, args.payment_id)
        print_history(log, args.payment_id, trail_length)
        return 0 if verify(log, args.payment_id) else 1


if __name__ == "__main__":
    raise SystemExit(main())
