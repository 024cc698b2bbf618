"""The initial authorize call: check what it will send, record the intent.

::

    load payment; check input and guards          -> typed error, nothing recorded
    record AuthorizationRequested(INITIAL, key, payload, sealed session token)
    POST /payment/authorize                        (authorizer sends it)
    record Approved | Declined | StepUpRequired | InitiationFailed

The payload (purchase data, step-up configuration, capture, token request)
is recorded with the intent, so a re-send and the final authorization send
exactly what the initial call sent.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import attrs

from klarna_flow._app.authorization import Intent, idempotency_key, intent_of, lost_race
from klarna_flow._app.ports import AuthorizationLedger
from klarna_flow._domain.lifecycle import Flow, PaymentState
from klarna_flow._domain.payment import Payment
from klarna_flow._errors import (
    AuthorizationInProgress,
    ConcurrentModification,
    ConfigurationError,
    InvalidInput,
)
from klarna_flow._shared.validation import check_reference, check_token
from klarna_flow.klarna import (
    Capture,
    CustomerTokenRequest,
    CustomerTokenScope,
    StepUpConfig,
    SupplementaryPurchaseData,
)

__all__ = ["InitiateOptions", "record_initiation"]

INITIATE = "command:initiate"


@attrs.frozen
class InitiateOptions:
    """What ``Payments.initiate`` was given, unchecked."""

    step_up: object = None
    purchase: object = None
    session_token: object = attrs.field(default=None, repr=False)
    capture: object = None
    payment_option_id: object = None
    customer_token_scopes: object = None


def _payload(flow: Flow, options: InitiateOptions, payment: Payment) -> dict[str, Any]:
    """The recorded body parts of the initial call, checked.

    Raises:
        InvalidInput: a bad option, or one the payment's flow cannot use.
    """
    step_up = options.step_up
    if step_up is not None and not isinstance(step_up, StepUpConfig):
        raise InvalidInput("step_up", "must be a StepUpConfig or None")
    purchase = options.purchase
    if purchase is not None and not isinstance(purchase, SupplementaryPurchaseData):
        raise InvalidInput("purchase", "must be a SupplementaryPurchaseData or None")
    payload: dict[str, Any] = {
        "step_up": None if step_up is None else step_up.to_wire(),
        "purchase": None if purchase is None else purchase.to_wire(),
    }
    payload.update(_transaction_options(flow, options))
    payload["customer_token_request"] = _token_request(flow, options, payment)
    return payload


def _transaction_options(flow: Flow, options: InitiateOptions) -> dict[str, Any]:
    capture, option = options.capture, options.payment_option_id
    if not flow.authorizes and (capture is not None or option is not None):
        field = "capture" if capture is not None else "payment_option_id"
        raise InvalidInput(field, "applies only to flows with a payment transaction")
    if capture is not None:
        try:
            capture = Capture(capture).value  # type: ignore[arg-type]  # a bad value raises
        except ValueError:
            raise InvalidInput("capture", "must be NOW or LATER") from None
    if option is not None:
        option = check_reference(option, "payment_option_id")
    return {"capture": capture, "payment_option_id": option}


def _token_request(flow: Flow, options: InitiateOptions, payment: Payment) -> dict[str, Any] | None:
    scopes = options.customer_token_scopes
    if not flow.tokenizes:
        if scopes is not None:
            raise InvalidInput("customer_token_scopes", "applies only to tokenization flows")
        return None
    request = CustomerTokenRequest(
        scopes=(CustomerTokenScope.CUSTOMER_NOT_PRESENT,) if scopes is None else scopes,  # type: ignore[arg-type]
        customer_token_reference=payment.reference,
    )
    return request.to_wire()


def record_initiation(
    ledger: AuthorizationLedger, payment_id: UUID, options: InitiateOptions
) -> Intent:
    """Check everything and record the initial call's ``AuthorizationRequested``.

    Raises:
        InvalidInput: a bad option (nothing recorded).
        InvalidTransition: the payment is not ``CREATED`` or a request is open.
        AuthorizationInProgress: another worker initiated it first.
        ConfigurationError: no partner account.
    """
    payment = ledger.get(payment_id)
    now = ledger.now()
    if payment.state is PaymentState.AUTHORIZING:
        raise AuthorizationInProgress(
            f"an authorize call of payment {payment_id} is already in progress",
            payment_id=payment_id,
            command="initiate",
            state=payment.state.value,
        )
    payload = _payload(payment.flow, options, payment)
    token = options.session_token
    if token is not None:
        token = check_token(token, "session_token")
    charge = _charge_token(ledger, payment, payload)
    if charge is None and payload["step_up"] is None and token is None:
        raise InvalidInput(
            "step_up", "is required unless a session token from an earlier journey is given"
        )
    if isinstance(options.step_up, StepUpConfig):
        options.step_up.check_expiry(now)
    account = payment.partner_account_id or ledger.partner_account_id
    if not account:
        msg = f"payment {payment_id} has no partner account and Payments has no default"
        raise ConfigurationError(msg)
    sealed = None if token is None else ledger.seal(payment_id, "session_token", token)
    key = idempotency_key(payment_id, payment.authorization_attempts + 1)
    payment.initiate(idempotency_key=key, payload=payload, session_token=sealed, now=now)
    try:
        ledger.save(payment)
    except ConcurrentModification as e:
        raise lost_race(ledger, payment) from e
    return intent_of(payment, account, token, charge)


def _charge_token(
    ledger: AuthorizationLedger, payment: Payment, payload: dict[str, Any]
) -> str | None:
    """The customer token a token charge sends (opened first: a missing key records nothing)."""
    if payment.charge_token is None:
        return None
    if not payment.customer_present and payload["step_up"] is not None:
        raise InvalidInput("step_up", "a customer-not-present charge never steps up")
    return ledger.unseal(payment.id, "charge_token", payment.charge_token)
