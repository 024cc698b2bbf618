"""flow_end_to_end: create, complete and authorize against FakeKlarna, on SQLite.

Ours: ``PAYMENTS`` flows of ``Payments.create`` / ``complete`` / ``authorize``
with a ``KlarnaClient`` on ``httpx.MockTransport(FakeKlarna)``. Baseline: the
same flows written by hand on a bare eventsourcing aggregate (the same four
events and fields, the session token sealed with the same cipher) in a plain
``eventsourcing.application.Application``, authorizing with one raw
``httpx.Client.post`` (same headers, same body) on its own FakeKlarna. The
fake's work (payment requests, completion, the authorize decision) is in both.

Both applications record into one SQLite file (the baseline in a table of its
own), runs alternate, and the best of each counts. ratio = ours / baseline
(goal <= 1.30).
"""

from __future__ import annotations

import gc
import itertools
import json
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
from eventsourcing.application import Application
from eventsourcing.utils import get_topic

from benchmarks._bare import BarePayment, BareRecorder
from benchmarks._harness import report
from klarna_flow import Flow, Payments, SealedSecret, TokenCipher, generate_key
from klarna_flow.klarna import KlarnaClient
from klarna_flow.testing import FakeKlarna, ManualClock

__all__ = ["BENCHMARKS"]

PAYMENTS = 300
REPEAT = 5
AMOUNT = 11_800
CURRENCY = "EUR"
API_KEY = "bench-api-key"
KEYS = uuid.UUID("6f1b8e0c-1d2a-4c3b-9e4f-5a6b7c8d9e0f")


# -- the baseline: a bare aggregate and a hand-written authorize -------------------


class Baseline(Application[UUID]):
    name = "Baseline"

    def __init__(self, env: dict[str, str], fake: FakeKlarna, cipher: TokenCipher) -> None:
        super().__init__(env)
        self.fake = fake
        self.cipher = cipher
        self.http = httpx.Client(transport=httpx.MockTransport(fake))

    def create(self, reference: str, payment_request_id: str) -> UUID:
        now = datetime.now(UTC)
        payment = BarePayment._create(
            BarePayment.Created,
            id=uuid.uuid5(KEYS, reference),
            flow="AUTHORIZATION",
            amount=AMOUNT,
            currency=CURRENCY,
            reference=reference,
            partner_account_id=self.fake.partner_account_id,
            payment_request_id=payment_request_id,
            request_expires_at=now + timedelta(hours=3),
            cause="command:create",
        )
        self.save(payment)
        return payment.id

    def complete(self, payment_id: UUID, session_token: str) -> None:
        payment: BarePayment = self.repository.get(payment_id)
        sealed = self.cipher.seal(session_token, aad=payment_id.bytes + b"session_token")
        payment.trigger_event(
            BarePayment.Completed,
            cause="command:complete",
            completed_at=datetime.now(UTC),
            session_token={"k": sealed.key_id, "n": sealed.nonce, "c": sealed.ciphertext},
            customer_token=None,
            payment_request_id=None,
        )
        self.save(payment)

    def authorize(self, payment_id: UUID) -> str:
        payment: BarePayment = self.repository.get(payment_id)
        key = str(uuid.uuid5(KEYS, f"{payment_id}:{payment.authorization_attempts + 1}"))
        payment.trigger_event(
            BarePayment.AuthorizationRequested,
            cause="command:authorize",
            idempotency_key=key,
            attempt=payment.authorization_attempts + 1,
        )
        self.save(payment)
        assert payment.session_token is not None
        sealed = payment.session_token
        token = self.cipher.open(
            SealedSecret(sealed["k"], sealed["n"], sealed["c"]),
            aad=payment_id.bytes + b"session_token",
        )
        response = self.http.post(
            f"http://klarna.test/v2/accounts/{payment.partner_account_id}/payment/authorize",
            headers={
                "Authorization": f"Basic {API_KEY}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": "klarna-flow/bench",
                "Klarna-Network-Session-Token": token,
                "Klarna-Idempotency-Key": key,
                "Partner-Correlation-Id": str(payment_id),
            },
            content=json.dumps(
                {
                    "currency": payment.currency,
                    "request_payment_transaction": {
                        "amount": payment.amount,
                        "payment_transaction_reference": payment.reference,
                    },
                },
                separators=(",", ":"),
            ).encode(),
        )
        response.raise_for_status()
        answer = response.json()["payment_transaction_response"]
        assert answer["result"] == "APPROVED", answer
        transaction = answer["payment_transaction"]
        payment.trigger_event(
            BarePayment.Approved,
            cause="command:authorize",
            payment_transaction_id=transaction["payment_transaction_id"],
            correlation_id=response.headers.get("Klarna-Correlation-Id"),
            transaction_expires_at=datetime.fromisoformat(transaction["expires_at"]),
        )
        self.save(payment)
        return str(transaction["payment_transaction_id"])

    def close(self) -> None:
        self.http.close()
        super().close()


