"""``klarna-flow worker``: the housekeeping loop of a production deployment.

Each round runs three steps on the store: the expiry sweep
(``Payments.expire_overdue``), reconciliation (``Payments.reconcile``) and the
unresolved report (``Payments.unresolved``, logged at ERROR the first time a
payment is seen unresolved, and counted at WARNING every round while any is).
Rounds start every ``interval`` seconds (a round that overruns is followed at
once by the next).

- **Stopping.** :attr:`Worker.stop` is an event (the command sets it on
  SIGTERM and SIGINT): the step in hand finishes, no further step starts, and
  :meth:`Worker.run` returns.
- **A store that goes away.** A store failure (:class:`StorageError`, or the
  driver's own error) ends the round: the store is closed, and reopened after
  a bounded exponential back-off (:class:`Backoff`) until it answers again.
  Nothing is lost or done twice: every step is a command of the library,
  which records each effect once (optimistic concurrency) and re-sends a
  pending authorization with its recorded idempotency key.
- **What does not heal** (no such store, a missing key, a bad setting) is
  raised from :meth:`Worker.run`, for the command to report and exit.

Several workers may run on one store at once: each command decides under the
store's concurrency control, so a payment is expired, or its authorization
resolved, once.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from datetime import timedelta
from uuid import UUID

import attrs
from eventsourcing.persistence import PersistenceError

from klarna_flow._app.payments import Payments
from klarna_flow._errors import StorageError

__all__ = ["Backoff", "RoundReport", "Settings", "Worker", "is_transient"]

log = logging.getLogger("klarna_flow.worker")

Opener = Callable[[], Payments]
Wait = Callable[[float], bool]
"""Waits up to the given seconds; True when the worker was asked to stop meanwhile."""


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is a store failure that may heal (the database went away)."""
    if isinstance(error, StorageError | PersistenceError | ConnectionError | TimeoutError):
        return True
    # The PostgreSQL driver's and pool's own errors (psycopg is an optional extra).
    return type(error).__module__.split(".")[0] in {"psycopg", "psycopg_pool"}


@attrs.frozen
class Settings:
    """How the worker runs.

    Attributes:
        interval: seconds from the start of one round to the start of the next.
        reconcile_older_than: authorizations pending for longer are re-sent.
        backoff_initial: seconds before the first reconnection attempt.
        backoff_max: the longest wait between reconnection attempts.
        once: run one round and return.
        start_timeout: how long a store that fails transiently at start
            (locked by another worker's start, restarting) is tried again
            before the worker gives up.
    """

    interval: float = 30.0
    reconcile_older_than: timedelta = timedelta(minutes=5)
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    once: bool = False
    start_timeout: float = 30.0


