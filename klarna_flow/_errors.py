"""Every error klarna_flow raises, in one tree.

::

    KlarnaFlowError
    ├── InvalidInput (ValueError)                 bad argument, refused before recording
    │   └── NaiveDatetime                          a datetime without a UTC offset
    ├── ConfigurationError                         cannot start as configured
    ├── PaymentNotFound (LookupError)              no payment with that id
    ├── CommandRefused                             the lifecycle refuses; nothing recorded
    │   ├── InvalidTransition                      the payment's state does not allow the command
    │   ├── WrongFlow                              e.g. authorizing a pure tokenization payment
    │   ├── MissingToken                           the tokens given do not fit the payment's flow
    │   ├── NotYetExpired                          expire() before the payment's time ran out
    │   ├── ReferenceConflict                      same (account, reference), different terms
    │   └── CancelRefused                          Klarna would not cancel the payment request
    ├── ConcurrentModification                     a lost race: another writer recorded first;
    │   │                                          nothing of this command was recorded
    │   └── AuthorizationInProgress                another worker already requested authorization
    ├── AuthorizationWindowElapsed                 too late: PaymentExpired WAS recorded
    ├── StorageError                               the event store failed (translated)
    ├── NotificationRejected                       a webhook that must be answered with 400
    │   ├── InvalidSignature                       missing/unknown key id or signature mismatch
    │   └── MalformedNotification                  not JSON, oversized, or missing fields
    └── KlarnaError                                anything that went wrong talking to Klarna
        ├── KlarnaTransportError                   connection failed or dropped
        │   └── KlarnaTimeout (TimeoutError)       no answer in time
        ├── KlarnaUnexpectedResponse               non-JSON body, unknown result, wrong shape
        └── KlarnaAPIError                         Klarna answered with an error envelope
            ├── KlarnaValidationError (ValueError) 400, 413
            ├── KlarnaAuthenticationError          401, 403 with Klarna's error object
            │   (PermissionError)
            ├── KlarnaBlocked                      403 without it (DDoS protection)
            ├── KlarnaNotFound (LookupError)       404
            ├── KlarnaConflict                     409
            ├── KlarnaRateLimited                  429, with ``retry_after``
            └── KlarnaServerError                  5xx

Errors take their context at construction, carry it as attributes and never
carry a secret (API key, session or customer token) in their message or
attributes. ``CommandRefused`` promises that nothing was recorded; an error
raised after something was recorded (``AuthorizationWindowElapsed``) is not
one, and neither is a lost race (``ConcurrentModification``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

__all__ = [
    "AuthorizationInProgress",
    "AuthorizationWindowElapsed",
    "CancelRefused",
    "CommandRefused",
    "ConcurrentModification",
    "ConfigurationError",
    "InvalidInput",
    "InvalidSignature",
    "InvalidTransition",
    "KlarnaAPIError",
    "KlarnaAuthenticationError",
    "KlarnaBlocked",
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
    "PaymentNotFound",
    "ReferenceConflict",
    "StorageError",
    "WrongFlow",
]


class KlarnaFlowError(Exception):
    """Base class of every error raised by klarna_flow."""


class InvalidInput(KlarnaFlowError, ValueError):
    """An argument was refused before any I/O or recording.

    Attributes:
        field: the name of the offending argument.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NaiveDatetime(InvalidInput):
    """A datetime without timezone information was given."""

    def __init__(self, field: str) -> None:
        super().__init__(field, "must be a timezone-aware datetime (UTC)")


class ConfigurationError(KlarnaFlowError):
    """The application or client cannot work as configured."""


class PaymentNotFound(KlarnaFlowError, LookupError):
    """No payment is recorded under this id."""

    def __init__(self, payment_id: UUID) -> None:
        super().__init__(f"payment {payment_id} not found")
        self.payment_id = payment_id


class _PaymentError(KlarnaFlowError):
    """An error about one payment and one command.

    Attributes:
        payment_id: the payment concerned.
        command: the command (``complete``, ``request_authorization``...).
        state: the payment's state as found (a string).
    """

    def __init__(
        self,
        message: str,
        *,
        payment_id: UUID | None = None,
        command: str = "",
        state: str = "",
    ) -> None:
        super().__init__(message)
        self.payment_id = payment_id
        self.command = command
        self.state = state


class CommandRefused(_PaymentError):
    """The lifecycle refused a command; nothing was recorded for it.

    Attributes:
        payment_id: the payment concerned.
        command: the refused command (``complete``, ``request_authorization``...).
        state: the payment's state when the command was refused (a string).
    """


class InvalidTransition(CommandRefused):
    """The payment's current state does not allow the command."""


class WrongFlow(CommandRefused):
    """The payment's flow does not allow the command."""


class MissingToken(CommandRefused):
    """The tokens given do not fit the payment's flow."""


class NotYetExpired(CommandRefused):
    """``expire`` was called before the payment's time ran out."""


class AuthorizationWindowElapsed(_PaymentError):
    """The 60-minute authorization window closed; ``PaymentExpired`` was recorded.

    Not a refusal: the command recorded the expiry (or found it recorded by
    another writer, ``state`` says which state it found).
    """


class ReferenceConflict(CommandRefused):
    """The (partner account, reference) pair is taken by different terms."""


class CancelRefused(CommandRefused):
    """Klarna would not cancel the payment request; nothing was recorded.

    Typically the customer already completed it (the completion notification
    follows). ``klarna_state`` is the request's state when Klarna named it;
    the Klarna error, if any, is the ``__cause__``.
    """

    def __init__(
        self,
        message: str,
        *,
        payment_id: UUID | None = None,
        command: str = "cancel",
        state: str = "",
        klarna_state: str | None = None,
    ) -> None:
        super().__init__(message, payment_id=payment_id, command=command, state=state)
        self.klarna_state = klarna_state