# -- the two sides on one file --------------------------------------------------------


@contextmanager
def _sides() -> Iterator[tuple[Payments, FakeKlarna, Baseline, FakeKlarna]]:
    with tempfile.TemporaryDirectory(prefix="klarna-flow-bench-") as folder:
        path = str(Path(folder) / "bench.sqlite")
        cipher = TokenCipher(generate_key())
        clock = ManualClock(datetime.now(UTC))
        ours_fake = FakeKlarna(api_key=API_KEY, clock=clock)
        base_fake = FakeKlarna(api_key=API_KEY, clock=clock)
        client = KlarnaClient(API_KEY, transport=httpx.MockTransport(ours_fake))
        ours = Payments.sqlite(
            path,
            clock=clock,
            cipher=cipher,
            klarna=client,
            partner_account_id=ours_fake.partner_account_id,
        )
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": path,
            "APPLICATION_RECORDER_TOPIC": get_topic(BareRecorder),
        }
        baseline = Baseline(env, base_fake, cipher)
        try:
            yield ours, ours_fake, baseline, base_fake
        finally:
            ours.close()
            client.close()
            baseline.close()


def _timed(run: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one run (GC paused while timing)."""
    gc.collect()
    gc.disable()
    try:
        start, cpu = time.perf_counter(), time.process_time()
        run()
        return time.perf_counter() - start, time.process_time() - cpu
    finally:
        gc.enable()


def flow_end_to_end() -> str:
    refs = itertools.count()
    with _sides() as (ours, ours_fake, baseline, base_fake):

        def run_ours() -> None:
            for _ in range(PAYMENTS):
                request_id = ours_fake.create_payment_request(amount=AMOUNT, currency=CURRENCY)
                payment_id = ours.create(
                    flow=Flow.AUTHORIZATION,
                    amount=AMOUNT,
                    currency=CURRENCY,
                    reference=f"order-{next(refs)}",
                    payment_request_id=request_id,
                )
                done = ours_fake.complete_payment_request(request_id)
                ours.complete(payment_id, session_token=done.session_token)
                ours.authorize(payment_id)

        def run_baseline() -> None:
            for _ in range(PAYMENTS):
                request_id = base_fake.create_payment_request(amount=AMOUNT, currency=CURRENCY)
                payment_id = baseline.create(f"order-{next(refs)}", request_id)
                done = base_fake.complete_payment_request(request_id)
                assert done.session_token is not None
                baseline.complete(payment_id, done.session_token)
                baseline.authorize(payment_id)

        ours_times, base_times = [], []
        for _ in range(REPEAT):
            ours_times.append(_timed(run_ours))
            base_times.append(_timed(run_baseline))
        assert len(ours_fake.transactions) == len(base_fake.transactions) == REPEAT * PAYMENTS
    (t_ours, _), (t_base, _) = min(ours_times), min(base_times)
    cpu_ours = min(cpu for _, cpu in ours_times)
    cpu_base = min(cpu for _, cpu in base_times)
    # Wall-clock time includes SQLite's fsyncs, which both sides pay alike;
    # the CPU figures show our own overhead without them.
    return report(
        "flow_end_to_end",
        t_ours / t_base,
        f"flows={PAYMENTS} ours={t_ours / PAYMENTS * 1e6:.0f}us "
        f"baseline={t_base / PAYMENTS * 1e6:.0f}us per flow "
        f"cpu_ours={cpu_ours / PAYMENTS * 1e6:.0f}us "
        f"cpu_baseline={cpu_base / PAYMENTS * 1e6:.0f}us "
        f"cpu_ratio={cpu_ours / cpu_base:.3f} store=sqlite-file goal<=1.30",
    )


BENCHMARKS: dict[str, Callable[[], Any]] = {"flow_end_to_end": flow_end_to_end}
