"""Scripted outcomes of FakeKlarna: verdicts, errors, lost answers.

Verdicts (:meth:`approve_next`, :meth:`decline_next`, :meth:`step_up_next`)
wait for the next authorize call that passes every check. Errors and lost
answers (:meth:`fail_next`, :meth:`respond_next`, :meth:`drop_next`,
:meth:`timeout_next`) hit the next call to any of the fake's endpoints
(authorize, cancel, transaction read), before it is checked. Both are
consumed in the order they were queued.
"""

from __future__ import annotations

from collections.abc import Mapping

from klarna_flow._errors import InvalidInput
from klarna_flow.testing._fake_customer import CustomerSide
from klarna_flow.testing._fake_http import error_body
from klarna_flow.testing._fake_records import Scripted

__all__ = ["Scripting"]


class Scripting(CustomerSide):
    """What the next calls get, queued in order."""

    def approve_next(self) -> None:
        """The next valid authorize call is ``APPROVED`` without step-up.

        Even an initial call without ``step_up_config``.
        """
        self._queue(Scripted("approve"))

    def decline_next(self, reason: str | None = None) -> None:
        """The next valid authorize call is ``DECLINED`` (a session token is used up).

        Args:
            reason: sent as ``result_reason`` (Klarna publishes no values).
        """
        self._queue(Scripted("decline", reason=reason))

    def step_up_next(self) -> None:
        """The next valid authorize call needs a step-up (a new payment request).

        On a final call and on a customer-present token charge. An initial
        call steps up anyway (given ``step_up_config``); a customer-not-present
        token charge cannot step up and is ``DECLINED`` instead.
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
        """The next call gets exactly this status and raw body."""
        self._queue(Scripted("respond", status, body, tuple((headers or {}).items())))

    def drop_next(self, *, after_processing: bool = False) -> None:
        """The next call gets no answer: the connection drops.

        With ``after_processing`` the request is processed first (a
        transaction is created and kept for idempotent replay): Klarna acted,
        the answer was lost.
        """
        self._queue(Scripted("drop", after_processing=after_processing))

    def timeout_next(self, *, after_processing: bool = True) -> None:
        """Like :meth:`drop_next`, seen in process as ``httpx.ReadTimeout``.

        On the loopback server the connection simply closes (as for a drop):
        the client sees a transport error rather than a timeout.
        """
        self._queue(Scripted("timeout", after_processing=after_processing))

    def _queue(self, scripted: Scripted) -> None:
        with self._lock:
            self._script.append(scripted)
