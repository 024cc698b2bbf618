"""The adapter's public surface, and its place in the layers."""

from __future__ import annotations

import ast
from pathlib import Path

import klarna_flow.klarna
import klarna_flow.testing

ADAPTER = Path(klarna_flow.klarna.__file__).parent
# The adapter speaks HTTP and the error tree only: never the payment domain.
ALLOWED_INTERNAL = {
    "klarna_flow._shared.clock",
    "klarna_flow._errors",
    "klarna_flow._shared.secrets",
    "klarna_flow._shared.telemetry",
    "klarna_flow._shared.validation",
}


def test_public_names_are_pinned() -> None:
    assert klarna_flow.klarna.__all__ == [
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


def test_testing_exports_the_fake() -> None:
    names = set(klarna_flow.testing.__all__)

    assert {"FakeKlarna", "FakeKlarnaServer", "run_fake_server", "serve_fake"} <= names
    assert {"CompletedRequest", "RecordedTransaction", "SignedNotification"} <= names


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_adapter_never_imports_the_domain() -> None:
    for path in sorted(ADAPTER.glob("*.py")):
        internal = {
            name
            for name in imported_modules(path)
            if name.startswith("klarna_flow") and not name.startswith("klarna_flow.klarna")
        }
        assert internal <= ALLOWED_INTERNAL, f"{path.name} imports {internal - ALLOWED_INTERNAL}"
