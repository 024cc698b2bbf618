"""flow_end_to_end: the whole step-up journey against FakeKlarna, on SQLite.

Ours: ``PAYMENTS`` journeys of ``Payments.create`` / ``initiate`` (the initial
authorize call with a step-up configuration and purchase data; Klarna answers
with a payment request) / ``handle_notification`` (the signed ``completed``
notification with the session token) / ``authorize`` (the final call,
repeating the initial payload), with a ``KlarnaClient`` on
``httpx.MockTransport(FakeKlarna)``.

Baseline: the same journeys written by hand on a bare eventsourcing aggregate
(the same six events and fields, the session token sealed with the same
cipher) in a plain ``eventsourcing.application.Application``, with raw
``httpx.Client.post`` calls (same headers, same bodies), the notification's
HMAC checked with ``hmac.compare_digest`` and its request found in a dict. The
fake's work (payment requests, completion, the authorize decisions) is in both.

Both applications record into one SQLite file (the baseline in a table of its
own), runs alternate, and the best of each counts. ratio = ours / baseline
(goal <= 1.15).
"""

from __future__ import annotations

import gc
import hashlib
import hmac
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
from klarna_flow import (
    Flow,
    LineItem,
    Payments,
    SealedSecret,
    StepUpConfig,
    SupplementaryPurchaseData,
    TokenCipher,
    generate_key,
)
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


STEP_UP = StepUpConfig(return_url="https://shop.example/return")
PURCHASE = SupplementaryPurchaseData(
    purchase_reference="bench",
    line_items=(LineItem(name="Sneakers", quantity=1, unit_price=AMOUNT, total_amount=AMOUNT),),
)


