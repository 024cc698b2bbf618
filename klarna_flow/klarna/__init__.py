"""The HTTP adapter: Klarna's Payment Authorize API, sync and async.

It speaks only the wire (JSON and HTTP) and the error tree; it never imports
the payment domain.
"""

from klarna_flow.klarna._async_client import AsyncKlarnaClient
from klarna_flow.klarna._client import KlarnaClient
from klarna_flow.klarna._config import LIVE_BASE_URL, TEST_BASE_URL
from klarna_flow.klarna._retry import RetryPolicy
from klarna_flow.klarna._wire import (
    AuthorizationResponse,
    AuthorizationResult,
    PaymentTransaction,
    StepUp,
)

__all__ = [
    "LIVE_BASE_URL",
    "TEST_BASE_URL",
    "AsyncKlarnaClient",
    "AuthorizationResponse",
    "AuthorizationResult",
    "KlarnaClient",
    "PaymentTransaction",
    "RetryPolicy",
    "StepUp",
]
