"""A clock that moves only when told to."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from klarna_flow._errors import InvalidInput
from klarna_flow._shared.validation import check_aware

__all__ = ["ManualClock"]


class ManualClock:
    """A :class:`~klarna_flow.Clock` for tests: stands still until advanced.

    Args:
        start: the initial instant (timezone-aware); defaults to
            2025-01-01T12:00:00Z so tests are reproducible.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = (
            check_aware(start, "start")
            if start is not None
            else datetime(2025, 1, 1, 12, tzinfo=UTC)
        )
        self._lock = threading.Lock()

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> datetime:
        """Move the clock forward by ``delta`` (negative deltas are refused)."""
        if not isinstance(delta, timedelta) or delta < timedelta(0):
            raise InvalidInput("delta", "must be a non-negative timedelta")
        with self._lock:
            self._now += delta
            return self._now

    def set(self, instant: datetime) -> None:
        """Jump to ``instant`` (timezone-aware; may not go backwards)."""
        instant = check_aware(instant, "instant")
        with self._lock:
            if instant < self._now:
                raise InvalidInput("instant", "a ManualClock never goes backwards")
            self._now = instant

    def __repr__(self) -> str:
        return f"ManualClock({self._now.isoformat()})"
