"""A span around each command of ``Payments`` (OpenTelemetry, when installed).

``traced("authorize")`` wraps a method in the span ``klarna_flow.authorize``
with the payment's id, and sets what the command recorded when it returns:
the outcome and state of an authorization, the state and flow of a payment,
the answer to a notification. Errors mark the span with their type only.
Without ``opentelemetry-api`` the wrapper only calls the method.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, cast
from uuid import UUID

from klarna_flow._app.authorization import AuthorizationOutcome
from klarna_flow._domain.payment import Payment
from klarna_flow._shared import telemetry
from klarna_flow.klarna._webhooks import NotificationResult

__all__ = ["traced"]

P = ParamSpec("P")
R = TypeVar("R")


def traced(command: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a ``Payments`` method (sync or async) with its command span."""

    def decorate(method: Callable[P, R]) -> Callable[P, R]:
        if not telemetry.ENABLED:
            return method
        name = f"klarna_flow.{command}"
        if inspect.iscoroutinefunction(method):
            return cast("Callable[P, R]", _traced_async(name, method))

        @functools.wraps(method)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            with telemetry.span(name, _arguments(args, kwargs)) as span:
                result = method(*args, **kwargs)
                if span.recording:
                    span.update(_attributes(result))
                return result

        return run

    return decorate


def _traced_async(
    name: str, method: Callable[..., Coroutine[Any, Any, Any]]
) -> Callable[..., Coroutine[Any, Any, Any]]:
    @functools.wraps(method)
    async def run(*args: Any, **kwargs: Any) -> Any:
        with telemetry.span(name, _arguments(args, kwargs)) as span:
            result = await method(*args, **kwargs)
            if span.recording:
                span.update(_attributes(result))
            return result

    return run


def _arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, object]:
    """The payment id, when the command names one (positional after self, or by keyword)."""
    payment_id = kwargs.get("payment_id", args[1] if len(args) > 1 else None)
    if isinstance(payment_id, UUID | str):
        return {"klarna_flow.payment_id": str(payment_id)}
    return {}


def _attributes(result: object) -> dict[str, object]:
    """What a command's result says, identifiers and states only."""
    if isinstance(result, AuthorizationOutcome):
        return {
            "klarna_flow.payment_id": str(result.payment_id),
            "klarna_flow.outcome": result.result.value,
            "klarna_flow.state": result.state.value,
            "klarna.correlation_id": result.correlation_id,
            "klarna.payment_transaction_id": result.payment_transaction_id,
            "klarna.payment_request_id": result.payment_request_id,
        }
    if isinstance(result, Payment):
        return {
            "klarna_flow.payment_id": str(result.id),
            "klarna_flow.flow": result.flow.value,
            "klarna_flow.state": result.state.value,
        }
    if isinstance(result, NotificationResult):
        return {
            "klarna_flow.payment_id": result.payment_id,
            "klarna_flow.outcome": result.outcome.value,
            "klarna.event_type": result.event_type,
            "http.response.status_code": result.status_code,
        }
    if isinstance(result, list):
        return {"klarna_flow.count": len(result)}
    return {}