class Baseline(Application[UUID]):
    name = "Baseline"

    def __init__(self, env: dict[str, str], fake: FakeKlarna, cipher: TokenCipher) -> None:
        super().__init__(env)
        self.fake = fake
        self.cipher = cipher
        self.http = httpx.Client(transport=httpx.MockTransport(fake))
        self.by_request: dict[str, UUID] = {}
        self.keys = fake.signing_keys

    def _post(self, payment: BarePayment, key: str, body: dict[str, Any], token: str | None) -> Any:
        headers = {
            "Authorization": f"Basic {API_KEY}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "klarna-flow/bench",
            "Klarna-Idempotency-Key": key,
            "Partner-Correlation-Id": payment.id.hex,
        }
        if token is not None:
            headers["Klarna-Network-Session-Token"] = token
        response = self.http.post(
            f"http://klarna.test/v2/accounts/{payment.partner_account_id}/payment/authorize",
            headers=headers,
            content=json.dumps(body, separators=(",", ":")).encode(),
        )
        response.raise_for_status()
        return response

    def _request(self, payment: BarePayment, call: str, payload: Any = None) -> str:
        attempt = payment.authorization_attempts + 1
        key = str(uuid.uuid5(KEYS, f"{payment.id}:{attempt}"))
        payment.trigger_event(
            BarePayment.AuthorizationRequested,
            cause=f"command:{call}",
            idempotency_key=key,
            attempt=attempt,
            call=call.upper(),
            payload=payload,
        )
        self.save(payment)
        return key

    def create(self, reference: str) -> UUID:
        now = datetime.now(UTC)
        payment = BarePayment._create(
            BarePayment.Created,
            id=uuid.uuid5(KEYS, reference),
            flow="AUTHORIZATION",
            amount=AMOUNT,
            currency=CURRENCY,
            reference=reference,
            partner_account_id=self.fake.partner_account_id,
            payment_request_id=None,
            request_expires_at=now + timedelta(hours=3),
            cause="command:create",
        )
        self.save(payment)
        return payment.id

    def initiate(self, payment_id: UUID) -> str:
        payment: BarePayment = self.repository.get(payment_id)
        payload = {"step_up": STEP_UP.to_wire(), "purchase": PURCHASE.to_wire()}
        key = self._request(payment, "initiate", payload)
        body = {
            "currency": payment.currency,
            "request_payment_transaction": {
                "amount": payment.amount,
                "payment_transaction_reference": payment.reference,
            },
            "supplementary_purchase_data": payload["purchase"],
            "step_up_config": payload["step_up"],
        }
        response = self._post(payment, key, body, None)
        answer = response.json()
        assert answer["payment_transaction_response"]["result"] == "STEP_UP_REQUIRED"
        request = answer["payment_request"]
        interaction = request["state_context"]["customer_interaction"]
        payment.trigger_event(
            BarePayment.StepUpRequired,
            cause="command:initiate",
            correlation_id=response.headers.get("Klarna-Correlation-Id"),
            payment_request_id=request["payment_request_id"],
            payment_request_url=interaction["payment_request_url"],
            request_expires_at=datetime.fromisoformat(request["expires_at"][:26] + "+00:00"),
            method=interaction["method"],
        )
        self.save(payment)
        self.by_request[request["payment_request_id"]] = payment_id
        return str(request["payment_request_id"])

    def complete(self, body: bytes, headers: dict[str, str]) -> None:
        secret = self.keys[headers["Klarna-Signing-Key-Id"]]
        digest = hmac.new(secret, body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(digest, headers["Klarna-Signature"].lower())
        envelope = json.loads(body)
        payload = envelope["payload"]
        payment_id = self.by_request[payload["payment_request_id"]]
        payment: BarePayment = self.repository.get(payment_id)
        sealed = self.cipher.seal(
            payload["klarna_network_session_token"], aad=payment_id.bytes + b"session_token"
        )
        payment.trigger_event(
            BarePayment.Completed,
            cause=f"notification:{envelope['metadata']['event_id']}",
            completed_at=datetime.fromisoformat(envelope["metadata"]["occurred_at"]),
            session_token={"k": sealed.key_id, "n": sealed.nonce, "c": sealed.ciphertext},
            customer_token=None,
            payment_request_id=payload["payment_request_id"],
        )
        self.save(payment)

    def authorize(self, payment_id: UUID) -> str:
        payment: BarePayment = self.repository.get(payment_id)
        key = self._request(payment, "authorize")
        assert payment.session_token is not None
        assert payment.payload is not None
        sealed = payment.session_token
        token = self.cipher.open(
            SealedSecret(sealed["k"], sealed["n"], sealed["c"]),
            aad=payment_id.bytes + b"session_token",
        )
        body = {
            "currency": payment.currency,
            "payment_request_id": payment.payment_request_id,
            "request_payment_transaction": {
                "amount": payment.amount,
                "payment_transaction_reference": payment.reference,
            },
            "supplementary_purchase_data": payment.payload["purchase"],
        }
        response = self._post(payment, key, body, token)
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
            signing_keys=ours_fake.signing_keys,
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
                payment_id = ours.create(
                    flow=Flow.AUTHORIZATION,
                    amount=AMOUNT,
                    currency=CURRENCY,
                    reference=f"order-{next(refs)}",
                )
                stepped = ours.initiate(payment_id, step_up=STEP_UP, purchase=PURCHASE)
                assert stepped.payment_request_id is not None
                done = ours_fake.complete_payment_request(stepped.payment_request_id)
                ours.handle_notification(done.notification.body, done.notification.headers)
                ours.authorize(payment_id)

        def run_baseline() -> None:
            for _ in range(PAYMENTS):
                payment_id = baseline.create(f"order-{next(refs)}")
                request_id = baseline.initiate(payment_id)
                done = base_fake.complete_payment_request(request_id)
                baseline.complete(done.notification.body, done.notification.headers)
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
        f"cpu_ratio={cpu_ours / cpu_base:.3f} journey=step-up store=sqlite-file goal<=1.15",
    )


BENCHMARKS: dict[str, Callable[[], Any]] = {"flow_end_to_end": flow_end_to_end}
