"""The demo scenario: every path of the lifecycle, against FakeKlarna, on a real store.

``klarna-flow demo`` runs it. Nothing leaves the process: Klarna is a
:class:`~klarna_flow.testing.FakeKlarna` behind ``httpx.MockTransport``, and a
:class:`~klarna_flow.testing.ManualClock` (shared by the fake and the
application) jumps past the 60-minute window for the expiry. Events land in
the given store, so every other command (audit, history, verify, replay...)
has something to read afterwards. Each run gets references of its own, so the
demo can run again on the same file.

The tokens the demo seals need a key: the demo makes one and keeps it beside
its SQLite file (``<db>.key``, readable by the owner only), reusing it on
later runs.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from uuid import UUID

import attrs
import httpx

from klarna_flow._app.payments import Payments
from klarna_flow._audit.log import AuditEntry
from klarna_flow._domain.lifecycle import AUTHORIZATION_WINDOW, Flow
from klarna_flow._errors import ConfigurationError
from klarna_flow._shared.clock import SystemClock
from klarna_flow._store.cipher import CIPHER_KEY_ENV, TokenCipher, generate_key, parse_key
from klarna_flow._store.locations import is_postgres_url, shown, sqlite_tables
from klarna_flow.klarna import KlarnaClient, RetryPolicy
from klarna_flow.testing import FakeKlarna, ManualClock

__all__ = ["DemoPayment", "DemoResult", "key_file_for", "load_or_create_key", "run_demo"]

_AMOUNT = 11800
_CURRENCY = "EUR"


@attrs.frozen
class DemoPayment:
    """One payment the demo drove, as it ended."""

    path: str
    reference: str
    payment_id: UUID
    flow: str
    state: str
    payment_transaction_id: str | None


@attrs.frozen
class DemoResult:
    """What the demo recorded: its payments and the trail of the richest one."""

    db: str
    run: str
    payments: tuple[DemoPayment, ...]
    trail: tuple[AuditEntry, ...]
    key_file: str | None


def is_postgres(db: str) -> bool:
    return db.startswith(("postgres://", "postgresql://"))


def key_file_for(db: str) -> Path:
    """Where the demo keeps the key of an SQLite file: beside it, ``<db>.key``."""
    return Path(f"{db}.key")


def load_or_create_key(path: Path) -> str:
    """The key stored in ``path``; a new one (mode 0600) if there is none.

    Raises:
        ConfigurationError: the file exists but holds no valid key.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text(encoding="ascii").strip()
        try:
            parse_key(key)
        except ConfigurationError:
            msg = f"{path} does not hold a cipher key (base64 of 32 random bytes)"
            raise ConfigurationError(msg) from None
        return key
    key = generate_key()
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key + "\n")
    return key


def _cipher(db: str) -> tuple[TokenCipher, str | None]:
    if not is_postgres(db):
        path = key_file_for(db)
        return TokenCipher(load_or_create_key(path)), str(path)
    key = os.environ.get(CIPHER_KEY_ENV, "").strip()
    if not key:
        msg = (
            "the demo keeps its key beside an SQLite file; on PostgreSQL set "
            f"{CIPHER_KEY_ENV} (base64 of 32 random bytes)"
        )
        raise ConfigurationError(msg)
    return TokenCipher(key), None


