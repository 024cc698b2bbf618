"""klarna_flow: Klarna's authorization journey as an event-sourced state machine.

One import path for users: every public name is re-exported here, and
``tests/docs_and_cli/test_public_api.py`` pins the list.
"""

from klarna_flow._app.authorization import AuthorizationOutcome, OutcomeResult
from klarna_flow._app.payments import Payments
from klarna_flow._audit.log import AuditEntry, AuditLog
from klarna_flow._audit.verify import Finding, VerificationReport
from klarna_flow._domain.lifecycle import Flow, PaymentState, diagram
from klarna_flow._domain.payment import Payment
from klarna_flow._domain.sealed import SealedSecret
from klarna_flow._domain.transaction import TransactionView
from klarna_flow._errors import (
    AuthorizationInProgress,
    AuthorizationWindowElapsed,
    CancelRefused,
    CommandRefused,
    ConcurrentModification,
    ConfigurationError,
    InvalidInput,
    InvalidSignature,
    InvalidTransition,
    KlarnaAPIError,
    KlarnaAuthenticationError,
    KlarnaBlocked,
    KlarnaConflict,
    KlarnaError,
    KlarnaFlowError,
    KlarnaNotFound,
    KlarnaRateLimited,
    KlarnaServerError,
    KlarnaTimeout,
    KlarnaTransportError,
    KlarnaUnexpectedResponse,
    KlarnaValidationError,
    MalformedNotification,
    MissingToken,
    NaiveDatetime,
    NotificationRejected,
    NotYetExpired,
    PaymentNotFound,
    ReferenceConflict,
    StorageError,
    WrongFlow,
)
from klarna_flow._shared.clock import Clock, SystemClock
from klarna_flow._store.cipher import TokenCipher, generate_key
from klarna_flow._store.read_models import IndexRow
from klarna_flow.klarna import (
    Address,
    AsyncKlarnaClient,
    AuthorizationResponse,
    AuthorizationResult,
    Capture,
    Customer,
    CustomerTokenScope,
    KlarnaClient,
    LineItem,
    RetryPolicy,
    Shipment,
    StepUpConfig,
    StepUpMethod,
    SupplementaryPurchaseData,
)
from klarna_flow.klarna._webhooks import NotificationOutcome, NotificationResult

__version__ = "0.1.0"

__all__ = [
    "Address",
    "AsyncKlarnaClient",
    "AuditEntry",
    "AuditLog",
    "AuthorizationInProgress",
    "AuthorizationOutcome",
    "AuthorizationResponse",
    "AuthorizationResult",
    "AuthorizationWindowElapsed",
    "CancelRefused",
    "Capture",
    "Clock",
    "CommandRefused",
    "ConcurrentModification",
    "ConfigurationError",
    "Customer",
    "CustomerTokenScope",
    "Finding",
    "Flow",
    "IndexRow",
    "InvalidInput",
    "InvalidSignature",
    "InvalidTransition",
    "KlarnaAPIError",
    "KlarnaAuthenticationError",
    "KlarnaBlocked",
    "KlarnaClient",
    "KlarnaConflict",
    "KlarnaError",
    "KlarnaFlowError",
    "KlarnaNotFound",
    "KlarnaRateLimited",
    "KlarnaServerError",
    "KlarnaTimeout",
    "KlarnaTransportError",
    "KlarnaUnexpectedResponse",
    "KlarnaValidationError",
    "LineItem",
    "MalformedNotification",
    "MissingToken",
    "NaiveDatetime",
    "NotYetExpired",
    "NotificationOutcome",
    "NotificationRejected",
    "NotificationResult",
    "OutcomeResult",
    "Payment",
    "PaymentNotFound",
    "PaymentState",
    "Payments",
    "ReferenceConflict",
    "RetryPolicy",
    "SealedSecret",
    "Shipment",
    "StepUpConfig",
    "StepUpMethod",
    "StorageError",
    "SupplementaryPurchaseData",
    "SystemClock",
    "TokenCipher",
    "TransactionView",
    "VerificationReport",
    "WrongFlow",
    "__version__",
    "diagram",
    "generate_key",
]
