"""The production commands: ``payments`` (list), ``show`` (one payment) and ``worker``.

``payments`` and ``show`` are read-only: they open the store as ``audit``
does (no key; SQLite's ``mode=ro``; a missing or foreign store refused,
nothing created). ``worker`` records events, so it needs the cipher key, and
a Klarna API key for reconciliation. ``klarna_flow.cli.commands`` registers
them on the ``klarna-flow`` app.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from datetime import UTC, datetime
from types import FrameType
from typing import Annotated, Any
from uuid import UUID

import typer

from klarna_flow._app.payments import Payments
from klarna_flow._audit.log import AuditLog
from klarna_flow._domain.lifecycle import PaymentState
from klarna_flow._errors import InvalidInput, PaymentNotFound
from klarna_flow._store.locations import is_postgres_url, shown
from klarna_flow.cli import listing, render, showing
from klarna_flow.cli.options import (
    DEFAULT_BASE_URL,
    DEFAULT_DB,
    ApiKey,
    BaseUrl,
    Db,
    Json,
    KeyFile,
    PaymentArg,
    audit_log,
    cipher_for,
    print_json,
    require_store,
)
from klarna_flow.cli.worker import Settings, Worker
from klarna_flow.klarna import KlarnaClient

__all__ = ["list_payments", "show", "worker"]


def _age_option(name: str, meaning: str) -> Any:
    return typer.Option(
        name, help=f"Only payments created {meaning} (90s, 5m, 2h, 3d, 1h30m).", show_default=False
    )


def _duration(text: str | None, option: str) -> Any:
    return None if text is None else listing.parse_duration(text, option=option)


def _is_unresolved(log: AuditLog) -> Any:
    def check(payment_id: Any) -> bool:
        try:
            return bool(getattr(log.get(payment_id), "is_unresolved", False))
        except PaymentNotFound:  # deleted from the store under the index: verify reports it
            return False

    return check


def list_payments(
    *,
    state: Annotated[
        list[PaymentState] | None,
        typer.Option(
            "--state",
            help="Only this state (repeat for several).",
            case_sensitive=False,
            show_default=False,
        ),
    ] = None,
    unresolved: Annotated[
        bool, typer.Option("--unresolved", help="Only authorizations waiting for evidence.")
    ] = False,
    older_than: Annotated[str | None, _age_option("--older-than", "at least this long ago")] = None,
    newer_than: Annotated[
        str | None, _age_option("--newer-than", "less than this long ago")
    ] = None,
    reference: Annotated[
        str | None, typer.Option("--reference", help="Your payment reference.", show_default=False)
    ] = None,
    klarna_id: Annotated[
        str | None,
        typer.Option(
            "--klarna-id",
            help="Klarna's payment request id or payment transaction id.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 50,
    after: Annotated[
        str | None,
        typer.Option("--after", help="Start after this payment id (paging).", show_default=False),
    ] = None,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many first.")] = 0,
    db: Db = DEFAULT_DB,
    as_json: Json = False,
) -> None:
    """List payments from the payment index, oldest first (created time, then id).

    Filters combine: --state, --unresolved, age (--older-than, --newer-than:
    since creation), --reference, --klarna-id. Page with --limit and --after
    (the last id shown) or --offset. Read-only; needs no cipher key.
    """
    if after is not None and offset:
        raise InvalidInput("--after/--offset", "give one of --after or --offset, not both")
    query = listing.Query(
        states=frozenset(s.value for s in state or ()),
        unresolved=unresolved,
        older_than=_duration(older_than, "--older-than"),
        newer_than=_duration(newer_than, "--newer-than"),
        reference=reference,
        klarna_id=klarna_id,
        limit=limit,
        after=None if after is None else _uuid(after, "--after"),
        offset=offset,
    )
    with audit_log(db) as log:
        check = _is_unresolved(log)
        page = listing.select(log.read_model(), query, datetime.now(UTC), check)
        views = [
            listing.row_view(r, unresolved=r.state == "AUTHORIZING" and check(r.payment_id))
            for r in page.rows
        ]
    if as_json:
        print_json(views)
        return
    console = render.stdout()
    console.print(listing.listing_table(views, f"{len(views)} payment(s)"))
    if page.next_after is not None:
        console.print(f"more: --after {page.next_after}")


def _uuid(text: str, option: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise InvalidInput(option, f"{text!r} is not a payment id (a UUID)") from None


def show(payment_id: PaymentArg, db: Db = DEFAULT_DB, as_json: Json = False) -> None:
    """Show one payment: state, amounts, Klarna ids, deadlines, and the next step.

    Read-only; needs no cipher key; tokens are never shown.
    """
    with audit_log(db) as log:
        payment = log.get(payment_id)
    view = showing.payment_view(payment, datetime.now(UTC), db)
    if as_json:
        print_json(view)
    else:
        render.stdout().print(showing.show_table(view))


def worker(
    *,
    interval: Annotated[
        float,
        typer.Option(
            "--interval",
            min=0.0,
            envvar="KLARNA_FLOW_WORKER_INTERVAL",
            help="Seconds between the starts of two rounds (or $KLARNA_FLOW_WORKER_INTERVAL).",
            show_envvar=False,
        ),
    ] = 30.0,
    reconcile_older_than: Annotated[
        str,
        typer.Option(
            "--reconcile-older-than",
            envvar="KLARNA_FLOW_RECONCILE_OLDER_THAN",
            help="Re-send authorizations pending longer than this (keep it above the "
            "client's retry deadline, 90s).",
            show_envvar=False,
        ),
    ] = "5m",
    max_backoff: Annotated[
        float,
        typer.Option(
            "--max-backoff",
            min=0.0,
            help="Longest wait (seconds) between reconnections while the store is away.",
        ),
    ] = 60.0,
    start_timeout: Annotated[
        float,
        typer.Option(
            "--start-timeout",
            min=0.0,
            help="Seconds to keep trying a store that is locked or restarting at start.",
        ),
    ] = 30.0,
    once: Annotated[bool, typer.Option("--once", help="Run one round, then exit.")] = False,
    log_level: Annotated[
        str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")
    ] = "INFO",
    api_key: ApiKey = None,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    db: Db = DEFAULT_DB,
    key_file: KeyFile = None,
) -> None:
    """Run the expiry sweep, reconciliation and the unresolved report every --interval.

    Stops after the step in hand on SIGTERM or SIGINT (exit 0). Rides out a
    database that goes away (backs off, reconnects); exits 1 or 2 with one
    line when the store or the configuration cannot work. Logs to stderr.
    """
    _logging(log_level)
    settings = Settings(
        interval=interval,
        reconcile_older_than=listing.parse_duration(
            reconcile_older_than, option="--reconcile-older-than"
        ),
        backoff_initial=min(1.0, max_backoff),
        backoff_max=max_backoff,
        once=once,
        start_timeout=start_timeout,
    )
    cipher = cipher_for(db, key_file)  # read once: a bad key file stops the start
    with KlarnaClient(api_key, base_url=base_url) as client:
        env = _postgres_env() if is_postgres_url(db) else {}

        def opener() -> Payments:
            require_store(db, env)  # a foreign or missing store is refused, never created
            return Payments.open(db, cipher=cipher, klarna=client, env=env)

        loop = Worker(opener, settings)
        restore = _stop_on_signals(loop.stop)
        try:
            logging.getLogger("klarna_flow.worker").info(
                "worker starting on %s (interval %ss)", shown(db), interval
            )
            loop.run()
        finally:
            restore()


def _postgres_env() -> dict[str, str]:
    """A pool that checks a connection before use, and gives up connecting after 5 s
    (unless ``$POSTGRES_CONNECT_TIMEOUT`` says otherwise): the worker then backs off."""
    env = {"POSTGRES_PRE_PING": "y"}
    if not os.environ.get("POSTGRES_CONNECT_TIMEOUT"):
        env["POSTGRES_CONNECT_TIMEOUT"] = "5"
    return env


def _logging(level: str) -> None:
    value = logging.getLevelName(level.upper())
    if not isinstance(value, int):
        raise InvalidInput("--log-level", "must be DEBUG, INFO, WARNING or ERROR")
    logging.basicConfig(
        level=value,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )


def _stop_on_signals(stop: threading.Event) -> Any:
    """Set ``stop`` on SIGTERM and SIGINT; returns what puts the old handlers back."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("klarna_flow.worker").info(
            "%s received: stopping after the step in hand", signal.Signals(signum).name
        )
        stop.set()

    old = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for s, handler in old.items():
            signal.signal(s, handler)

    return restore
