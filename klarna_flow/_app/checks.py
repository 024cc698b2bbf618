"""Checks of the arguments ``Payments`` takes, before anything is recorded."""

from __future__ import annotations

from typing import TypeVar

from klarna_flow._domain.lifecycle import Flow
from klarna_flow._domain.payment import Payment
from klarna_flow._errors import ConfigurationError, InvalidInput, ReferenceConflict
from klarna_flow.klarna import AsyncKlarnaClient, KlarnaClient

__all__ = ["check_flow", "check_same_terms", "check_type", "usable"]

_Typed = TypeVar("_Typed")


def check_type(value: _Typed | None, kind: type[_Typed], field: str) -> _Typed | None:
    if value is not None and not isinstance(value, kind):
        raise InvalidInput(field, f"must be a {kind.__name__}, not {type(value).__name__}")
    return value


_Client = TypeVar("_Client", KlarnaClient, AsyncKlarnaClient)


def usable(client: _Client) -> _Client:
    if client.is_closed:
        msg = f"the {type(client).__name__} given to Payments is closed; nothing was recorded"
        raise ConfigurationError(msg)
    return client


def check_flow(flow: object) -> Flow:
    try:
        return Flow(str(flow)) if isinstance(flow, str) else Flow(flow)  # type: ignore[arg-type]
    except ValueError:
        names = ", ".join(f.value for f in Flow)
        raise InvalidInput("flow", f"must be one of {names}") from None


def check_same_terms(
    existing: Payment, terms: tuple[Flow, int, str, str], payment_request_id: str | None
) -> None:
    if (
        existing.flow,
        existing.amount,
        existing.currency,
        existing.partner_account_id,
    ) != terms or (
        payment_request_id is not None
        and existing.payment_request_id not in (None, payment_request_id)
    ):
        raise ReferenceConflict(
            f"reference {existing.reference!r} is already used by payment "
            f"{existing.id} with different terms",
            payment_id=existing.id,
            command="create",
            state=existing.state.value,
        )