class ConcurrentModification(_PaymentError):
    """Another writer recorded an event for this payment first (a lost race).

    Nothing of this command was recorded; ``state`` is the state found, when
    it was read again. Loading the payment again and deciding anew is safe.
    """


class AuthorizationInProgress(ConcurrentModification):
    """Another worker already requested authorization; no call was made."""


class StorageError(KlarnaFlowError):
    """The event store failed; the command may be retried."""


class NotificationRejected(KlarnaFlowError):
    """A notification that the webhook endpoint must answer with HTTP 400."""


class InvalidSignature(NotificationRejected):
    """The signature is missing, signed by an unknown key, or does not match."""


class MalformedNotification(NotificationRejected):
    """The body is not a notification envelope this library understands."""


class KlarnaError(KlarnaFlowError):
    """Something went wrong talking to Klarna.

    Attributes:
        correlation_id: Klarna's ``Klarna-Correlation-Id`` when one was received.
        may_have_acted: True when Klarna may have processed the request all
            the same: this attempt or an earlier one of the same call timed
            out, lost its connection after sending, got a 5xx or an answer
            that could not be read. Given at construction; by default what
            this kind of failure says on its own.
    """

    acts_by_default = False
    """Whether this kind of failure, on its own, leaves open that Klarna acted."""

    def __init__(
        self,
        message: str,
        *,
        correlation_id: str | None = None,
        may_have_acted: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.correlation_id = correlation_id
        self.may_have_acted = self.acts_by_default if may_have_acted is None else may_have_acted


class KlarnaTransportError(KlarnaError):
    """The request could not be sent or its answer was not received.

    ``may_have_acted`` is False only when the request never left (connecting failed).
    """

    acts_by_default = True


class KlarnaTimeout(KlarnaTransportError, TimeoutError):
    """Klarna did not answer in time."""


class KlarnaUnexpectedResponse(KlarnaError):
    """Klarna answered with something this library cannot interpret.

    Attributes:
        status_code: the HTTP status of the answer.
    """

    acts_by_default = True

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        correlation_id: str | None = None,
        may_have_acted: bool | None = None,
    ) -> None:
        super().__init__(message, correlation_id=correlation_id, may_have_acted=may_have_acted)
        self.status_code = status_code


class KlarnaAPIError(KlarnaError):
    """Klarna answered with an error status and (usually) its error envelope.

    Attributes:
        status_code: HTTP status.
        error_code: e.g. ``VALIDATION_ERROR``, ``RATE_LIMITED``.
        error_type: ``INPUT_ERROR``, ``ACCESS_ERROR``, ``RESOURCE_ERROR``,
            ``TECHNICAL_ERROR``.
        error_id: Klarna's id for this error occurrence.
        error_message: Klarna's message (for logs, not for shoppers).
        validation_errors: one mapping per problem, whichever shape Klarna
            used: ``validation_errors[]`` as given (``parameter``, ``reason``);
            ``errors[]`` as given (``parameter``, ``error_message``,
            ``doc_url``) plus ``reason`` copied from ``error_message``; and
            each string of the older ``error_messages[]`` as ``{"reason": text}``.
        body: the decoded error body, if it was JSON.
    """

    def __init__(
        self,
        *,
        status_code: int,
        error_code: str | None = None,
        error_type: str | None = None,
        error_id: str | None = None,
        error_message: str | None = None,
        validation_errors: Sequence[Mapping[str, Any]] = (),
        correlation_id: str | None = None,
        body: Mapping[str, Any] | None = None,
        may_have_acted: bool | None = None,
    ) -> None:
        summary = f"Klarna answered {status_code}"
        if error_code:
            summary += f" {error_code}"
        if error_message:
            summary += f": {error_message}"
        super().__init__(summary, correlation_id=correlation_id, may_have_acted=may_have_acted)
        self.status_code = status_code
        self.error_code = error_code
        self.error_type = error_type
        self.error_id = error_id
        self.error_message = error_message
        self.validation_errors = tuple(validation_errors)
        self.body = body


class KlarnaValidationError(KlarnaAPIError, ValueError):
    """400 (``VALIDATION_ERROR``, ``INVALID_CONTENT_TYPE``) or 413."""


class KlarnaAuthenticationError(KlarnaAPIError, PermissionError):
    """401 ``UNAUTHORIZED``, or 403 (``OPERATION_FORBIDDEN``) with Klarna's error object."""


class KlarnaBlocked(KlarnaAPIError):
    """403 without Klarna's error object: Klarna's DDoS protection refused the request.

    The API never saw the request, so this is not an authentication failure
    (a 403 ``OPERATION_FORBIDDEN`` with its error object is
    :class:`KlarnaAuthenticationError`). Never retried: Klarna's documentation
    says nothing of retrying it, so the caller decides when to come back.
    """


class KlarnaNotFound(KlarnaAPIError, LookupError):
    """404 ``RESOURCE_NOT_FOUND``."""


class KlarnaConflict(KlarnaAPIError):
    """409 ``RESOURCE_CONFLICT``."""


class KlarnaRateLimited(KlarnaAPIError):
    """429 ``RATE_LIMITED``.

    Attributes:
        retry_after: seconds Klarna asked to wait, when it said, from
            ``Retry-After`` or ``X-Ratelimit-Reset`` (the longer if both).
    """

    def __init__(self, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.retry_after = retry_after


class KlarnaServerError(KlarnaAPIError):
    """5xx: ``INTERNAL_ERROR``, ``TECHNICAL_ERROR``, unavailable."""

    acts_by_default = True