class Backoff:
    """Bounded exponential back-off: ``initial``, doubled each failure, at most ``maximum``.

    Each delay is shortened by up to ``jitter`` (a fraction) at random, so
    workers that lost the same database do not come back in step.
    """

    def __init__(
        self,
        initial: float,
        maximum: float,
        *,
        jitter: float = 0.2,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.initial, self.maximum, self.jitter, self._rand = initial, maximum, jitter, rand
        self.failures = 0

    def next(self) -> float:
        """The delay before the next attempt; counts a failure."""
        ceiling: float = min(self.maximum, self.initial * 2.0 ** min(self.failures, 62))
        self.failures += 1
        return ceiling * (1 - self.jitter * self._rand())

    def reset(self) -> None:
        self.failures = 0


@attrs.frozen
class RoundReport:
    """What one round did."""

    expired: list[UUID] = attrs.field(factory=list)
    reconciled: Counter[str] = attrs.field(factory=Counter)
    unresolved: list[UUID] = attrs.field(factory=list)
    seconds: dict[str, float] = attrs.field(factory=dict)
    complete: bool = True

    def summary(self) -> str:
        results = ", ".join(f"{k} {v}" for k, v in sorted(self.reconciled.items()))
        steps = ", ".join(f"{k} {v:.3f}s" for k, v in self.seconds.items())
        return (
            f"expired {len(self.expired)}, reconciled {sum(self.reconciled.values())}"
            f"{f' ({results})' if results else ''}, unresolved {len(self.unresolved)}"
            f" in {sum(self.seconds.values()):.3f}s ({steps})"
            f"{'' if self.complete else '; stopped before the last step'}"
        )


class Worker:
    """The loop: rounds of steps, back-off and reconnection, a clean stop.

    Args:
        opener: opens the store (called again to reconnect); what it raises
            that is not transient (:func:`is_transient`) ends the worker.
        settings: the :class:`Settings`.
        stop: set it to stop after the step in hand.
        wait: waits between rounds and before reconnecting (default:
            ``stop.wait``); tests give one that records the delays.
        monotonic: the clock durations are measured with.
    """

    def __init__(
        self,
        opener: Opener,
        settings: Settings,
        *,
        stop: threading.Event | None = None,
        wait: Wait | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
    ) -> None:
        self.opener, self.settings = opener, settings
        self.stop = stop if stop is not None else threading.Event()
        self.wait: Wait = wait if wait is not None else self.stop.wait
        self.monotonic = monotonic
        self.backoff = backoff or Backoff(settings.backoff_initial, settings.backoff_max)
        self.rounds = 0
        self._seen_unresolved: set[UUID] = set()

    def run(self) -> None:
        """Run rounds until stopped (or one, with ``once``).

        Raises:
            KlarnaFlowError: the store could not be opened at start (a
                transient failure that lasted ``start_timeout``, or any other),
                or a failure that does not heal.
        """
        payments = self._start()
        try:
            while not self.stop.is_set():
                if payments is None:
                    payments = self._reconnect()
                    continue
                started = self.monotonic()
                try:
                    self.run_round(payments)
                except Exception as e:
                    if self.settings.once or not is_transient(e):
                        raise
                    _close(payments)
                    payments = None
                    self._failed("the round", e)
                    continue
                self.backoff.reset()
                if self.settings.once:
                    return
                self.wait(max(0.0, self.settings.interval - (self.monotonic() - started)))
        finally:
            if payments is not None:
                _close(payments)
        log.info("stopped after %d round(s)", self.rounds)

    def _start(self) -> Payments | None:
        """The store, opened; transient failures are tried again until ``start_timeout``."""
        deadline = self.monotonic() + self.settings.start_timeout
        while True:
            try:
                payments = self.opener()
            except Exception as e:
                if not is_transient(e) or self.monotonic() >= deadline:
                    raise
                self._failed("opening the store", e)
                if self.stop.is_set():
                    return None
            else:
                log.info("connected to the store")
                return payments

    def _reconnect(self) -> Payments | None:
        try:
            payments = self.opener()
        except Exception as e:
            if not is_transient(e):
                raise
            self._failed("reconnecting", e)
            return None
        log.info("reconnected to the store")
        return payments

    def _failed(self, what: str, error: BaseException) -> None:
        delay = self.backoff.next()
        log.warning(
            "%s failed (%s: %s); attempt %d, next in %.1fs",
            what,
            type(error).__name__,
            _first_line(error),
            self.backoff.failures,
            delay,
        )
        self.wait(delay)

    def run_round(self, payments: Payments) -> RoundReport:
        """One round: each step in turn, none started once a stop is asked."""
        report = RoundReport()
        steps: list[tuple[str, Callable[[Payments, RoundReport], None]]] = [
            ("expire", self._expire),
            ("reconcile", self._reconcile),
            ("unresolved", self._report_unresolved),
        ]
        for name, step in steps:
            if self.stop.is_set():
                report = attrs.evolve(report, complete=False)
                break
            began = self.monotonic()
            step(payments, report)
            report.seconds[name] = self.monotonic() - began
        self.rounds += 1
        log.info("round %d: %s", self.rounds, report.summary())
        return report

    def _expire(self, payments: Payments, report: RoundReport) -> None:
        report.expired.extend(payments.expire_overdue())
        for payment_id in report.expired:
            log.info("expired payment %s", payment_id)

    def _reconcile(self, payments: Payments, report: RoundReport) -> None:
        for outcome in payments.reconcile(older_than=self.settings.reconcile_older_than):
            report.reconciled[outcome.result.value] += 1
            log.info(
                "reconciled payment %s: %s, now %s",
                outcome.payment_id,
                outcome.result.value,
                outcome.state.value,
            )

    def _report_unresolved(self, payments: Payments, report: RoundReport) -> None:
        rows = payments.unresolved()
        report.unresolved.extend(r.payment_id for r in rows)
        for row in rows:
            if row.payment_id not in self._seen_unresolved:
                log.error(
                    "payment %s (reference %s) is unresolved: its authorization may have "
                    "reached Klarna; resolve it with evidence",
                    row.payment_id,
                    row.reference,
                )
        self._seen_unresolved = set(report.unresolved)
        if rows:
            shown = ", ".join(str(r.payment_id) for r in rows[:20])
            more = f" and {len(rows) - 20} more" if len(rows) > 20 else ""
            log.warning("%d payment(s) unresolved: %s%s", len(rows), shown, more)


def _close(payments: Payments) -> None:
    with suppress(Exception):  # a store that went away may fail to close; it is dropped anyway
        payments.close()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""
