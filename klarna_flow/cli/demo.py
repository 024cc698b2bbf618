"""``klarna-flow demo``: Klarna's whole journey against FakeKlarna, on a real store.

The scenarios (:mod:`klarna_flow.cli.demo_scenarios`) play one payment each:
the initial call with step-up, the customer, Klarna's signed notifications
and the final authorization; Express checkout; a pure tokenization and a
charge of its customer token; pay-and-tokenize; declines, a cancel at
Klarna, Klarna's own request expiry, the 60-minute window, a lost answer
settled by Klarna's notification, and a refused final authorize. Nothing
leaves the process: Klarna is a :class:`~klarna_flow.testing.FakeKlarna`
behind ``httpx.MockTransport``. Events land in the given store, so every
other command (audit, history, verify, replay...) has something to read.

Every run plays with new references of its own (``demo-<run>-<scenario>``):
a second run on the same file adds a second set of payments beside the
first, which stay as they were, and ``verify`` checks both.

The tokens the demo seals need a key: the demo makes one and keeps it beside
its SQLite file (``<db>.key``, readable by the owner only), reusing it on
later runs. No output names a token, the API key or a database password.
"""

from __future__ import annotations

import os
import secrets
import shlex
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import attrs
import httpx

from klarna_flow import AuditEntry, ConfigurationError, Payments, SystemClock
from klarna_flow._store.cipher import CIPHER_KEY_ENV, TokenCipher, generate_key, parse_key
from klarna_flow._store.locations import is_postgres_url, shown, sqlite_tables
from klarna_flow.cli.demo_scenarios import Journey, Played, play_all
from klarna_flow.klarna import KlarnaClient, RetryPolicy
from klarna_flow.testing import FakeKlarna, ManualClock

__all__ = ["DemoPayment", "DemoResult", "key_file_for", "load_or_create_key", "run_demo"]

_HEAD_START = timedelta(hours=2)
"""How long before now the demo's clock starts: it moves 61 minutes forward."""


@attrs.frozen
class DemoPayment:
    """One scenario's payment, as it ended."""

    path: str
    """The scenario (``step-up``, ``express``...)."""
    reference: str
    payment_id: UUID
    flow: str
    state: str
    payment_transaction_id: str | None
    happened: tuple[str, ...] = ()
    """What happened, one step at a time, with the state each left."""
    next_steps: tuple[str, ...] = ()
    """Commands to look further (audit, verify)."""


@attrs.frozen
class DemoResult:
    """What the demo recorded: its payments and the trail of the step-up one."""

    db: str
    """The store, as messages show it (a URL without its password)."""
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


def _refuse_a_foreign_file(db: str) -> None:
    """The demo creates its store in a new or empty file, or adds to its own; never to another's."""
    if is_postgres_url(db) or not os.path.exists(db):
        return
    tables = sqlite_tables(db)
    if tables and "stored_events" not in tables:
        raise ConfigurationError(
            f"{shown(db)} holds no klarna_flow store; the demo writes none there"
        )


def run_demo(db: str | os.PathLike[str], *, fake: FakeKlarna | None = None) -> DemoResult:
    """Play every scenario of Klarna's journey on ``db``, one new payment each.

    Args:
        fake: the Klarna to play against, whose clock must be a
            :class:`ManualClock` (tests look at what it was sent); default:
            a new one whose clock starts two hours ago, so that every time the
            demo records is in the past when it ends.

    Raises:
        ConfigurationError: no key for a PostgreSQL store, a bad key file, or
            a fake without a manual clock.
        StorageError: the store cannot be opened or written.
        DemoScenarioFailed: a scenario did not end as the journey says.
    """
    db = os.fspath(db)
    _refuse_a_foreign_file(db)
    fake = fake if fake is not None else _new_fake()
    clock = fake.clock
    if not isinstance(clock, ManualClock):
        raise ConfigurationError("the demo's FakeKlarna needs a ManualClock")
    cipher, key_file = _cipher(db)
    retry = RetryPolicy(max_attempts=1)  # a lost answer stays lost: no retry behind its back
    with KlarnaClient(fake.api_key, transport=httpx.MockTransport(fake), retry=retry) as client:
        payments = Payments.open(
            db,
            clock=clock,
            cipher=cipher,
            klarna=client,
            partner_account_id=fake.partner_account_id,
            signing_keys=fake.signing_keys,
        )
        try:
            return _played(payments, fake, clock, db, key_file)
        finally:
            payments.close()


def _new_fake() -> FakeKlarna:
    clock = ManualClock(SystemClock().now() - _HEAD_START)
    return FakeKlarna(api_key=f"demo-{secrets.token_urlsafe(24)}", clock=clock)


def _played(
    payments: Payments, fake: FakeKlarna, clock: ManualClock, db: str, key_file: str | None
) -> DemoResult:
    run = f"{SystemClock().now():%Y%m%dT%H%M%S}-{secrets.token_hex(2)}"
    played = play_all(Journey(payments, fake, clock, run))
    where = shown(db)
    return DemoResult(
        db=where,
        run=run,
        payments=tuple(_payment(payments, p, where) for p in played),
        trail=tuple(payments.audit_trail(played[0].payment_id)),
        key_file=key_file,
    )


def _payment(payments: Payments, played: Played, db: str) -> DemoPayment:
    payment = payments.get(played.payment_id)
    at = shlex.quote(db)
    return DemoPayment(
        path=played.path,
        reference=payment.reference,
        payment_id=played.payment_id,
        flow=payment.flow.value,
        state=payment.state.value,
        payment_transaction_id=payment.payment_transaction_id,
        happened=played.happened,
        next_steps=(
            f"klarna-flow audit {played.payment_id} --db {at}",
            f"klarna-flow verify --payment {played.payment_id} --db {at}",
        ),
    )
