"""Public test support: a fake Klarna, a manual clock and a pytest plugin.

Everything here works without a network, so flow logic can be unit-tested in
process::

    clock = ManualClock()
    fake = FakeKlarna(clock=clock)
"""

from klarna_flow.testing._clock import ManualClock
from klarna_flow.testing._fake import FakeKlarna
from klarna_flow.testing._fake_records import (
    CompletedRequest,
    RecordedTransaction,
    SignedNotification,
)
from klarna_flow.testing._server import FakeKlarnaServer, run_fake_server, serve_fake

__all__ = [
    "CompletedRequest",
    "FakeKlarna",
    "FakeKlarnaServer",
    "ManualClock",
    "RecordedTransaction",
    "SignedNotification",
    "run_fake_server",
    "serve_fake",
]