class _Demo:
    """The scenario's moving parts: one clock, one fake Klarna, one application."""

    def __init__(self, app: Payments, fake: FakeKlarna, clock: ManualClock, run: str) -> None:
        self.app = app
        self.fake = fake
        self.clock = clock
        self.run = run
        self.done: list[tuple[str, str, UUID]] = []

    def create(self, path: str, flow: Flow) -> tuple[UUID, str]:
        request_id = self.fake.create_payment_request(
            amount=_AMOUNT, currency=_CURRENCY, flow=flow.value
        )
        reference = f"demo-{self.run}-{path}"
        payment_id = self.app.create(
            flow=flow,
            amount=_AMOUNT,
            currency=_CURRENCY,
            reference=reference,
            payment_request_id=request_id,
        )
        self.done.append((path, reference, payment_id))
        return payment_id, request_id

    def customer_completes(self, request_id: str) -> None:
        """The shopper finishes in Klarna; Klarna's signed notification arrives."""
        notification = self.fake.complete_payment_request(request_id).notification
        self.app.handle_notification(notification.body, notification.headers)

    def paid(self, path: str, flow: Flow, script: Callable[[], None] | None = None) -> UUID:
        payment_id, request_id = self.create(path, flow)
        self.customer_completes(request_id)
        if script is not None:
            script()
        self.app.authorize(payment_id)
        return payment_id

    def step_up(self) -> UUID:
        """Klarna asks the shopper to act again; the second attempt is approved."""
        payment_id = self.paid("step-up", Flow.AUTHORIZATION, self.fake.step_up_next)
        new_request = self.app.get(payment_id).payment_request_id
        assert new_request is not None
        self.customer_completes(new_request)
        self.app.authorize(payment_id)
        return payment_id

    def canceled(self) -> None:
        _, request_id = self.create("canceled", Flow.AUTHORIZATION)
        notification = self.fake.cancel_payment_request(request_id)
        self.app.handle_notification(notification.body, notification.headers)

    def expired(self) -> None:
        """Completed, never authorized: the sweep expires it after 60 minutes."""
        _, request_id = self.create("expired", Flow.AUTHORIZATION)
        self.customer_completes(request_id)
        self.clock.advance(AUTHORIZATION_WINDOW + AUTHORIZATION_WINDOW / 60)
        self.app.expire_overdue()


def _refuse_a_foreign_file(db: str) -> None:
    """The demo creates its store in a new or empty file, or adds to its own; never to another's."""
    if is_postgres_url(db) or not os.path.exists(db):
        return
    tables = sqlite_tables(db)
    if tables and "stored_events" not in tables:
        raise ConfigurationError(
            f"{shown(db)} holds no klarna_flow store; the demo writes none there"
        )


def run_demo(db: str | os.PathLike[str]) -> DemoResult:
    """Drive one payment down each path of the lifecycle on ``db``.

    Raises:
        ConfigurationError: no key for a PostgreSQL store, or a bad key file.
        StorageError: the store cannot be opened or written.
    """
    db = os.fspath(db)
    _refuse_a_foreign_file(db)
    cipher, key_file = _cipher(db)
    clock = ManualClock(SystemClock().now())
    fake = FakeKlarna(clock=clock)
    retry = RetryPolicy(max_attempts=1)
    with KlarnaClient(fake.api_key, transport=httpx.MockTransport(fake), retry=retry) as client:
        app = Payments.open(
            db,
            clock=clock,
            cipher=cipher,
            klarna=client,
            partner_account_id=fake.partner_account_id,
            signing_keys=fake.signing_keys,
        )
        try:
            return _scenario(app, fake, clock, db, key_file)
        finally:
            app.close()


def _scenario(
    app: Payments, fake: FakeKlarna, clock: ManualClock, db: str, key_file: str | None
) -> DemoResult:
    run = f"{clock.now():%Y%m%dT%H%M%S}-{secrets.token_hex(2)}"
    demo = _Demo(app, fake, clock, run)
    demo.paid("approved", Flow.AUTHORIZATION)
    demo.paid("declined", Flow.AUTHORIZATION, lambda: fake.decline_next("demo: declined"))
    step_up = demo.step_up()
    _, request_id = demo.create("tokenization", Flow.TOKENIZATION)
    demo.customer_completes(request_id)
    demo.paid("pay-and-tokenize", Flow.AUTHORIZATION_AND_TOKENIZATION)
    demo.canceled()
    demo.expired()
    payments = []
    for path, reference, payment_id in demo.done:
        payment = app.get(payment_id)
        payments.append(
            DemoPayment(
                path=path,
                reference=reference,
                payment_id=payment_id,
                flow=payment.flow.value,
                state=payment.state.value,
                payment_transaction_id=payment.payment_transaction_id,
            )
        )
    return DemoResult(
        db=db,
        run=run,
        payments=tuple(payments),
        trail=tuple(app.audit_trail(step_up)),
        key_file=key_file,
    )
