"""klarna_flow: Klarna's final-authorization step as an event-sourced state machine.

One import path for users: every public name is re-exported here, and
``tests/test_public_api.py`` pins the list.
"""

from klarna_flow._application import Payments
from klarna_flow._cipher import TokenCipher, generate_key
from klarna_flow._clock import Clock, SystemClock
from klarna_flow._errors import (
    AuthorizationInProgress,
    AuthorizationWindowElapsed,
    CommandRefused,
    ConcurrentModification,
    ConfigurationError,
    InvalidInput,
    InvalidSignature,
    InvalidTransition,
    KlarnaAPIError,
    KlarnaAuthenticationError,
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
from klarna_flow._lifecycle import Flow, PaymentState, diagram
from klarna_flow._payment import Payment
from klarna_flow._sealed import SealedSecret

__version__ = "0.1.0"

__all__ = [
    "AuthorizationInProgress",
    "AuthorizationWindowElapsed",
    "Clock",
    "CommandRefused",
    "ConcurrentModification",
    "ConfigurationError",
    "Flow",
    "InvalidInput",
    "InvalidSignature",
    "InvalidTransition",
    "KlarnaAPIError",
    "KlarnaAuthenticationError",
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
    "MalformedNotification",
    "MissingToken",
    "NaiveDatetime",
    "NotYetExpired",
    "NotificationRejected",
    "Payment",
    "PaymentNotFound",
    "PaymentState",
    "Payments",
    "ReferenceConflict",
    "SealedSecret",
    "StorageError",
    "SystemClock",
    "TokenCipher",
    "WrongFlow",
    "__version__",
    "diagram",
    "generate_key",
]
