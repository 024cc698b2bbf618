"""When to try an authorize call again, and after how long.

The decisions live here, free of I/O, so the sync and async clients share
them: only the way they sleep differs.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import attrs

from klarna_flow._errors import (
    InvalidInput,
    KlarnaError,
    KlarnaRateLimited,
    KlarnaServerError,
    KlarnaTransportError,
)

__all__ = ["Attempts", "RetryPolicy", "is_retryable"]

# Jitter needs no cryptographic strength, but SystemRandom keeps the generator
# out of the process-wide seeded state that tests may fix.
_RANDOM = random.SystemRandom()


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise InvalidInput(attribute.name, "must be a positive number of seconds")


def _at_least_one(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(attribute.name, "must be an int >= 1")


@attrs.frozen
class RetryPolicy:
    """How an authorize call is retried on 429, 5xx and transport failures.

    Every retry sends the same request with the same idempotency key, so
    Klarna acts at most once. Other 4xx answers are never retried.

    Attributes:
        max_attempts: attempts in total, the first one included.
        initial_backoff: seconds before the first retry (before jitter).
        max_backoff: ceiling of any single wait, ``Retry-After`` included.
        deadline: seconds after the first attempt began past which no new
            attempt starts (an attempt in flight is not cut short).
        jitter: full jitter: wait a uniform random time in ``[0, backoff]``.
    """

    max_attempts: int = attrs.field(default=3, validator=_at_least_one)
    initial_backoff: float = attrs.field(default=0.5, validator=_positive)
    max_backoff: float = attrs.field(default=8.0, validator=_positive)
    deadline: float = attrs.field(default=90.0, validator=_positive)
    jitter: bool = True

    def backoff(
        self,
        retry: int,
        *,
        retry_after: float | None = None,
        uniform: Callable[[float, float], float] = _RANDOM.uniform,
    ) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first).

        Exponential (``initial_backoff * 2**(retry-1)``), capped by
        ``max_backoff``, with full jitter. A ``Retry-After`` from Klarna is a
        floor: we never come back sooner than asked, but never wait longer
        than ``max_backoff`` either.
        """
        ceiling = min(self.max_backoff, self.initial_backoff * 2 ** min(retry - 1, 62))
        delay = uniform(0.0, ceiling) if self.jitter else ceiling
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        return delay


def is_retryable(error: KlarnaError) -> bool:
    """429, 5xx and transport failures (timeouts included) are worth retrying."""
    return isinstance(error, KlarnaRateLimited | KlarnaServerError | KlarnaTransportError)


class Attempts:
    """The retry bookkeeping of one authorize call.

    Args:
        policy: the retry policy.
        monotonic: the clock measuring the deadline (injectable for tests).
    """

    def __init__(
        self, policy: RetryPolicy, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy
        self.number = 0
        self.may_have_acted = False
        """True once any attempt ended in a way that Klarna may have acted on."""
        self._monotonic = monotonic
        self._started = monotonic()
        self._attempt_started = self._started

    def begin(self) -> int:
        """Count a new attempt; return its number (1 for the first)."""
        self.number += 1
        self._attempt_started = self._monotonic()
        return self.number

    @property
    def attempt_elapsed(self) -> float:
        """Seconds since the current attempt began."""
        return self._monotonic() - self._attempt_started

    @property
    def elapsed(self) -> float:
        """Seconds since the first attempt began."""
        return self._monotonic() - self._started

    def delay_after(self, error: KlarnaError) -> float | None:
        """Seconds to wait before the next attempt, or None to give up.

        Gives up on errors that are not retryable, after ``max_attempts``, and
        when the wait would end past the deadline.
        """
        if not is_retryable(error) or self.number >= self.policy.max_attempts:
            return None
        retry_after = getattr(error, "retry_after", None)
        delay = self.policy.backoff(self.number, retry_after=retry_after)
        if self.elapsed + delay >= self.policy.deadline:
            return None
        return delay
