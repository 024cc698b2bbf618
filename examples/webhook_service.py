"""A small Starlette service in front of ``Payments``: Klarna's webhook and authorize.

Routes:

- ``/webhooks/klarna/``: :func:`klarna_flow.asgi.notification_app`, mounted.
  ``POST`` hands the raw body and headers to
  ``Payments.handle_notification_async`` and answers with the status it
  returns (2xx acknowledges; 400 for a bad signature or body; 404 for a
  payment request not known yet and 503 when the store failed, both of which
  Klarna retries; 413 for a body over 1 MiB) and a small JSON body;
  ``GET /webhooks/klarna/health`` answers 200. Register the mount's root,
  ``https://<host>/webhooks/klarna/`` (with its slash), with Klarna.
- ``POST /payments/{payment_id}/authorize``: ``Payments.authorize_async``;
  the recorded outcome as JSON, 200 (202 while it is ``PENDING``: reconcile
  will finish it). Refusals map to 404 (no such payment), 409 (the payment's
  state refuses: already authorized or authorizing, expired, window elapsed,
  canceled) and 422 (this payment can never be authorized this way: a pure
  tokenization payment, no session token). Nothing is sent to Klarna then.

Build the app with :func:`create_app` and serve it with any ASGI server::

    payments = Payments.sqlite(
        "payments.sqlite",
        async_klarna=AsyncKlarnaClient(),          # KLARNA_API_KEY
        signing_keys={"key-id": b"secret"},        # from Klarna's webhook setup
    )                                              # KLARNA_FLOW_CIPHER_KEY
    app = create_app(payments)

The caller owns ``payments`` and its clients and closes them on shutdown.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from klarna_flow import (
    AuthorizationOutcome,
    AuthorizationWindowElapsed,
    CommandRefused,
    ConcurrentModification,
    InvalidInput,
    KlarnaFlowError,
    MissingToken,
    OutcomeResult,
    PaymentNotFound,
    Payments,
    StorageError,
    WrongFlow,
)
from klarna_flow.asgi import notification_app

__all__ = ["create_app", "outcome_json"]


def create_app(payments: Payments) -> Starlette:
    """The service's ASGI app, answering for ``payments``."""

    async def authorize(request: Request) -> JSONResponse:
        payment_id: UUID = request.path_params["payment_id"]
        try:
            outcome = await payments.authorize_async(payment_id)
        except KlarnaFlowError as e:
            status = refusal_status(e)
            if status is None:
                raise
            return JSONResponse(refusal_json(e), status_code=status)
        status = 202 if outcome.result is OutcomeResult.PENDING else 200
        return JSONResponse(outcome_json(outcome), status_code=status)

    return Starlette(
        routes=[
            Mount("/webhooks/klarna", app=notification_app(payments)),
            Route("/payments/{payment_id:uuid}/authorize", authorize, methods=["POST"]),
        ]
    )


def refusal_status(error: KlarnaFlowError) -> int | None:
    """The HTTP status of a refused authorize, or None for an unexpected error."""
    if isinstance(error, PaymentNotFound):
        return 404
    if isinstance(error, WrongFlow | MissingToken | InvalidInput):
        return 422
    if isinstance(error, CommandRefused | ConcurrentModification | AuthorizationWindowElapsed):
        return 409
    if isinstance(error, StorageError):
        return 503
    return None


def refusal_json(error: KlarnaFlowError) -> dict[str, Any]:
    """The body of a refusal: the error's name, message and the payment's state."""
    # Messages of klarna_flow's errors never carry a token or key.
    return {
        "error": type(error).__name__,
        "detail": str(error),
        "state": getattr(error, "state", None) or None,
    }


def outcome_json(outcome: AuthorizationOutcome) -> dict[str, Any]:
    """An authorization outcome as JSON (no secret is part of an outcome)."""
    return {
        "payment_id": str(outcome.payment_id),
        "result": outcome.result.value,
        "state": outcome.state.value,
        "payment_transaction_id": outcome.payment_transaction_id,
        "correlation_id": outcome.correlation_id,
        "payment_request_id": outcome.payment_request_id,
        "payment_request_url": outcome.payment_request_url,
        "error": None if outcome.error is None else type(outcome.error).__name__,
    }
