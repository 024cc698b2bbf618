"""The HTTP adapter: Klarna's Payment Authorize, payment-request cancel and
transaction read, sync and async, with the typed values of their bodies.

It speaks only the wire (JSON and HTTP) and the error tree; it never imports
the payment domain.
"""

from klarna_flow.klarna._aiohttp_transport import AiohttpTransport
from klarna_flow.klarna._async_client import AsyncKlarnaClient
from klarna_flow.klarna._client import KlarnaClient
from klarna_flow.klarna._config import LIVE_BASE_URL, TEST_BASE_URL
from klarna_flow.klarna._purchase import (
    Address,
    Capture,
    Customer,
    CustomerTokenRequest,
    CustomerTokenScope,
    LineItem,
    Shipment,
    StepUpConfig,
    StepUpMethod,
    SupplementaryPurchaseData,
)
from klarna_flow.klarna._retry import RetryPolicy
from klarna_flow.klarna._wire import (
    AuthorizationResponse,
    AuthorizationResult,
    CustomerToken,
    PaymentCapture,
    PaymentRequest,
    PaymentTransaction,
    StepUp,
)

__all__ = [
    "LIVE_BASE_URL",
    "TEST_BASE_URL",
    "Address",
    "AiohttpTransport",
    "AsyncKlarnaClient",
    "AuthorizationResponse",
    "AuthorizationResult",
    "Capture",
    "Customer",
    "CustomerToken",
    "CustomerTokenRequest",
    "CustomerTokenScope",
    "KlarnaClient",
    "LineItem",
    "PaymentCapture",
    "PaymentRequest",
    "PaymentTransaction",
    "RetryPolicy",
    "Shipment",
    "StepUp",
    "StepUpConfig",
    "StepUpMethod",
    "SupplementaryPurchaseData",
]
