"""Scripted outcomes of FakeKlarna: verdicts, errors, lost answers.

Two queues, each used in the order it was filled, independent of each other:

- verdicts (:meth:`approve_next`, :meth:`decline_next`, :meth:`step_up_next`)
  wait for the next authorize call that Klarna processes and that passes
  every check, whether its answer then arrives or is lost;
- faults, errors and lost answers (:meth:`fail_next`, :meth:`respond_next`,
  :meth:`drop_next`, :meth:`timeout_next`), hit the next call to any of the
  fake's endpoints (authorize, cancel, transaction read), one call each.

So scripts compose, and only the order within a queue matters:
``decline_next(); drop_next(after_processing=True)`` and the same two calls
the other way round both mean "the next call is declined at Klarna and the
caller never hears it".
"""

from __future__ import annotations

from collections.abc import Mapping

from klarna_flow._errors import InvalidInput
from klarna_flow.testing._fake_authorize import DECISIONS
from klarna_flow.testing._fake_customer import CustomerSide
from klarna_flow.testing._fake_http import error_body
from klarna_flow.testing._fake_records import Scripted

__all__ = ["Scripting"]


class Scripting(CustomerSide):
    """What the next calls get: verdicts and faults, each queued in order.

    A verdict is taken by the next authorize call that is processed and
    passes every check, including one whose answer a fault then loses
    (``drop_next(after_processing=True)``, ``timeout_next()``); a re-send
    under the same idempotency key within 24 hours replays that verdict's
    answer. A call refused by the fake's checks, answered by ``fail_next`` or
    ``respond_next``, lost before processing, or replayed leaves the verdict
    queued. Faults hit the next call to any endpoint, whatever verdicts are
    queued; verdicts and faults may be scripted in either order.
    """

    def approve_next(self) -> None:
        """The next processed valid authorize call is ``APPROVED`` without step-up.

        Even an initial call without ``step_up_config``. Composes with a
        fault scripted before or after it: under ``drop_next(after_processing=True)``
        the call is approved (its transaction created) and the answer lost;
        under ``fail_next``, ``respond_next`` or a drop before processing
        the approval waits for the next call.
        """
        self._queue(Scripted("approve"))

    def decline_next(self, reason: str | None = None) -> None:
        """The next processed valid authorize call is ``DECLINED`` (a session token is used up).

        Composes with a fault scripted before or after it:
        ``decline_next(); drop_next(after_processing=True)`` declines the next
        call at Klarna and loses the answer (a re-send with the same key gets
        ``DECLINED`` back); under ``fail_next``, ``respond_next`` or a drop
        before processing the decline waits for the next call.

        Args:
            reason: sent as ``result_reason`` (Klarna publishes no values).
        """
        self._queue(Scripted("decline", reason=reason))

    def step_up_next(self) -> None:
        """The next processed valid authorize call needs a step-up (a new payment request).

        On a final call and on a customer-present token charge. An initial
        call steps up anyway (given ``step_up_config``); a customer-not-present
        token charge cannot step up and is ``DECLINED`` instead. Composes with
        faults like :meth:`decline_next`: under a drop after processing the
        new payment request exists, and a re-send with the same key gets it.
        """
        self._queue(Scripted("step_up"))

    def fail_next(
        self,
        status: int,
        error_code: str | None = None,
        *,
        retry_after: float | str | None = None,
        ratelimit_reset: float | str | None = None,
        times: int = 1,
    ) -> None:
        """The next ``times`` calls fail with ``status`` (nothing processed).

        Queued verdicts are left for the calls after them.

        Args:
            retry_after: sent as ``Retry-After`` (seconds, or an HTTP date string).
            ratelimit_reset: sent as ``X-Ratelimit-Reset`` (seconds to wait,
                or a Unix time: its unit is not documented).
        """
        if not 400 <= status <= 599:
            raise InvalidInput("status", "must be an HTTP error status (400..599)")
        named = (("Retry-After", retry_after), ("X-Ratelimit-Reset", ratelimit_reset))
        headers = tuple((name, str(value)) for name, value in named if value is not None)
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise InvalidInput("times", "must be an int >= 1")
        for _ in range(times):
            body = error_body(status, error_code)
            self._queue(Scripted("respond", status, body, headers))

    def respond_next(
        self, status: int, body: bytes, *, headers: Mapping[str, str] | None = None
    ) -> None:
        """The next call gets exactly this status and raw body (nothing processed).

        Queued verdicts are left for the calls after it.
        """
        self._queue(Scripted("respond", status, body, tuple((headers or {}).items())))

    def drop_next(self, *, after_processing: bool = False) -> None:
        """The next call gets no answer: the connection drops.

        With ``after_processing`` the request is processed first, taking a
        queued verdict as any processed call would (an approval's transaction
        is created; the answer is kept for idempotent replay): Klarna acted,
        the answer was lost. Without it nothing is processed and a queued
        verdict waits for the next call.
        """
        self._queue(Scripted("drop", after_processing=after_processing))

    def timeout_next(self, *, after_processing: bool = True) -> None:
        """Like :meth:`drop_next`, seen in process as ``httpx.ReadTimeout``.

        Processed first by default (a queued verdict applies, see
        :meth:`drop_next`). On the loopback server the connection simply closes (as for a drop):
        the client sees a transport error rather than a timeout.
        """
        self._queue(Scripted("timeout", after_processing=after_processing))

    def _queue(self, scripted: Scripted) -> None:
        with self._lock:
            queue = self._verdicts if scripted.kind in DECISIONS else self._faults
            queue.append(scripted)
