"""The pytest plugin, as a third-party suite sees it.

pytester runs a fresh pytest in a directory of its own (no conftest, no
``pytest_plugins``), so the fixtures ``manual_clock``, ``fake_klarna`` and
``payments`` can only come from the ``pytest11`` entry point that installing
klarna_flow registers. (Inside ``tests/`` our own ``conftest.py`` defines a
``payments`` fixture that would shadow the plugin's.)

The suite under test is the example in ``docs/how-to/testing.md``, taken from
the page itself, plus one test that is wrong on purpose.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "how-to" / "testing.md"
MARKER = "# test_checkout.py\n"

WRONG = """

def test_wrong_on_purpose_a_tokenization_payment_is_authorized(payments, fake_klarna):
    payment_id = checkout(payments, fake_klarna, flow=Flow.TOKENIZATION, reference="t-1")
    assert payments.authorize(payment_id).state is PaymentState.AUTHORIZED
"""


def documented_suite() -> str:
    """The ``test_checkout.py`` block of the testing how-to, as the page shows it."""
    blocks = re.findall(r"^```python\n(.*?)^```$", DOCS.read_text(encoding="utf-8"), re.M | re.S)
    suites = [str(block) for block in blocks if block.startswith(MARKER)]
    assert len(suites) == 1, f"{DOCS.name} must show one block starting with {MARKER!r}"
    return suites[0]


def test_the_plugin_fixtures_run_a_third_party_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_checkout=documented_suite() + WRONG)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", "-v")

    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_a_completed_payment_is_authorized_once PASSED*",
            "*test_the_window_closes_after_60_minutes PASSED*",
            "*test_a_tokenization_payment_is_never_authorized PASSED*",
            "*test_wrong_on_purpose_a_tokenization_payment_is_authorized FAILED*",
            "*WrongFlow: cannot request_authorization payment *"
            "a pure tokenization payment is never authorized*",
        ]
    )


def test_the_fixtures_come_from_the_entry_point(pytester: pytest.Pytester) -> None:
    """Disabling the plugin by its entry-point name takes the fixtures away."""
    pytester.makepyfile(test_checkout=documented_suite())

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:klarna_flow")

    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(["*fixture 'payments' not found*"])


def test_each_test_gets_fresh_fixtures_sharing_one_clock(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_fresh="""
        from datetime import timedelta

        from klarna_flow import Flow

        def test_first(payments, fake_klarna, manual_clock):
            assert payments.clock is manual_clock and fake_klarna.clock is manual_clock
            payments.create(flow=Flow.AUTHORIZATION, amount=1, currency="EUR", reference="r")
            manual_clock.advance(timedelta(hours=1))

        def test_second(payments, fake_klarna, manual_clock):
            assert payments.counts_by_state() == {}
            assert manual_clock.now().isoformat() == "2025-01-01T12:00:00+00:00"
            assert fake_klarna.requests == []
        """
    )

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")

    result.assert_outcomes(passed=2)
