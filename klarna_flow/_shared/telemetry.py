"""Tracing and metrics through OpenTelemetry, when it is installed (``klarna-flow[otel]``).

Without ``opentelemetry-api`` nothing is imported and every call here is a
no-op. With it, the library asks the *global* providers for its tracer and
meter (``klarna_flow``), so an application that configures OpenTelemetry gets
the spans and instruments, and one that does not pays for no-op objects only.

What is recorded:

- a span per command (``klarna_flow.<command>``) and per Klarna call
  (``klarna <operation>``, kind CLIENT), with attributes such as
  ``klarna_flow.payment_id``, ``klarna_flow.flow``, ``klarna_flow.outcome``,
  ``klarna.attempts``, ``http.response.status_code`` and
  ``klarna.correlation_id``; never a token, key or body;
- ``klarna_flow.authorization.outcomes``: a counter of recorded outcomes by
  ``klarna_flow.command`` and ``klarna_flow.outcome``;
- ``klarna_flow.notifications``: a counter of notifications by outcome;
- ``klarna_flow.klarna.duration``: a histogram of each attempt's latency in
  seconds, by ``klarna.operation`` and status.

Attribute values are checked to be plain (str, bool, int, float); the caller
passes only identifiers and results.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = [
    "ENABLED",
    "Span",
    "annotate",
    "count_notification",
    "count_outcome",
    "klarna_latency",
    "span",
]

AttributeValue = str | bool | int | float

try:  # the optional extra
    from opentelemetry import metrics as _metrics
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover - exercised where the extra is absent
    _metrics = None  # type: ignore[assignment]
    _trace = None  # type: ignore[assignment]

ENABLED = _trace is not None
"""True when opentelemetry-api is importable."""

_NAME = "klarna_flow"

if _trace is not None and _metrics is not None:
    _TRACER: Any = _trace.get_tracer(_NAME)
    _METER: Any = _metrics.get_meter(_NAME)
    _OUTCOMES: Any = _METER.create_counter(
        "klarna_flow.authorization.outcomes",
        unit="{outcome}",
        description="Authorization outcomes recorded, by command and result",
    )
    _NOTIFICATIONS: Any = _METER.create_counter(
        "klarna_flow.notifications",
        unit="{notification}",
        description="Klarna notifications handled, by outcome",
    )
    _LATENCY: Any = _METER.create_histogram(
        "klarna_flow.klarna.duration",
        unit="s",
        description="Latency of each attempt of a call to Klarna",
    )
    _IDLE_PROVIDERS: Any = (_trace.ProxyTracerProvider, _trace.NoOpTracerProvider)
    _CLIENT: Any = _trace.SpanKind.CLIENT
    _INTERNAL: Any = _trace.SpanKind.INTERNAL
    _ERROR: Any = _trace.StatusCode.ERROR


def _plain(attributes: Mapping[str, object]) -> dict[str, AttributeValue]:
    return {
        key: value if isinstance(value, bool | int | float) else str(value)
        for key, value in attributes.items()
        if value is not None
    }


class Span:
    """A span to annotate while it is open (a no-op without OpenTelemetry)."""

    __slots__ = ("_span",)

    def __init__(self, span: Any = None) -> None:
        self._span = span if span is not None and span.is_recording() else None

    @property
    def recording(self) -> bool:
        """True when attributes set on it are kept (a provider is configured)."""
        return self._span is not None

    def set(self, key: str, value: object) -> None:
        """Set one attribute (None is skipped)."""
        if self._span is not None and value is not None:
            plain = value if isinstance(value, bool | int | float) else str(value)
            self._span.set_attribute(key, plain)

    def update(self, attributes: Mapping[str, object]) -> None:
        """Set several attributes (None values are skipped)."""
        if self._span is not None:
            self._span.set_attributes(_plain(attributes))


@contextmanager
def span(
    name: str, attributes: Mapping[str, object] | None = None, *, client: bool = False
) -> Iterator[Span]:
    """A span around the block; an exception marks it as an error (its type only)."""
    if not _tracing():
        yield Span()
        return
    kind = _CLIENT if client else _INTERNAL
    with _TRACER.start_as_current_span(
        name,
        kind=kind,
        attributes=_plain(attributes or {}),
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield Span(current)
        except BaseException as error:
            # The type only: a message might quote a value the library never logs.
            current.set_attribute("error.type", type(error).__name__)
            current.set_status(_ERROR, type(error).__name__)
            raise


def _tracing() -> bool:
    """True when a tracer provider that records was set (spans cost nothing otherwise)."""
    return ENABLED and not isinstance(_trace.get_tracer_provider(), _IDLE_PROVIDERS)


def annotate(attributes: Mapping[str, object]) -> None:
    """Set attributes on the current span (the innermost open one), if recording."""
    if ENABLED:
        current = _trace.get_current_span()
        if current.is_recording():
            current.set_attributes(_plain(attributes))


def count_outcome(command: str, outcome: str) -> None:
    """Count one recorded authorization outcome."""
    if ENABLED:
        _OUTCOMES.add(1, {"klarna_flow.command": command, "klarna_flow.outcome": outcome})


def count_notification(outcome: str, event_type: str | None) -> None:
    """Count one handled notification."""
    if ENABLED:
        attributes = {"klarna_flow.outcome": outcome}
        if event_type is not None:
            attributes["klarna.event_type"] = event_type
        _NOTIFICATIONS.add(1, attributes)


def klarna_latency(seconds: float, operation: str, status: int | str) -> None:
    """Record one attempt's latency."""
    if ENABLED:
        _LATENCY.record(
            seconds, {"klarna.operation": operation, "http.response.status_code": str(status)}
        )
