"""The public surface, pinned: adding or removing a name is a deliberate change.

Modelled on httpx's ``tests/test_exported_members.py``.
"""

from __future__ import annotations

import importlib
import inspect

import pytest

import klarna_flow
import klarna_flow.testing

EXPORTED = [
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


def test_all_is_pinned() -> None:
    assert klarna_flow.__all__ == EXPORTED


def test_all_is_sorted() -> None:
    assert klarna_flow.__all__ == sorted(klarna_flow.__all__)


@pytest.mark.parametrize("name", EXPORTED)
def test_exported_name_is_importable(name: str) -> None:
    module = importlib.import_module("klarna_flow")
    assert getattr(module, name) is not None


def test_public_classes_and_functions_come_from_this_package() -> None:
    for name in klarna_flow.__all__:
        member = getattr(klarna_flow, name)
        if inspect.isclass(member) or inspect.isfunction(member):
            assert member.__module__.startswith("klarna_flow."), name


def test_every_exported_exception_shares_one_root() -> None:
    errors = [
        getattr(klarna_flow, n)
        for n in EXPORTED
        if inspect.isclass(getattr(klarna_flow, n))
        and issubclass(getattr(klarna_flow, n), BaseException)
    ]
    assert len(errors) > 20
    for error in errors:
        assert issubclass(error, klarna_flow.KlarnaFlowError), error


def test_testing_exports_the_manual_clock() -> None:
    assert "ManualClock" in klarna_flow.testing.__all__
    assert klarna_flow.testing.__all__ == sorted(klarna_flow.testing.__all__)
    for name in klarna_flow.testing.__all__:
        assert getattr(klarna_flow.testing, name) is not None


def test_version_is_a_string() -> None:
    assert isinstance(klarna_flow.__version__, str)
    assert klarna_flow.__version__


PAYMENTS_SURFACE = {
    # construction and configuration
    "sqlite", "postgres", "open", "clock", "partner_account_id", "request_lifetime",
    "cipher", "is_durable", "klarna", "async_klarna", "now", "close",
    # commands
    "create", "identify_payment_request", "complete", "expire", "cancel", "cancel_async",
    "initiate", "initiate_async", "authorize", "authorize_async",
    "reconcile", "reconcile_async", "expire_overdue",
    "handle_notification", "handle_notification_async",
    # queries
    "resolve", "refresh_transaction", "refresh_transaction_async",
    "get", "state_at", "stored_events", "outcome", "unresolved", "find_by_payment_request",
    "expiring_transactions", "conflicts",
    "read_model", "counts_by_state", "rebuild_read_models", "notification_counts",
    "audit_log", "audit_trail", "export_audit", "verify",
}  # fmt: skip


def test_payments_composes_its_store_and_shows_only_its_own_surface() -> None:
    from eventsourcing.application import Application

    payments = klarna_flow.Payments()
    public = {name for name in dir(payments) if not name.startswith("_")}

    assert not isinstance(payments, Application)
    assert public == PAYMENTS_SURFACE
    assert len(public) <= 55  # the journey, token charges and the ladder; keep it lean
    eventsourcing_names = {name for name in dir(Application) if not name.startswith("_")}
    assert public & eventsourcing_names == {"close"}  # a name any resource has, not theirs
    payments.close()


def test_the_audit_log_shows_no_command() -> None:
    payments = klarna_flow.Payments()
    public = {name for name in dir(payments.audit_log()) if not name.startswith("_")}

    assert public == {
        "open", "trail", "export", "verify", "state_at", "get", "read_model",
        "counts_by_state", "rebuild_read_models", "close",
    }  # fmt: skip
    payments.close()
