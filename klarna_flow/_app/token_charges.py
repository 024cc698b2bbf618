"""Charging a stored customer token: which token a new payment charges.

A token charge is an ``AUTHORIZATION`` payment whose authorize call carries
``Klarna-Customer-Token``. The token is given as is, or taken from a
tokenization payment that holds one; either way it is sealed for the new
payment (its own key binding), never stored in the clear.
"""

from __future__ import annotations

from uuid import UUID

from klarna_flow._app.ledger import Ledger
from klarna_flow._domain.lifecycle import Flow
from klarna_flow._domain.sealed import SealedSecret
from klarna_flow._errors import InvalidInput, MissingToken
from klarna_flow._shared.validation import check_token
from klarna_flow._store.payment_store import check_payment_id

__all__ = ["charge_token"]


def charge_token(
    ledger: Ledger,
    payment_id: UUID,
    *,
    flow: Flow,
    customer_token: object,
    customer_token_of: object,
    customer_present: object,
    payment_request_id: str | None,
) -> tuple[SealedSecret | None, bool | None]:
    """The sealed token a new payment charges and whether the customer is present.

    (None, None) for a payment that charges no stored token.

    Raises:
        InvalidInput: both or a malformed token, a token charge that is not an
            ``AUTHORIZATION``, a payment request id given with it.
        PaymentNotFound: ``customer_token_of`` names no payment.
        MissingToken: that payment holds no customer token (its tokenization
            never completed).
    """
    if not isinstance(customer_present, bool):
        raise InvalidInput("customer_present", "must be True or False")
    if customer_token is None and customer_token_of is None:
        if customer_present:
            raise InvalidInput("customer_present", "applies only to a customer token charge")
        return None, None
    if customer_token is not None and customer_token_of is not None:
        raise InvalidInput("customer_token", "give customer_token or customer_token_of, not both")
    if flow is not Flow.AUTHORIZATION:
        raise InvalidInput("flow", "a customer token charge is an AUTHORIZATION payment")
    if payment_request_id is not None:
        raise InvalidInput("payment_request_id", "a customer token charge has no request yet")
    if customer_token is not None:
        token = check_token(customer_token, "customer_token")
    else:
        token = _token_of(ledger, check_payment_id(customer_token_of, "customer_token_of"))
    return ledger.seal(payment_id, "charge_token", token), customer_present


def _token_of(ledger: Ledger, source_id: UUID) -> str:
    source = ledger.get(source_id)
    if source.customer_token is None:
        raise MissingToken(
            f"payment {source_id} holds no customer token: its tokenization never completed",
            payment_id=source_id,
            command="create",
            state=source.state.value,
        )
    return ledger.unseal(source_id, "customer_token", source.customer_token)
